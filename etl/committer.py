"""The driver's side of a run: it receives the write stage's file metadata and per-shard counts,
commits, keeps the ledger, and enforces the error budget and row accounting.

Two modes:
- incremental (a fresh range, or `--resume`): a commit round (samples, then quarantine, then
  the ledger rows of the shards it finished) every `commit_every_shards` shards,
  `commit_every_minutes` or `commit_every_files` files, whichever comes first. A crash loses at
  most the rounds not yet made; rows of unfinished shards that did land are removed by
  `--resume` before it redoes those shards.
- replace (the selected shards already have rows: a backfill): nothing is committed until the
  end, then each table gets one transaction that removes the shards' old rows and adds the new
  files, so readers never see the range half-replaced.

A write output's files are accepted only once its counts check out: a shard never receives more
rows than its index declares (a re-executed task would otherwise duplicate rows), and at the
end every shard must have exactly its declared count, or nothing more is committed.
"""

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from etl import ledger, storage
from etl.sinks.delta_commits import commit_files
from etl.sinks.tables import ensure_tables

TABLES = ("samples", "quarantine")
MAX_PREVIEWS = 64  # a bound on driver memory whatever the write stage sends


class RowAccountingError(RuntimeError):
    """Rows were lost or duplicated on the way: nothing further is committed."""


class ErrorBudgetExceeded(RuntimeError):
    """More samples failed than `max_error_fraction` allows."""


@dataclass
class CommitCadence:
    every_shards: int
    every_minutes: float
    every_files: int


@dataclass
class RunProgress:
    rows: dict[str, int] = field(default_factory=dict)
    commits: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    per_shard: dict[int, list[int]] = field(default_factory=dict)   # shard -> [samples, quarantined]
    reasons: dict[str, int] = field(default_factory=dict)
    read_times: dict[int, float] = field(default_factory=dict)
    commit_times: list[float] = field(default_factory=list)         # unix s each round's first table commit landed
    timeline: dict[str, dict[int, int]] = field(default_factory=dict)  # stage -> unix second -> rows done
    placement: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> "<node>/<worker>" -> rows
    previews: list[dict] = field(default_factory=list)              # contact-sheet rows (bounded by the plan)
    engine: dict = field(default_factory=dict)                      # summed captioner counters
    filters: dict[str, int] = field(default_factory=dict)           # rule -> samples it rejected
    filtered: int = 0                                               # samples any rule rejected
    ledgered: set = field(default_factory=set)


class RunCommitter:
    def __init__(self, output: str, schemas: dict, run_id: str, config_json: str, expected: dict[int, int], *,
                 format: Literal["delta", "parquet"], mode: Literal["incremental", "replace"],
                 cadence: CommitCadence, max_error_fraction: float, table_properties: Optional[dict[str, str]] = None,
                 commit_metadata: Optional[dict] = None):
        self.output, self.schemas, self.run_id, self.config_json = output, schemas, run_id, config_json
        self.table_properties = table_properties  # Delta properties of the tables this run creates
        self.expected, self.format, self.mode, self.cadence = expected, format, mode, cadence
        self.max_error_fraction = max_error_fraction
        self.progress = RunProgress()
        self.commit_metadata = commit_metadata or {}  # for readers, in every commit (etl.ingest reads it)
        self.pending: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
        self._staged: list[tuple[str, dict]] = []
        self._finished_since_commit = 0
        self._last_commit = time.monotonic()
        self._rounds = 0
        for shard, count in expected.items():  # empty shards are finished before they start
            if count == 0:
                self.progress.per_shard[shard] = [0, 0]

    # -- receiving ------------------------------------------------------------------------------
    def receive_file(self, table: str, file: dict) -> None:
        """A file the write stage wrote; accepted with the counts that close its batch."""
        self._staged.append((table, file))

    def receive_counts(self, counts: dict) -> None:
        """The counts closing one write batch: its files are accepted once they check out."""
        self._check_counts(counts["shards"])
        for shard, (good, bad, read_at) in counts["shards"].items():
            shard = int(shard)
            totals = self.progress.per_shard.setdefault(shard, [0, 0])
            totals[0] += good
            totals[1] += bad
            self.progress.read_times[shard] = max(self.progress.read_times.get(shard, 0.0), read_at)
            if self.finished(shard):
                self._finished_since_commit += 1
        for reason, count in counts["reasons"].items():
            self.progress.reasons[reason] = self.progress.reasons.get(reason, 0) + count
        for stage, seconds in counts.get("timeline", {}).items():
            per_second = self.progress.timeline.setdefault(stage, {})
            for second, rows in seconds:
                per_second[second] = per_second.get(second, 0) + rows
        for stage, places in counts.get("placement", {}).items():
            per_place = self.progress.placement.setdefault(stage, {})
            for place, count in places:
                per_place[place] = per_place.get(place, 0) + count
        for rule, count in counts.get("filters", {}).items():
            self.progress.filters[rule] = self.progress.filters.get(rule, 0) + count
        self.progress.filtered += counts.get("filtered", 0)
        for key, value in counts.get("engine", {}).items():
            self.progress.engine[key] = self.progress.engine.get(key, 0) + value
        self.progress.previews.extend(counts.get("previews", ())[:MAX_PREVIEWS - len(self.progress.previews)])
        for name, file in self._staged:
            self.pending[name].append(file)
        self._staged = []
        self._check_budget(final=False)
        if self.mode == "incremental" and self._due():
            self.commit_round()

    def _check_counts(self, shards: dict[str, list]) -> None:
        for shard, (good, bad, _) in shards.items():
            shard = int(shard)
            if shard not in self.expected:
                raise RowAccountingError(f"rows of shard {shard} arrived, but this run did not select it")
            have = sum(self.progress.per_shard.get(shard, [0, 0]))
            if have + good + bad > self.expected[shard]:
                raise RowAccountingError(
                    f"shard {shard}: {have + good + bad} rows arrived, its index declares {self.expected[shard]}: "
                    f"a write was repeated; nothing further is committed")

    def finished(self, shard: int) -> bool:
        return sum(self.progress.per_shard.get(shard, [0, 0])) == self.expected[shard]

    def _due(self) -> bool:
        files = sum(len(f) for f in self.pending.values())
        minutes = (time.monotonic() - self._last_commit) / 60
        return (self._finished_since_commit >= self.cadence.every_shards or files >= self.cadence.every_files
                or (files and minutes >= self.cadence.every_minutes))

    # -- budget and accounting ------------------------------------------------------------------
    def _check_budget(self, final: bool) -> None:
        bad = sum(q for _, q in self.progress.per_shard.values())
        total = sum(self.expected.values())
        # bad > fraction * total is already certain to fail: stop without waiting for the rest
        if total and bad > self.max_error_fraction * total:
            causes = "\n".join(f"  {count:6d} x {reason}" for reason, count in
                               sorted(self.progress.reasons.items(), key=lambda kv: -kv[1]))
            raise ErrorBudgetExceeded(
                f"{bad} of {total} samples failed ({bad / total:.2%}), over max_error_fraction="
                f"{self.max_error_fraction}{' so far' if not final else ''}; causes:\n{causes}\n"
                f"committed data is consistent: finished shards are in the ledger, `--resume` redoes the rest")

    def _check_complete(self) -> None:
        missing = {s: (sum(self.progress.per_shard.get(s, [0, 0])), n) for s, n in self.expected.items()
                   if not self.finished(s)}
        if missing:
            listed = ", ".join(f"shard {s}: {got} of {n}" for s, (got, n) in sorted(missing.items())[:10])
            raise RowAccountingError(f"{len(missing)} shard(s) did not produce every row ({listed}); "
                                     f"their rows are not committed")

    # -- committing -----------------------------------------------------------------------------
    def commit_round(self, replace_shards: Optional[list[int]] = None) -> None:
        self._rounds += 1
        if self._rounds == 1:
            # every table exists from the first round on, rows or none; one given files now is
            # created by that commit, so its first version holds them
            ensure_tables(self.output, {name: schema for name, schema in self.schemas.items()
                                        if not self.pending.get(name)}, self.format, self.table_properties)
        landed = None  # when the round's first table commit landed: readers see its rows from then
        for name in TABLES:
            files = self.pending[name]
            if not files and not replace_shards:
                continue
            if self.format == "delta":
                version = commit_files(storage.join(self.output, name), self.schemas[name], files,
                                       {"run_id": self.run_id, "round": self._rounds, **self.commit_metadata},
                                       replace_shards=replace_shards,
                                       properties=self.table_properties)
                if version is None:
                    continue
            landed = landed or time.time()
            progress = self.progress
            progress.commits[name] = progress.commits.get(name, 0) + 1
            progress.files[name] = progress.files.get(name, 0) + len(files)
            progress.rows[name] = progress.rows.get(name, 0) + sum(f["rows"] for f in files)
            self.pending[name] = []
        finished = [ledger.FinishedShard(s, *self.progress.per_shard[s]) for s in sorted(self.expected)
                    if s not in self.progress.ledgered and self.finished(s)]
        ledger.append(self.output, ledger.ledger_rows(self.run_id, finished, self.config_json), self.format,
                      f"run-{self.run_id}-{self._rounds:05d}")
        self.progress.ledgered.update(f.shard for f in finished)
        self.progress.commit_times.append(landed or time.time())
        self._finished_since_commit = 0
        self._last_commit = time.monotonic()

    def finish(self) -> None:
        """After the last write output: check the budget and the row accounting, then commit."""
        if self._staged:
            raise RowAccountingError("the write stage's last output had files but no counts")
        self._check_budget(final=True)
        self._check_complete()
        self.commit_round(replace_shards=sorted(self.expected) if self.mode == "replace" else None)


def remove_unfinished_rows(output: str, schemas: dict, run_id: str, shards: list[int]) -> dict[str, Optional[int]]:
    """`--resume`: rows that a crashed run committed for shards it never finished are removed
    (one transaction per table) before those shards are redone."""
    return {name: commit_files(storage.join(output, name), schemas[name], [],
                               {"run_id": run_id, "reason": "resume: remove rows of unfinished shards"},
                               replace_shards=shards) for name in TABLES}
