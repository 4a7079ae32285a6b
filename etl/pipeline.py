"""The curation job's Ray Data plan. Nothing else knows the whole graph.

    read_mds -> prepare (ids, buckets) -> decode frames (CPU actors) -> caption (VLM actor)
      -> encode (embedder + VAE actor) -> write bucket files (workers) ==> driver commits

No repartition or other all-to-all: the driver consumes the file metadata as it streams out of
the last stage and commits to Delta every `commit_every_files` files, so the first rows are
committed while later shards are still being read. Rows carry an `error` column from the read
onwards; a stage skips rows that already have one, and the write stage routes them to
`quarantine` with the stage and reason.
"""

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import JobConfig, ReadConfig
from etl.sinks.partitioning import buckets_of, derived_sample_ids
from etl import storage
from etl.committer import CommitCadence, RunCommitter, remove_unfinished_rows
from etl.cpu_cores import keep_off_engine_cores
from etl.sinks.table_datasink import write_bucket_files
from etl.sources.shard_selection import select_shards
from etl.transforms.frames import FrameDecodeStage, FrameSpec, pixel_views

logger = logging.getLogger(__name__)

ERROR = "error"
IMAGE_ENCODINGS = ("jpeg", "png", "pil", "jpeg_array", "jpegarray", "list[jpeg]", "list[png]", "list[pil]")


def choose_image_column(encodings: dict[str, str], requested: Optional[str]) -> str:
    """The frames column: the one image-encoded column, or the one the user names."""
    candidates = sorted(name for name, encoding in encodings.items() if encoding in IMAGE_ENCODINGS)
    if requested is not None:
        if requested not in encodings:
            raise ValueError(f"--image-column {requested!r} is not a column; columns: {sorted(encodings)}")
        if encodings[requested] not in IMAGE_ENCODINGS:
            raise ValueError(f"--image-column {requested!r} is {encodings[requested]!r}; image columns must be "
                             f"one of {list(IMAGE_ENCODINGS)}")
        return requested
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(f"no image column: no column is encoded as one of {list(IMAGE_ENCODINGS)}; "
                         f"columns: {encodings}")
    raise ValueError(f"several image columns {candidates}: choose one with --image-column")


FRAMES, TEXT = "_frames", "_text"  # internal names: no input column can collide with an output
FPS, FRAME_INDICES = "_fps", "_frame_indices"  # a sample's own timing (read.fps_column, ...)
READ_AT = "_read_at"  # when the row left the read task (unix s): shows commits overlapping reads
# When each row left each stage (unix s): the write stage turns them into per-second counts,
# the run report's samples/s per stage over time. Internal columns, never written.
STAGE_DONE_AT = {"read": READ_AT, "decode": "_decoded_at", "caption": "_captioned_at", "encode": "_encoded_at"}
ENGINE_STATS = "_engine_stats"  # JSON on a batch's first row: the captioner's counters over that batch
PREVIEW = "_preview"  # a small JPEG of the first frame, for the rows the report's contact sheet shows
PREVIEW_PIXELS = 160  # longest side


_DECODE_BUDGET_BYTES = 64 << 20  # decoded pixels per decode batch
CONTACT_SHEET_SAMPLES = 24


class Prepare:
    """sample_id (from the id column or shard:row), bucket, the read error as `error`, and the
    input columns renamed to internal names; nothing else goes downstream. A sample whose own
    timing (fps, frame indices) cannot time its frames gets that as its error."""

    def __init__(self, read: ReadConfig, image_column: str, buckets: int):
        self.read, self.image_column, self.buckets = read, image_column, buckets

    def __call__(self, batch: pa.Table) -> pa.Table:
        derived = derived_sample_ids(batch.column("shard"), batch.column("row"))
        if self.read.id_column:
            given = pc.cast(batch.column(self.read.id_column), pa.string())
            ids = pc.if_else(pc.is_null(given), derived, given)
        else:
            ids = derived
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        read_error = batch.column("mds_error")
        error = pc.if_else(pc.is_valid(read_error), pc.binary_join_element_wise("read: ", read_error, ""),
                           pa.nulls(batch.num_rows, pa.string()))
        columns = {"shard": batch.column("shard"), "row": batch.column("row"), "sample_id": ids,
                   "bucket": buckets_of(ids, self.buckets), ERROR: error, FRAMES: batch.column(self.image_column),
                   READ_AT: pa.array(np.full(batch.num_rows, time.time()))}
        if self.read.text_column:
            columns[TEXT] = batch.column(self.read.text_column)
        if self.read.fps_column or self.read.frame_indices_column:
            columns.update(self._timing(batch, columns))
        return pa.table(columns)

    def _timing(self, batch: pa.Table, columns: dict) -> dict:
        from etl.models.captioner import frame_timing_problem

        rows = batch.num_rows
        fps = (pc.cast(batch.column(self.read.fps_column), pa.float64()) if self.read.fps_column
               else pa.nulls(rows, pa.float64()))
        indices = (frame_index_lists(batch.column(self.read.frame_indices_column))
                   if self.read.frame_indices_column else [None] * rows)
        frames = columns[FRAMES]
        counts = (pc.list_value_length(frames).to_pylist() if pa.types.is_list(frames.type) or
                  pa.types.is_large_list(frames.type) else [1] * rows)
        errors = columns[ERROR].to_pylist()
        for i, (rate, positions) in enumerate(zip(fps.to_pylist(), indices)):
            problem = errors[i] is None and frame_timing_problem(counts[i] or 0, rate, positions)
            if problem:
                errors[i] = f"read: timing: {problem}"
        return {ERROR: pa.array(errors, pa.string()), FPS: fps,
                FRAME_INDICES: pa.array([p if isinstance(p, list) else None for p in indices], pa.list_(pa.int64()))}


def read_columns(read: ReadConfig, encodings: dict, image_column: str) -> list[str]:
    """The input columns the job reads; a named one the input lacks is refused before any work."""
    named = {"read.text_column": read.text_column, "read.id_column": read.id_column,
             "read.fps_column": read.fps_column, "read.frame_indices_column": read.frame_indices_column}
    missing = [f"{key}={name!r}" for key, name in named.items() if name and encodings and name not in encodings]
    if missing:
        raise ValueError(f"{', '.join(missing)}: no such column in the input (its columns: {', '.join(encodings)})")
    return list(dict.fromkeys([image_column, *(name for name in named.values() if name)]))


def frame_index_lists(column) -> list:
    """Per row, the frame indices as a list of ints, or None, or (unreadable) the raw cell: from
    a list column, an MDS `ndarray:int*` column (struct of shape and values) or a `json` one."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    column = column.storage if isinstance(column, pa.ExtensionArray) else column
    values = column.to_pylist()
    if pa.types.is_struct(column.type):
        values = [v if ok else None for v, ok in zip(column.field("values").to_pylist(), column.is_valid().to_pylist())]
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = [_json_list(v) for v in values]
    return [[int(i) for i in v] if isinstance(v, list) and all(map(_whole_number, v)) else v for v in values]


def _whole_number(value) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _json_list(text: Optional[str]):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _stamped(batch: pa.Table, stage: str) -> pa.Table:
    return batch.append_column(STAGE_DONE_AT[stage], pa.array(np.full(batch.num_rows, time.time())))


@dataclass(frozen=True)
class PreviewRows:
    """Which rows get a contact-sheet preview: the first `rows` of each of `shards`."""

    shards: tuple[int, ...] = ()
    rows: int = 0


def preview_rows(shards: list[int], rows_per_shard: dict[int, int], wanted: int) -> PreviewRows:
    """About `wanted` rows from shards spread evenly over the run, so the report's memory does
    not grow with the dataset."""
    nonempty = [s for s in shards if rows_per_shard.get(s, 0)]
    if not nonempty or wanted <= 0:
        return PreviewRows()
    count = min(wanted, len(nonempty))
    picked = dict.fromkeys(nonempty[round(i * (len(nonempty) - 1) / max(1, count - 1))] for i in range(count))
    return PreviewRows(tuple(picked), -(-wanted // len(picked)))


class DecodeStage(FrameDecodeStage):
    """The CPU stage of the plan: frames decoded, the completion time stamped, and a small JPEG
    of the first frame for the rows the report's contact sheet shows (`preview_rows`)."""

    def __init__(self, image_column: str, spec: FrameSpec, error_column: str, previews: PreviewRows):
        super().__init__(image_column, spec, error_column)
        self.previews = previews

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep_off_engine_cores()
        batch = super().__call__(batch)
        wanted = pc.and_(pc.and_(pc.is_in(batch.column("shard"), pa.array(self.previews.shards, pa.int64())),
                                 pc.less(batch.column("row"), self.previews.rows)),
                         pc.and_(pc.is_null(batch.column(ERROR)),
                                 pc.greater(pc.list_value_length(batch.column("caption_frames")), 0)))
        previews = [None] * batch.num_rows
        views = batch.column("caption_frames")
        for i in np.flatnonzero(np.asarray(wanted)):  # a handful of rows per run
            previews[i] = _preview_jpeg(views[int(i)][0].as_py())
        return _stamped(batch.append_column(PREVIEW, pa.array(previews, pa.binary())), "decode")


def _preview_jpeg(view: dict) -> bytes:
    import io

    from PIL import Image

    image = Image.frombuffer("RGB", (view["width"], view["height"]), view["pixels"])
    image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


class CaptionStage:
    """Actor: owns the captioner. Adds caption, quality, aesthetics, caption_parse_error, and the
    engine's counters over the batch (ENGINE_STATS) for the run's engine figures."""

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
        return captioned.append_column(ENGINE_STATS, pa.array(stats, pa.string()))

    def _stats_since_last(self) -> str:
        with self._stats_lock:
            now, stats = time.perf_counter(), self.captioner.stats()
            delta = {key: value - self._reported.get(key, 0) for key, value in stats.items()}
            delta["wall_seconds"] = now - self._last_done
            self._reported, self._last_done = stats, now
        return json.dumps(delta)

    def _caption(self, batch: pa.Table) -> pa.Table:
        from etl.models.captioner import CaptionSample

        errors = batch.column(ERROR).to_pylist()
        captions = batch.column("caption_frames").combine_chunks()
        starts = np.asarray(captions.offsets)
        views = pixel_views(captions.flatten())  # in place: no Python bytes per frame
        texts = batch.column(self.text_column).to_pylist() if self.text_column else [None] * batch.num_rows
        todo = [i for i, e in enumerate(errors) if e is None]
        keys = batch.column("sample_id").to_pylist()
        fps, indices = (batch.column(name).to_pylist() if name in batch.schema.names else [None] * batch.num_rows
                        for name in (FPS, FRAME_INDICES))
        samples = [CaptionSample(views[starts[i] - starts[0]:starts[i + 1] - starts[0]], texts[i], keys[i],
                                 fps[i], indices[i]) for i in todo]
        results = {}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for i, result in zip(chunk, self.captioner.caption(samples[start:start + self.batch_size])):
                results[i] = result
        column = lambda attr: [getattr(results[i], attr) if i in results else None for i in range(batch.num_rows)]
        consumed = [c for c in (self.text_column, FPS, FRAME_INDICES) if c and c in batch.schema.names]  # views go on
        return _stamped(batch.drop_columns(consumed)
                        .append_column("caption", pa.array(column("caption"), pa.string()))
                        .append_column("quality", pa.array(column("quality"), pa.float32()))
                        .append_column("aesthetics", pa.array(column("aesthetics"), pa.float32()))
                        .append_column("caption_parse_error", pa.array(column("parse_error"), pa.string())),
                        "caption")


class EncodeStage:
    """Actor: owns the image embedder and the VAE. Encodes each frame's centre crop, cut on its
    device from the captioner view (or the CPU stage's crop, where the view was too small), adds
    embedding (pooled per sample), frame_embeddings and latents (per frame) as tensor columns,
    and drops the views."""

    def __init__(self, config: JobConfig):
        from etl.models.encoders import FrameEncoders

        models = config.models
        self.encoders = FrameEncoders(models.embedder.model, models.vae.model,
                                      embedder_batch_size=models.embedder.batch_size,
                                      vae_batch_size=models.vae.batch_size)
        size = self.crop_size = config.frames.crop_size
        self.embedding_type = pa.fixed_shape_tensor(pa.float32(), [self.encoders.embedder.dim])
        self.latent_type = pa.fixed_shape_tensor(pa.float32(), list(self.encoders.vae.latent_shape(size, size)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from etl.models.encoders import pool_per_sample

        keep_off_engine_cores()
        captions = batch.column("caption_frames").combine_chunks()
        counts = np.diff(np.asarray(captions.offsets))
        crops = pixel_views(batch.column("crop_frames").combine_chunks().flatten())
        frames = [view if crop is None else crop for crop, view in zip(crops, pixel_views(captions.flatten()))]
        if frames:
            embeddings, latents = self.encoders.encode_views(frames, self.crop_size)
        else:
            embeddings = np.zeros((0, self.embedding_type.shape[0]), np.float32)
            latents = np.zeros((0, *self.latent_type.shape), np.float32)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        per_frame = lambda values, kind: pa.ListArray.from_arrays(
            offsets, pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(
                pa.array(values.reshape(-1)), int(np.prod(kind.shape)))))
        pooled = pool_per_sample(embeddings, counts)
        pooled = pa.ExtensionArray.from_storage(self.embedding_type, pa.FixedSizeListArray.from_arrays(
            pa.array(pooled.reshape(-1)), self.embedding_type.shape[0]))
        return _stamped(batch.drop_columns(["caption_frames", "crop_frames"])
                        .append_column("embedding", pooled)
                        .append_column("frame_embeddings", per_frame(embeddings, self.embedding_type))
                        .append_column("latents", per_frame(latents, self.latent_type)), "encode")


class WriteStage:
    """Splits rows into samples and quarantine, writes their bucket files, returns file rows."""

    def __init__(self, output: str, schemas: dict, run_id: str, model_names: dict[str, str]):
        self.output, self.schemas, self.run_id, self.model_names = output, schemas, run_id, model_names

    def __call__(self, batch: pa.Table) -> pa.Table:
        from etl import storage

        keep_off_engine_cores()
        failed = pc.is_valid(batch.column(ERROR))
        tag = f"{self.run_id}-{uuid.uuid4().hex[:12]}"
        run = lambda n: pa.array([self.run_id] * n, pa.string())
        files = []
        good = batch.filter(pc.invert(failed))
        if good.num_rows:
            for name, model in self.model_names.items():
                good = good.append_column(name, pa.array([model] * good.num_rows, pa.string()))
            good = good.append_column("run_id", run(good.num_rows))
            good = good.select(self.schemas["samples"].names)
            files += [dict(f, table="samples") for f in write_bucket_files(
                good, self.schemas["samples"], storage.join(self.output, "samples"), tag)]
        bad = batch.filter(failed)
        if bad.num_rows:
            reasons = bad.column(ERROR).to_pylist()
            stages = [reason.split(":", 1)[0] for reason in reasons]
            classes = [error_class(reason) for reason in reasons]
            quarantine = pa.table({
                "sample_id": bad.column("sample_id"), "shard": bad.column("shard"), "row": bad.column("row"),
                "bucket": bad.column("bucket"), "stage": pa.array(stages), "error_class": pa.array(classes),
                "error": bad.column(ERROR), "run_id": run(bad.num_rows)})
            files += [dict(f, table="quarantine") for f in write_bucket_files(
                quarantine, self.schemas["quarantine"], storage.join(self.output, "quarantine"), tag)]
        per_shard = pa.table({"shard": batch.column("shard"), "bad": pc.cast(failed, pa.int64()),
                              "read_at": batch.column(READ_AT)}) \
            .group_by("shard").aggregate([("bad", "sum"), ("bad", "count"), ("read_at", "max")]).to_pydict()
        shards = {shard: [count - bad, bad, read_at] for shard, bad, count, read_at in
                  zip(per_shard["shard"], per_shard["bad_sum"], per_shard["bad_count"], per_shard["read_at_max"])}
        reasons: dict = {}  # classified once per distinct reason, not per row
        for entry in (pc.value_counts(bad.column(ERROR)).to_pylist() if bad.num_rows else []):
            key = f"{entry['values'].split(':', 1)[0]}: {error_class(entry['values'])}"
            reasons[key] = reasons.get(key, 0) + entry["counts"]
        counts = {"shards": shards, "reasons": reasons, "timeline": _per_second(batch), "previews": _previews(batch),
                  "engine": _engine_totals(batch)}
        return pa.table({"table": [f["table"] for f in files] + ["counts"],
                         "file": [json.dumps(f) for f in files] + [json.dumps(counts)]})


def _per_second(batch: pa.Table) -> dict[str, list[list[int]]]:
    """{stage: [[unix second, rows that left the stage in it], ...]}, the write stage included."""
    timeline = {}
    for stage, column in STAGE_DONE_AT.items():
        seconds = pc.cast(pc.floor(batch.column(column)), pa.int64())
        timeline[stage] = [[e["values"], e["counts"]] for e in pc.value_counts(seconds).to_pylist()]
    timeline["write"] = [[int(time.time()), batch.num_rows]]
    return timeline


def _engine_totals(batch: pa.Table) -> dict:
    totals: dict = {}
    for stats in batch.column(ENGINE_STATS).drop_null().to_pylist():
        for key, value in json.loads(stats).items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _previews(batch: pa.Table) -> list[dict]:
    import base64

    chosen = batch.filter(pc.is_valid(batch.column(PREVIEW)))
    if not chosen.num_rows:
        return []
    fields = ["sample_id", "shard", "row", "caption", "quality", "aesthetics", "caption_parse_error", "frame_count"]
    rows = chosen.select([f for f in fields if f in chosen.schema.names]).to_pylist()
    for row, jpeg in zip(rows, chosen.column(PREVIEW).to_pylist()):
        row["jpeg"] = base64.b64encode(jpeg).decode()
    return rows


def error_class(reason: str) -> str:
    """The kind of failure, for grouping: `decode: frame 2: not a decodable image (...)` ->
    `not a decodable image`; `read: unreadable shard: <file>: ...` -> `unreadable shard`."""
    detail = reason.split(": ", 1)[1] if ": " in reason else reason
    detail = re.sub(r"^(frame \d+|column '[^']*'): ", "", detail)
    return re.split(r" \(|: ", detail, maxsplit=1)[0][:120]


def frame_spec(config: JobConfig, encoders_on_gpu: bool = True) -> FrameSpec:
    frames = config.frames
    return FrameSpec(min_pixels=frames.min_pixels, max_pixels=frames.max_pixels, crop_size=frames.crop_size,
                     max_image_pixels=frames.max_image_pixels, use_draft=frames.use_draft,
                     max_frames=frames.max_frames, crops_on_cpu=not encoders_on_gpu)


CAPTION_CALLS_PER_BATCH = 4  # captioner calls per caption-stage batch


def caption_batch_rows(config: JobConfig) -> int:
    return config.models.captioner.batch_size * CAPTION_CALLS_PER_BATCH


def caption_batches_per_actor(config: JobConfig) -> dict:
    """How a caption actor takes its batches. vLLM: two at once (its captioner is thread-safe and
    the engine batches their requests together), so the engine is not idle while the actor
    turns one batch's answers into columns and the next batch's frames into requests. The
    transformers backend: one at a time."""
    if config.models.captioner.backend != "vllm":
        return {}
    return {"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True}


def decode_batch_rows(config: JobConfig) -> int:
    """Samples per decode batch: at most _DECODE_BUDGET_BYTES of decoded pixels, and no more than
    one caption-stage batch. Ray Data never splits a block and an actor task emits its output
    only once it fills a block (128 MiB) or ends: one decode batch of a whole small-frame shard
    became one caption task whose captions all reached the encoders at once, after the last."""
    per_frame = FrameDecodeStage.pixel_bytes_per_frame(frame_spec(config))
    return max(1, min(_DECODE_BUDGET_BYTES // (config.frames.max_frames * per_frame), caption_batch_rows(config)))


def table_schemas(config: JobConfig) -> dict[str, pa.Schema]:
    """The run's table schemas; tensor shapes come from the checkpoints' configs (no weights)."""
    from etl.models.encoders import embedding_dim, latent_shape
    from schemas.tables import quarantine_schema, runs_schema, samples_schema

    crop = config.frames.crop_size
    return {"samples": samples_schema(embedding_dim(config.models.embedder.model),
                                      latent_shape(config.models.vae.model, crop, crop)),
            "quarantine": quarantine_schema(), "runs": runs_schema()}


def retry_bounds(config: JobConfig) -> tuple[dict, dict]:
    """(remote args for task stages, for actor stages) bounding retries after a worker dies.
    Actors still restart without bound (a lost node); a batch is retried `max_task_retries`
    times, then the job fails with its error instead of crashing workers forever."""
    retries = config.ray.max_task_retries
    return {"max_retries": retries}, {"max_task_retries": retries}


def _absolute_model_paths(config: JobConfig) -> JobConfig:
    """Workers do not share the driver's working directory: ship absolute local paths."""
    models = config.models
    fix = lambda path: path if "://" in path else str(Path(path).resolve())
    return config.model_copy(update={"models": models.model_copy(update={
        "captioner": models.captioner.model_copy(update={"model": fix(models.captioner.model)}),
        "embedder": models.embedder.model_copy(update={"model": fix(models.embedder.model)}),
        "vae": models.vae.model_copy(update={"model": fix(models.vae.model)}),
    })})


@dataclass
class RunSummary:
    run_id: str
    output: str
    mode: str = "incremental"            # incremental | replace (backfill) | nothing to do
    shards: list[int] = field(default_factory=list)            # what this run processed
    skipped_shards: list[int] = field(default_factory=list)    # finished earlier (--resume)
    rows: dict[str, int] = field(default_factory=dict)
    commits: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    per_shard: dict[int, tuple[int, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_commit_seconds: Optional[float] = None
    last_read_seconds: float = 0.0       # when the last row left a read task
    shards_read_after_first_commit: int = 0
    commit_times: list[float] = field(default_factory=list)   # unix seconds of each commit round
    stage_stats: str = ""
    plan: str = ""                       # what each stage got on this cluster (planner.Plan.describe)
    started_at: float = 0.0              # unix seconds
    timeline: dict[str, dict[int, int]] = field(default_factory=dict)  # stage -> unix second -> rows done
    previews: list[dict] = field(default_factory=list)        # the report's contact sheet
    engine: dict = field(default_factory=dict)               # captioner figures (captioner.engine_summary)
    error: Optional[str] = None          # why the run failed, when it did
    report: Optional[str] = None         # URI of report.html


def plan_shards(config: JobConfig, schemas: dict, shard_count: int, resume: bool) -> tuple[list[int], list[int], str]:
    """(shards to process, shards skipped as finished, commit mode). A range whose shards
    already have rows is a backfill: its replacement lands in one commit per table."""
    from etl import ledger
    from etl.sinks.delta_commits import files_meeting, open_table

    selected = select_shards(config.read.shards, shard_count)
    finished = ledger.finished_shards(config.output, config.sink.format, config.input)
    if config.sink.format == "parquet":
        if resume:
            raise ValueError("--resume needs --format delta: plain Parquet has no transactions to take back the "
                             "files of a crashed run's unfinished shards")
        if any(s in finished for s in selected):
            raise ValueError("shards " + _ranges([s for s in selected if s in finished]) + " already have rows in "
                             f"{config.output}; replacing rows needs --format delta (or write to a new --output)")
        return selected, [], "incremental"
    if resume:
        todo = [s for s in selected if s not in finished]
        return todo, [s for s in selected if s in finished], "incremental"
    has_rows = any(s in finished for s in selected) or any(
        table is not None and files_meeting(table, selected)
        for table in (open_table(storage.join(config.output, name)) for name in ("samples", "quarantine")))
    return selected, [], "replace" if has_rows else "incremental"


def _ranges(shards: list[int]) -> str:
    spans, start = [], None
    for i, shard in enumerate(shards):
        start = shard if start is None else start
        if i + 1 == len(shards) or shards[i + 1] != shard + 1:
            spans.append(f"{start}:{shard + 1}")
            start = None
    return ", ".join(spans)


def _summarize(summary: RunSummary, progress, started: float, started_wall: float) -> None:
    summary.rows, summary.commits, summary.files = progress.rows, progress.commits, progress.files
    summary.reasons = progress.reasons
    summary.per_shard = {s: tuple(v) for s, v in progress.per_shard.items()}
    summary.seconds = time.perf_counter() - started
    if progress.read_times:
        summary.last_read_seconds = max(progress.read_times.values()) - started_wall
    summary.commit_times = list(progress.commit_times)
    summary.timeline = {stage: dict(seconds) for stage, seconds in progress.timeline.items()}
    summary.previews = list(progress.previews)
    from etl.models.captioner import engine_summary

    summary.engine = engine_summary(progress.engine)
    if progress.commit_times:
        summary.first_commit_seconds = progress.commit_times[0] - started_wall
        summary.shards_read_after_first_commit = sum(t > progress.commit_times[0]
                                                     for t in progress.read_times.values())


def run(config: JobConfig, resume: bool = False) -> RunSummary:
    """Run the curation job described by `config` on the current Ray cluster. With `resume`,
    shards the ledger records as finished (for the same input) are skipped."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from etl.mds import load_index
    from etl.models.tiny import ensure_tiny_models
    from etl.sources.mds_datasource import MDSDatasource

    started, started_wall = time.perf_counter(), time.time()
    config = _absolute_model_paths(config)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if config.models.build_tiny_if_missing:
        # the tiny checkpoints live where the config points: models/tiny/<name>
        roots = {str(Path(m).parent) for m in (config.models.captioner.model, config.models.embedder.model,
                                               config.models.vae.model)}
        for root in roots:
            ensure_tiny_models(root)

    fs, root = storage.resolve(config.input)
    entries = load_index(fs, root)
    encodings = dict(zip(entries[0].column_names, entries[0].column_encodings)) if entries else {}
    image_column = choose_image_column(encodings, config.read.image_column)
    columns = read_columns(config.read, encodings, image_column)

    schemas = table_schemas(config)

    todo, skipped, mode = plan_shards(config, schemas, len(entries), resume)
    if not todo:
        return RunSummary(run_id, config.output, mode="nothing to do", skipped_shards=skipped,
                          seconds=time.perf_counter() - started)
    if resume and config.sink.format == "delta":
        remove_unfinished_rows(config.output, schemas, run_id, todo)

    from etl import planner
    from etl.sources.mds_datasource import estimate_decoded_bytes

    # The same plan `python -m jobs.plan` prints, against the live cluster: refused before any work
    sizes = [estimate_decoded_bytes(entries[s], columns) for s in todo]
    plan = planner.plan(planner.nodes_from_ray(ray.nodes()), config, planner.footprints_of(config), sizes)
    spec = frame_spec(config, encoders_on_gpu=plan.encoder_gpus > 0)
    source = MDSDatasource(config.input, shards=todo, columns=columns,
                           verify_hashes=config.read.verify_hashes, shards_per_task=config.read.shards_per_task,
                           on_bad_shard="quarantine", max_image_pixels=config.frames.max_image_pixels,
                           block_bytes=planner.READ_BLOCK_BYTES, max_bytes_per_task=config.read.max_task_mb << 20)
    previews = preview_rows(todo, {s: entries[s].samples for s in todo}, CONTACT_SHEET_SAMPLES)
    task_retries, actor_retries = retry_bounds(config)
    dataset = (
        ray.data.read_datasource(source, override_num_blocks=source.num_read_tasks(), num_cpus=plan.task_cpus,
                                 memory=plan.read_task_memory,
                                 # Ray 2.60 has no named max_retries here (as a keyword it would
                                 # be a read arg); ray_remote_args is deprecated for 2.64
                                 ray_remote_args=task_retries)
        .map_batches(Prepare(config.read, image_column, config.sink.buckets),
                     batch_format="pyarrow", num_cpus=plan.task_cpus, memory=plan.read_task_memory,
                     **task_retries)  # the same remote args as the read: they fuse
        .map_batches(DecodeStage, fn_constructor_args=(FRAMES, spec, ERROR, previews), batch_format="pyarrow",
                     batch_size=decode_batch_rows(config), num_cpus=plan.decode_cpus, memory=plan.decode_memory,
                     compute=ActorPoolStrategy(size=plan.decode_actors), **actor_retries)
        .map_batches(CaptionStage, fn_constructor_args=(config, TEXT if config.read.text_column else None,
                                                        plan.kv_cache_bytes, plan.engine_cores),
                     batch_format="pyarrow",
                     batch_size=caption_batch_rows(config), num_cpus=plan.engine_cpus,
                     num_gpus=plan.engine_gpus, memory=plan.engine_memory,
                     compute=ActorPoolStrategy(size=plan.engines, **caption_batches_per_actor(config)),
                     **actor_retries)
        .map_batches(EncodeStage, fn_constructor_args=(config,), batch_format="pyarrow",
                     batch_size=config.models.embedder.batch_size, num_cpus=plan.encoder_cpus,
                     num_gpus=plan.encoder_gpus, memory=plan.encoder_memory,
                     compute=ActorPoolStrategy(size=plan.encoders), **actor_retries)
        # Actors, not tasks: Ray Data reserves CPU for operators upstream first, and once the actor
        # pools fill the cluster a last *task* operator gets no budget until the read has finished,
        # so nothing would commit before the end of a long run (seen at 1M samples). Work sent to
        # a running actor needs no new CPU.
        .map_batches(WriteStage, fn_constructor_args=(config.output, schemas, run_id, {
                        "captioner": config.models.captioner.model, "embedder": config.models.embedder.model,
                        "vae": config.models.vae.model}),
                     batch_format="pyarrow", batch_size=config.sink.rows_per_write, num_cpus=plan.task_cpus,
                     compute=ActorPoolStrategy(size=plan.writers), **actor_retries)
    )

    if config.ray.object_store_budget_mb:
        # the dataset's own context: it copied the global one when it was built
        options = dataset.context.execution_options
        options.resource_limits = options.resource_limits.copy(object_store_memory=config.ray.object_store_budget_mb << 20)
    summary = RunSummary(run_id, config.output, mode=mode, shards=todo, skipped_shards=skipped, plan=plan.describe(),
                         started_at=started_wall)
    committer = RunCommitter(
        config.output, schemas, run_id, config.model_dump_json(), {s: entries[s].samples for s in todo},
        format=config.sink.format, mode=mode, max_error_fraction=config.max_error_fraction,
        cadence=CommitCadence(config.sink.commit_every_shards, config.sink.commit_every_minutes,
                              config.sink.commit_every_files))
    try:
        # No prefetch: with it, Ray hands over each write output only once the next one exists,
        # so a run whose read outlasts the early writes held its first commit until after the read
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
            for table, payload in zip(batch.column("table").to_pylist(), batch.column("file").to_pylist()):
                committer.receive(table, payload)
        committer.finish()
        summary.stage_stats = dataset.stats()
    except BaseException as exc:
        summary.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _summarize(summary, committer.progress, started, started_wall)
        _write_report(summary, config)
    return summary


def _write_report(summary: RunSummary, config: JobConfig) -> None:
    """The report of a failed run matters most: writing it never hides the run's own error."""
    from etl.report import write_report

    try:
        summary.report = write_report(summary, config)
    except Exception:  # noqa: BLE001 - a report is not worth failing (or masking) a run for
        logger.exception("could not write the run report under %s", config.output)

