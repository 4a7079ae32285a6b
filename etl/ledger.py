"""The `runs` table: one row per (run, shard) finished, appended in the same commit round that
made the shard's last rows visible. A shard with a ledger row has every one of its samples in
`samples` or `quarantine`; `--resume` skips those shards and redoes the rest."""

import json
import time
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from etl import storage
from schemas.tables import runs_schema


@dataclass(frozen=True)
class FinishedShard:
    shard: int
    samples: int
    quarantined: int


def ledger_rows(run_id: str, finished: list[FinishedShard], config_json: str) -> pa.Table:
    now = int(time.time() * 1e6)
    return pa.table({
        "run_id": [run_id] * len(finished),
        "shard": pa.array([f.shard for f in finished], pa.int64()),
        "samples": pa.array([f.samples for f in finished], pa.int64()),
        "quarantined": pa.array([f.quarantined for f in finished], pa.int64()),
        "committed_at": pa.array([now] * len(finished), pa.timestamp("us", tz="UTC")),
        "config": [config_json] * len(finished),
    }, schema=runs_schema())


def append(output: str, rows: pa.Table, format: Literal["delta", "parquet"], name: str) -> None:
    if not rows.num_rows:
        return
    uri = storage.join(output, "runs")
    if format == "delta":
        from deltalake import write_deltalake

        with storage.naming("appending to", uri):
            write_deltalake(uri, rows, mode="append", storage_options=storage.delta_storage_options(uri))
        return
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink)
    fs, root = storage.resolve(uri)
    storage.write_file(fs, storage.join(root, f"{name}.parquet"), sink.getvalue())


def read(output: str, format: Literal["delta", "parquet"]) -> pa.Table:
    """Every ledger row so far (an empty table when there is no ledger yet)."""
    uri = storage.join(output, "runs")
    if format == "delta":
        from etl.sinks.delta_commits import open_table

        table = open_table(uri)
        return table.to_pyarrow_table() if table is not None else runs_schema().empty_table()
    import pyarrow.dataset as ds

    fs, root = storage.resolve(uri)
    if not storage.exists(fs, root):
        return runs_schema().empty_table()
    return ds.dataset(root, filesystem=fs, format="parquet", schema=runs_schema()).to_table()


def finished_shards(output: str, format: Literal["delta", "parquet"], input_uri: str) -> dict[int, str]:
    """shard -> the latest run that finished it, over runs that read `input_uri`."""
    rows = read(output, format).select(["run_id", "shard", "committed_at", "config"]).to_pylist()
    owners: dict[int, tuple] = {}
    for row in rows:
        if json.loads(row["config"]).get("input") != input_uri:
            continue
        key = (row["committed_at"], row["run_id"])
        if row["shard"] not in owners or key > owners[row["shard"]][0]:
            owners[row["shard"]] = (key, row["run_id"])
    return {shard: owner for shard, (_, owner) in owners.items()}
