"""Write: splits rows into `samples` and `quarantine` (with the failing stage and the class of
its reason), marks the samples with the config's filters they fail (`etl.filters`), writes their
bucket files, and returns one message per file plus one closing
`counts` message per batch: rows per shard, reasons, per-second counts of every stage, the
contact sheet's rows and the engine's counters. The driver (`etl.committer`) commits the files
once the counts check out.

Actors, not tasks: Ray Data reserves CPU for operators upstream first, and once the actor pools
fill the cluster a last *task* operator gets no budget until the read has finished, so nothing
would commit before the end of a long run (seen at 1M samples). Work sent to a running actor
needs no new CPU."""

import json
import re
import time
import uuid
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import storage
from etl.config import FiltersConfig
from etl.cpu_cores import keep_off_engine_cores
from etl.filters import FILTERED_BY, failures, filtered_by
from etl.sinks.bucket_files import write_bucket_files
from etl.stages import rows
from etl.stages.previews import preview_records
from etl.stages.stage import Resources, RunContext, Step

def error_class(reason: str) -> str:
    """The kind of failure, for grouping: `decode: frame 2: not a decodable image (...)` ->
    `not a decodable image`; `read: unreadable shard: <file>: ...` -> `unreadable shard`."""
    detail = reason.split(": ", 1)[1] if ": " in reason else reason
    detail = re.sub(r"^(frame \d+|column '[^']*'): ", "", detail)
    return re.split(r" \(|: ", detail, maxsplit=1)[0][:120]


class WriteStage:
    @classmethod
    def step(cls, run: RunContext) -> Step:
        config, plan = run.config, run.plan
        models = config.models
        names = {"captioner": models.captioner.model, "embedder": models.embedder.model, "vae": models.vae.model}
        made_here = {*names, "run_id", FILTERED_BY}
        reads = (rows.ERROR, rows.SHARD, rows.ROW, rows.SAMPLE_ID, rows.BUCKET, rows.done_at("read"), rows.ran_on("read"),
                 rows.PREVIEW,
                 rows.ENGINE_STATS, *(n for n in run.schemas["samples"].names if n not in made_here))
        return Step(cls, (config.output, run.schemas, run.run_id, names, config.filters), tuple(dict.fromkeys(reads)),
                    dict(zip(rows.MESSAGE_SCHEMA.names, rows.MESSAGE_SCHEMA.types)),
                    # one writer per encoder actor: they take its output
                    Resources(cpus=plan.task_cpus, memory=plan.write_memory, actors=plan.writers,
                              batch_rows=config.sink.rows_per_write),
                    replaces_row=True)

    def __init__(self, output: str, schemas: dict, run_id: str, model_names: dict[str, str],
                 filters: Optional[FiltersConfig] = None):
        self.output, self.schemas, self.run_id, self.model_names = output, schemas, run_id, model_names
        self.filters = filters or FiltersConfig()

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep_off_engine_cores()
        failed = pc.is_valid(batch.column(rows.ERROR))
        tag = f"{self.run_id}-{uuid.uuid4().hex[:12]}"
        good = batch.filter(pc.invert(failed))
        rejected = failures(good, self.filters)
        files = self._write("samples", self._samples(good, filtered_by(rejected, good.num_rows)), tag)
        files += self._write("quarantine", self._quarantine(batch.filter(failed)), tag)
        counts = {"shards": _per_shard(batch, failed), "reasons": _reasons(batch.filter(failed)),
                  "filters": {name: int(fails.sum()) for name, fails in rejected.items()},
                  "filtered": int(np.any(list(rejected.values()), axis=0).sum()) if rejected else 0,
                  "timeline": _per_second(batch), "placement": _per_place(batch), "previews": preview_records(batch),
                  "engine": _engine_totals(batch)}
        return pa.table({"kind": [rows.FILE] * len(files) + [rows.COUNTS],
                         "table": [table for table, _ in files] + [None],
                         "payload": [json.dumps(f) for _, f in files] + [json.dumps(counts)]}, schema=rows.MESSAGE_SCHEMA)

    def _write(self, table: str, part: pa.Table, tag: str) -> list[tuple[str, dict]]:
        if not part.num_rows:
            return []
        files = write_bucket_files(part, self.schemas[table], storage.join(self.output, table), tag)
        return [(table, f) for f in files]

    def _run_ids(self, count: int) -> pa.Array:
        return pa.array([self.run_id] * count, pa.string())

    def _samples(self, good: pa.Table, rules_failed: pa.Array) -> pa.Table:
        for name, model in self.model_names.items():
            good = good.append_column(name, pa.array([model] * good.num_rows, pa.string()))
        good = good.append_column(FILTERED_BY, rules_failed)
        return good.append_column("run_id", self._run_ids(good.num_rows)).select(self.schemas["samples"].names)

    def _quarantine(self, bad: pa.Table) -> pa.Table:
        reasons = bad.column(rows.ERROR).to_pylist()
        return pa.table({
            rows.SAMPLE_ID: bad.column(rows.SAMPLE_ID), rows.SHARD: bad.column(rows.SHARD),
            rows.ROW: bad.column(rows.ROW), rows.BUCKET: bad.column(rows.BUCKET),
            "stage": pa.array([reason.split(":", 1)[0] for reason in reasons], pa.string()),
            "error_class": pa.array([error_class(reason) for reason in reasons], pa.string()),
            "error": bad.column(rows.ERROR), "run_id": self._run_ids(bad.num_rows)})


def _per_shard(batch: pa.Table, failed: pa.Array) -> dict[int, list]:
    """{shard: [good rows, bad rows, when its last row left the read]} of this batch."""
    grouped = pa.table({"shard": batch.column(rows.SHARD), "bad": pc.cast(failed, pa.int64()),
                        "read_at": batch.column(rows.done_at("read"))}) \
        .group_by("shard").aggregate([("bad", "sum"), ("bad", "count"), ("read_at", "max")]).to_pydict()
    return {shard: [count - bad, bad, read_at] for shard, bad, count, read_at in
            zip(grouped["shard"], grouped["bad_sum"], grouped["bad_count"], grouped["read_at_max"])}


def _reasons(bad: pa.Table) -> dict[str, int]:
    """{"<stage>: <error class>": rows}, classified once per distinct reason, not per row."""
    reasons: dict = {}
    for entry in (pc.value_counts(bad.column(rows.ERROR)).to_pylist() if bad.num_rows else []):
        key = f"{entry['values'].split(':', 1)[0]}: {error_class(entry['values'])}"
        reasons[key] = reasons.get(key, 0) + entry["counts"]
    return reasons


def _per_second(batch: pa.Table) -> dict[str, list[list[int]]]:
    """{stage: [[unix second, rows that left the stage in it], ...]}, the write stage included."""
    timeline = {}
    for stage, column in rows.stages_done_at(batch.schema.names).items():
        seconds = pc.cast(pc.floor(batch.column(column)), pa.int64())
        timeline[stage] = [[e["values"], e["counts"]] for e in pc.value_counts(seconds).to_pylist()]
    timeline["write"] = [[int(time.time()), batch.num_rows]]
    return timeline


def _per_place(batch: pa.Table) -> dict[str, list[list]]:
    """{stage: [["<node>/<worker>", rows it took through the stage], ...]}, the write included."""
    placement = {}
    for stage, column in rows.stages_ran_on(batch.schema.names).items():
        placement[stage] = [[e["values"], e["counts"]] for e in pc.value_counts(pc.cast(batch.column(column),
                                                                                       pa.string())).to_pylist()]
    placement["write"] = [[rows.worker_place(), batch.num_rows]]
    return placement


def _engine_totals(batch: pa.Table) -> dict:
    totals: dict = {}
    for stats in batch.column(rows.ENGINE_STATS).drop_null().to_pylist():
        for key, value in json.loads(stats).items():
            totals[key] = totals.get(key, 0) + value
    return totals
