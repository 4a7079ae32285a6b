"""Which of the selected shards a run processes, and how it commits them: decided once, from
the ledger and the tables, before any work.

- a fresh range: incremental commit rounds;
- `--resume`: the shards the ledger records as finished (for the same input) are skipped, the
  rest committed incrementally;
- a range whose shards already have rows (a backfill): replaced, in one commit per table.
"""

from dataclasses import dataclass, field
from typing import Literal

from etl import ledger, storage
from etl.config import JobConfig
from etl.sinks.delta_commits import files_meeting, open_table
from etl.sources.shard_selection import select_shards

Mode = Literal["incremental", "replace"]


@dataclass(frozen=True)
class ShardWork:
    todo: list[int]                                      # shards this run processes
    skipped: list[int] = field(default_factory=list)     # finished earlier (--resume)
    mode: Mode = "incremental"


def shard_work(config: JobConfig, shard_count: int, resume: bool) -> ShardWork:
    """The run's shards and commit mode, or ValueError when the sink cannot do what is asked."""
    selected = select_shards(config.read.shards, shard_count)
    finished = ledger.finished_shards(config.output, config.sink.format, config.input)
    if config.sink.format == "parquet":
        if resume:
            raise ValueError("--resume needs --format delta: plain Parquet has no transactions to take back the "
                             "files of a crashed run's unfinished shards")
        if any(s in finished for s in selected):
            raise ValueError("shards " + shard_ranges([s for s in selected if s in finished]) + " already have rows "
                             f"in {config.output}; replacing rows needs --format delta (or write to a new --output)")
        return ShardWork(selected)
    if resume:
        return ShardWork([s for s in selected if s not in finished], [s for s in selected if s in finished])
    has_rows = any(s in finished for s in selected) or any(
        table is not None and files_meeting(table, selected)
        for table in (open_table(storage.join(config.output, name)) for name in ("samples", "quarantine")))
    return ShardWork(selected, mode="replace" if has_rows else "incremental")


def shard_ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5] -> "0:3, 5:6"."""
    spans, start = [], None
    for i, shard in enumerate(shards):
        start = shard if start is None else start
        if i + 1 == len(shards) or shards[i + 1] != shard + 1:
            spans.append(f"{start}:{shard + 1}")
            start = None
    return ", ".join(spans)
