"""Prepare: the first stage, fused into the read task. Gives each row its `sample_id` and
`bucket`, turns the reader's verdict into `error`, renames the input columns the job uses to
internal names, and checks a sample's own timing (fps, frame indices) against its frames.
Nothing else from the input goes downstream."""

import json
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from etl.config import ReadConfig
from etl.sinks.partitioning import buckets_of, derived_sample_ids
from etl.stages import rows
from etl.stages.stage import Resources, RunContext, Step

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


class Prepare:
    """sample_id (from the id column or shard:row), bucket, the read error as `error`, and the
    input columns renamed to internal names. A sample whose own timing (fps, frame indices)
    cannot time its frames gets that as its error."""

    @classmethod
    def step(cls, run: RunContext) -> Step:
        read, plan = run.config.read, run.plan
        adds = {rows.SHARD: pa.int64(), rows.ROW: pa.int64(), rows.SAMPLE_ID: pa.string(), rows.BUCKET: pa.int32(),
                rows.ERROR: pa.string(), rows.FRAMES: run.input_types[run.image_column],
                **rows.stamp_types("read")}
        if read.text_column:
            adds[rows.TEXT] = run.input_types[read.text_column]
        if read.fps_column or read.frame_indices_column:
            adds.update({rows.FPS: rows.TYPES[rows.FPS], rows.FRAME_INDICES: rows.TYPES[rows.FRAME_INDICES]})
        reads = tuple(run.input_types)  # what the read returns: provenance, mds_error, the columns read
        # the read's own CPUs and memory: with the same remote args, Ray fuses the two
        return Step(cls, (read, run.image_column, run.config.sink.buckets), reads, adds,
                    Resources(cpus=plan.task_cpus, memory=plan.read_task_memory, max_tasks=plan.read_concurrency),
                    replaces_row=True)

    def __init__(self, read: ReadConfig, image_column: str, buckets: int):
        self.read, self.image_column, self.buckets = read, image_column, buckets

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = derived_sample_ids(batch.column(rows.SHARD), batch.column(rows.ROW))
        if self.read.id_column:
            given = pc.cast(batch.column(self.read.id_column), pa.string())
            ids = pc.if_else(pc.is_null(given), ids, given)
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        read_error = batch.column(rows.MDS_ERROR)
        error = pc.if_else(pc.is_valid(read_error), pc.binary_join_element_wise("read: ", read_error, ""),
                           pa.nulls(batch.num_rows, pa.string()))
        columns = {rows.SHARD: batch.column(rows.SHARD), rows.ROW: batch.column(rows.ROW), rows.SAMPLE_ID: ids,
                   rows.BUCKET: buckets_of(ids, self.buckets), rows.ERROR: error,
                   rows.FRAMES: batch.column(self.image_column), **rows.stamps(batch.num_rows, "read")}
        if self.read.text_column:
            columns[rows.TEXT] = batch.column(self.read.text_column)
        if self.read.fps_column or self.read.frame_indices_column:
            columns.update(self._timing(batch, columns))
        return pa.table(columns)

    def _timing(self, batch: pa.Table, columns: dict) -> dict:
        from etl.models.captioner import frame_timing_problem

        count = batch.num_rows
        fps = (pc.cast(batch.column(self.read.fps_column), pa.float64()) if self.read.fps_column
               else pa.nulls(count, pa.float64()))
        indices = (frame_index_lists(batch.column(self.read.frame_indices_column))
                   if self.read.frame_indices_column else [None] * count)
        frames = columns[rows.FRAMES]
        counts = (pc.list_value_length(frames).to_pylist() if pa.types.is_list(frames.type) or
                  pa.types.is_large_list(frames.type) else [1] * count)
        errors = columns[rows.ERROR].to_pylist()
        for i, (rate, positions) in enumerate(zip(fps.to_pylist(), indices)):
            problem = errors[i] is None and frame_timing_problem(counts[i] or 0, rate, positions)
            if problem:
                errors[i] = f"read: timing: {problem}"
        return {rows.ERROR: pa.array(errors, pa.string()), rows.FPS: fps,
                rows.FRAME_INDICES: pa.array([p if isinstance(p, list) else None for p in indices],
                                             rows.TYPES[rows.FRAME_INDICES])}
