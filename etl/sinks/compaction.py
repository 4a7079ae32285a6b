"""Compaction of a Delta table's small files, safe beside concurrent writers.

Not delta-rs's OPTIMIZE: its conflict check lets two compactions that removed the same files
both commit (`dataChange=false` removes are not checked against each other, delta-rs PR #3982),
and it does not honour `max_commit_retries=0`. Two backfills maintaining the same table at
once left every row twice (tests/test_recovery.py, version 18: 188 rows, 94 ids; 4 files
compacted twice from one snapshot: 16 rows for 8).

Here each bucket's (partition's) small files, in their order of arrival, are packed greedily
into files of up to the target size (files never merge across buckets; a compacted file covers a run of
neighbouring shards, so a later shard-range backfill rewrites few files). The removes and adds
(`dataChange=false`: the same rows, values and `run_id`) are one transaction that lands only on
the version it was planned on. When another commit got there first, the log entries in between
decide:
- one of them holds our adds: our commit landed and only its answer was lost;
- none removed a file we remove (appends, another bucket's changes): the same actions are
  committed on the new version, with no rewrite;
- one removed a file we remove (another compaction, a backfill): our files are deleted, never
  having been referenced, and the compaction is planned again on the new snapshot.
"""

import json
import posixpath
import uuid
from urllib.parse import unquote
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl import storage
from etl.sinks.bucket_files import file_entry
from schemas.tables import PARTITION_COLUMN

_ATTEMPTS = 6
# Bins rewritten at once: each holds up to the target size decoded, plus its encoded copy.
_PARALLEL_BINS = 2


@dataclass
class Compaction:
    """What one compaction committed (`version` None: nothing to compact)."""

    files_removed: int = 0
    files_added: int = 0
    version: Any = None
    attempts: int = 0
    replans: int = 0
    written: list = field(default_factory=list)  # paths of the compacted files


def compact(uri: str, table, target_bytes: int) -> Compaction:
    """Pack the small files of every bucket of the table at `uri` (a DeltaTable, updated in place)
    into files of about `target_bytes`. Raises CommitFailedError when every attempt lost its race."""
    from deltalake.exceptions import CommitFailedError

    done = Compaction()
    for _ in range(_ATTEMPTS):
        bins = plan_bins(table, target_bytes)
        if not bins:
            return done
        removes, adds, written = _rewrite(uri, bins)
        if _commit_until_removed_elsewhere(uri, table, removes, adds, done) == "landed":
            done.written, done.files_removed, done.files_added = written, len(removes), len(adds)
            return done
        _delete_unreferenced(uri, written)
        done.replans += 1
        table.update_incremental()
    raise CommitFailedError(f"compacting {uri}: {_ATTEMPTS} plans in a row lost to concurrent commits "
                            "that removed the same files")


def plan_bins(table, target_bytes: int) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """(partition values, files) for each run of at least two files below `target_bytes` that
    together stay within it, in each partition's order of arrival (an unpartitioned table, like
    the runs ledger, is one partition)."""
    columns = table.metadata().partition_columns
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    by_partition: dict[tuple, list[dict[str, Any]]] = {}
    for action in actions:
        if action["size_bytes"] < target_bytes:
            key = tuple(str(action[f"partition.{column}"]) for column in columns)
            by_partition.setdefault(key, []).append(action)
    bins = []
    for key, files in sorted(by_partition.items()):
        files.sort(key=lambda a: (a["modification_time"], a["path"]))
        current, size = [], 0
        for action in files:
            if current and size + action["size_bytes"] > target_bytes:
                bins.append((dict(zip(columns, key)), current))
                current, size = [], 0
            current.append(action)
            size += action["size_bytes"]
        bins.append((dict(zip(columns, key)), current))
    return [(partition, files) for partition, files in bins if len(files) > 1]


def _rewrite(uri: str, bins) -> tuple[list, list, list[str]]:
    """Write each bin's rows as one file, a few bins at once (Parquet decode and encode release
    the GIL); the remove and add actions that swap them in."""
    from concurrent.futures import ThreadPoolExecutor

    tag = uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(max_workers=_PARALLEL_BINS) as pool:
        swaps = list(pool.map(lambda job: _rewrite_bin(uri, f"{tag}-{job[0]}", *job[1]), enumerate(bins)))
    removes = [remove for bin_removes, _ in swaps for remove in bin_removes]
    adds = [add for _, add in swaps]
    return removes, adds, [add.path for add in adds]


def _rewrite_bin(uri: str, name: str, partition: dict[str, str], files: list[dict[str, Any]]) -> tuple[list, Any]:
    from deltalake.transaction import AddAction, RemoveAction

    fs, root = storage.resolve(uri)
    parts = [pq.read_table(pa.BufferReader(storage.read_file(fs, storage.join(root, a["path"]))[0])) for a in files]
    rows = pa.concat_tables(parts, promote_options="default")  # files from older schema versions too
    folder = "/".join(f"{column}={value}" for column, value in partition.items())
    entry = file_entry(fs, root, posixpath.join(folder, f"part-compacted-{name}.parquet"), rows,
                       partition.get(PARTITION_COLUMN))
    add = AddAction(path=entry["path"], size=entry["size"], partition_values=partition,
                    modification_time=entry["modification_time"], data_change=False, stats=entry["stats"])
    removes = [RemoveAction(path=a["path"], data_change=False, deletion_timestamp=entry["modification_time"],
                            size=a["size_bytes"], partition_values=partition) for a in files]
    return removes, add


def _commit_until_removed_elsewhere(uri: str, table, removes: list, adds: list, done: Compaction) -> str:
    """Commit on the table's version; "landed", or "replan" once another commit removed one of
    our files."""
    from deltalake import CommitProperties
    from deltalake.exceptions import CommitFailedError

    ours_removed, ours_added = {r.path for r in removes}, {a.path for a in adds}
    for _ in range(_ATTEMPTS * 4):  # appends alone: a busy table commits every few seconds
        planned = table.version()
        done.attempts += 1
        try:
            table.create_write_transaction(
                removes + adds, mode="append", schema=table.schema(),
                partition_by=table.metadata().partition_columns or None,
                commit_properties=CommitProperties(max_commit_retries=0, custom_metadata={
                    "maintenance": "compaction", "removed_files": len(removes), "files": len(adds)}))
        except CommitFailedError:
            checked, since = log_actions_after(uri, planned)
            if not ours_added & since["add"]:  # else our commit landed: only its answer was lost
                if ours_removed & since["remove"]:
                    return "replan"
                # exactly the versions checked: a commit landing after the check is checked next time
                table.load_as_version(checked)
                continue
        table.update_incremental()  # landed (or found landed: only its answer was lost)
        done.version = table.version()
        return "landed"
    return "replan"


def log_actions_after(uri: str, version: int) -> tuple[int, dict[str, set[str]]]:
    """(the last version found, paths added and removed by the table's log entries after
    `version`), read entry by entry (never a listing of the whole log). The JSON entries are kept
    for 30 days, far longer than a compaction's race."""
    fs, root = storage.resolve(uri)
    found: dict[str, set[str]] = {"add": set(), "remove": set()}
    while True:
        try:
            data, _ = storage.read_file(fs, storage.join(root, "_delta_log", f"{version + 1:020d}.json"))
        except FileNotFoundError:
            return version, found
        version += 1
        for line in data.to_pybytes().splitlines():
            action = json.loads(line) if line.strip() else {}
            for kind in found:
                if kind in action:
                    found[kind].add(unquote(action[kind]["path"]))


def _delete_unreferenced(uri: str, paths: list[str]) -> None:
    """Files no log entry ever referenced (checked just before): no reader can need them."""
    fs, root = storage.resolve(uri)
    for path in paths:
        try:
            fs.delete_file(storage.join(root, path))
        except OSError:
            pass  # left behind costs only storage
