"""Caption: the actor owning the captioner (vLLM, or transformers). Adds a caption and two
scores per good sample, the reason where an answer did not parse, and the engine's counters
over each batch (on its first row), which the driver sums into the run's engine figures.
The pixel views go on to the encoders."""

import json
import threading
import time
from typing import Optional

import numpy as np
import pyarrow as pa

from etl.batch_sizes import caption_batch_rows
from etl.config import JobConfig
from etl.stages import rows
from etl.stages.stage import Resources, RunContext, Step
from etl.transforms.frames import pixel_views

_RESULT_COLUMNS = ((rows.CAPTION, "caption"), (rows.QUALITY, "quality"), (rows.AESTHETICS, "aesthetics"),
                   (rows.CAPTION_PARSE_ERROR, "parse_error"))


def caption_batches_per_actor(config: JobConfig) -> int:
    """vLLM: two at once (its captioner is thread-safe and the engine batches their requests
    together), so the engine is not idle while the actor turns one batch's answers into columns
    and the next batch's frames into requests. The transformers backend: one at a time."""
    return 2 if config.models.captioner.backend == "vllm" else 1


class CaptionStage:
    @classmethod
    def step(cls, run: RunContext) -> Step:
        config, plan = run.config, run.plan
        text = rows.TEXT if config.read.text_column else None
        timing = (rows.FPS, rows.FRAME_INDICES) if config.read.fps_column or config.read.frame_indices_column else ()
        optional = (text,) * bool(text) + timing  # the text goes on: the encoders score it against the image
        adds = {name: rows.TYPES[name] for name, _ in _RESULT_COLUMNS}
        return Step(cls, (config, text, plan.kv_cache_bytes, plan.engine_cores),
                    (rows.CAPTION_FRAMES, rows.ERROR, rows.SAMPLE_ID, *optional),
                    {**adds, **rows.stamp_types("caption"), rows.ENGINE_STATS: rows.TYPES[rows.ENGINE_STATS]},
                    Resources(cpus=plan.engine_cpus, gpus=plan.engine_gpus, memory=plan.engine_memory,
                              actors=plan.engines, batch_rows=caption_batch_rows(config),
                              concurrent_batches=caption_batches_per_actor(config), placement="reserved"),
                    drops=timing)  # consumed; the views go on

    def __init__(self, config: JobConfig, text_column: Optional[str], kv_cache_bytes: Optional[int] = None,
                 engine_cores: int = 0):
        from etl.models.captioner_factory import captioner_from_config

        self.captioner = captioner_from_config(config, kv_cache_bytes, engine_cores)
        self.text_column, self.batch_size = text_column, config.models.captioner.batch_size
        self._reported: dict = {}
        self._last_done: Optional[float] = None  # when the previous batch left (waiting counts too)
        self._stats_lock = threading.Lock()  # batches may run concurrently (caption_batches_per_actor)

    def __call__(self, batch: pa.Table) -> pa.Table:
        with self._stats_lock:
            if self._last_done is None:  # the wall clock starts with the first batch to arrive
                self._last_done = time.perf_counter()
        captioned = self._caption(batch)
        stats = [self._stats_since_last()] + [None] * (batch.num_rows - 1) if batch.num_rows else []
        return captioned.append_column(rows.ENGINE_STATS, pa.array(stats, rows.TYPES[rows.ENGINE_STATS]))

    def _stats_since_last(self) -> str:
        with self._stats_lock:
            now, stats = time.perf_counter(), self.captioner.stats()
            delta = {key: value - self._reported.get(key, 0) for key, value in stats.items()}
            delta["wall_seconds"] = now - self._last_done
            self._reported, self._last_done = stats, now
        return json.dumps(delta)

    def _caption(self, batch: pa.Table) -> pa.Table:
        todo = [i for i, e in enumerate(batch.column(rows.ERROR).to_pylist()) if e is None]
        samples = self._samples(batch, todo)
        results = {}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            results.update(zip(chunk, self.captioner.caption(samples[start:start + self.batch_size])))
        consumed = [c for c in (rows.FPS, rows.FRAME_INDICES) if c in batch.schema.names]
        batch = batch.drop_columns(consumed)
        for name, attribute in _RESULT_COLUMNS:
            values = [getattr(results[i], attribute) if i in results else None for i in range(batch.num_rows)]
            batch = batch.append_column(name, pa.array(values, rows.TYPES[name]))
        return rows.stamped(batch, "caption")

    def _samples(self, batch: pa.Table, todo: list[int]) -> list:
        from etl.models.captioner import CaptionSample

        captions = batch.column(rows.CAPTION_FRAMES).combine_chunks()
        starts = np.asarray(captions.offsets)
        views = pixel_views(captions.flatten())  # in place: no Python bytes per frame
        count = batch.num_rows
        texts = batch.column(self.text_column).to_pylist() if self.text_column else [None] * count
        keys = batch.column(rows.SAMPLE_ID).to_pylist()
        fps, indices = (batch.column(name).to_pylist() if name in batch.schema.names else [None] * count
                        for name in (rows.FPS, rows.FRAME_INDICES))
        return [CaptionSample(views[starts[i] - starts[0]:starts[i + 1] - starts[0]], texts[i], keys[i],
                              fps[i], indices[i]) for i in todo]
