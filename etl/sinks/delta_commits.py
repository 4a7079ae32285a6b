"""Delta transactions over files that workers already wrote: append them, or replace the rows of
a set of shards with them, each in exactly one commit.

Replacing shards S: every active file whose `shard` stats range meets S is examined. A file with
only S rows is removed; a file mixing S rows with others (a write batch spans a few shards) is
rewritten without its S rows, keeping the other rows' values and `run_id`; the new files are
added. All of it is one `create_write_transaction`, so a reader sees the old rows of S or the
new ones, never both and never neither. Concurrent writers are safe on any store with
conditional PUTs (local files, S3, moto's server): delta-rs retries a commit that only raced
appends, while a replacement commits only on the snapshot it was planned on (any commit in
between, a compaction included, fails it with CommitFailedError) and is then planned again on
the new snapshot.
"""

import posixpath
import random
import time
import uuid
from typing import Any, Collection, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import storage
from etl.sinks.bucket_files import file_entry
from schemas.tables import PARTITION_COLUMN, SCHEMA_VERSION, storage_schema

_CONFLICT_RETRIES = 8


def open_table(uri: str):
    from deltalake import DeltaTable

    options = storage.delta_storage_options(uri)
    with storage.naming("opening", uri):
        return DeltaTable(uri, storage_options=options) if DeltaTable.is_deltatable(uri, options) else None


def table_description(name: str) -> str:
    return f"{name}: curation job table, schema version {SCHEMA_VERSION} (schemas/tables.py)"


def create_table(uri: str, delta_schema, adds: list, metadata: Optional[dict[str, Any]],
                 partition_by: Optional[list[str]], properties: Optional[dict[str, str]] = None) -> None:
    """A table's first commit, with `adds` (or none). Never retried: delta-rs retries a create
    that lost the race for version 0 as version 1, a second CREATE TABLE with a new table id
    (with 4 processes creating at once, 2 of 4 "succeeded"). Without retries the loser fails
    (CommitFailedError, or DeltaError "SaveMode `append` is not allowed for create operation")
    and can append to, or keep, the winner's table. `properties`: Delta table properties."""
    from deltalake import CommitProperties
    from deltalake.transaction import create_table_with_add_actions

    name = posixpath.basename(uri.rstrip("/"))
    create_table_with_add_actions(uri, delta_schema, adds, mode="append", partition_by=partition_by, name=name,
                                  description=table_description(name), configuration=properties,
                                  storage_options=storage.delta_storage_options(uri),
                                  commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=0))


def files_meeting(table, shards: Collection[int]) -> list[dict[str, Any]]:
    """Active files whose shard range holds at least one of `shards` (or that have no stats)."""
    wanted = np.array(sorted(set(shards)), dtype=np.int64)
    if not len(wanted):
        return []
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    found = []
    for action in actions:
        low, high = action.get("min.shard"), action.get("max.shard")
        if low is not None and high is not None:
            at = int(np.searchsorted(wanted, low))
            if at == len(wanted) or wanted[at] > high:
                continue
        found.append(action)
    return found


def _add_action(file: dict[str, Any]):
    from deltalake.transaction import AddAction

    return AddAction(path=file["path"], size=file["size"], partition_values={PARTITION_COLUMN: str(file["bucket"])},
                     modification_time=file["modification_time"], data_change=True, stats=file["stats"])


def _plan_replacement(uri: str, table, shards: Collection[int], tag: str,
                      own: set[str]) -> tuple[list, list[dict[str, Any]]]:
    """Remove actions for every file holding rows of `shards`, and the rewritten remainders.
    Files in `own` (this commit's adds) are never removed: if an earlier attempt of this commit
    landed but its response was lost, the retry finds them live and re-adds them, which leaves
    the snapshot unchanged (Delta keys files by path)."""
    from deltalake.transaction import RemoveAction

    fs, root = storage.resolve(uri)
    wanted = pa.array(sorted(set(shards)), pa.int64())
    removes, rewritten = [], []
    now = int(time.time() * 1000)
    for action in files_meeting(table, shards):
        path = action["path"]
        if path in own:
            continue
        data, _ = storage.read_file(fs, storage.join(root, path))
        # the shard column decides; the whole file is decoded only when it must be rewritten
        hit = pc.is_in(pq.read_table(pa.BufferReader(data), columns=["shard"]).column("shard"), value_set=wanted)
        hits = pc.sum(hit).as_py() or 0
        if not hits:
            continue
        bucket = action.get(f"partition.{PARTITION_COLUMN}")
        removes.append(RemoveAction(path=path, data_change=True, deletion_timestamp=now, size=action["size_bytes"],
                                    partition_values={PARTITION_COLUMN: None if bucket is None else str(bucket)}))
        if hits < len(hit):
            keep = pq.read_table(pa.BufferReader(data)).filter(pc.invert(hit))
            kept_path = f"{PARTITION_COLUMN}={bucket}/part-{tag}-keep-{uuid.uuid4().hex[:8]}.parquet"
            rewritten.append(file_entry(fs, root, kept_path, keep, bucket))
    return removes, rewritten


def commit_files(uri: str, schema: pa.Schema, files: list[dict[str, Any]], metadata: dict[str, Any], *,
                 replace_shards: Optional[Collection[int]] = None,
                 properties: Optional[dict[str, str]] = None) -> Optional[int]:
    """Add `files` to the Delta table at `uri` (created on first commit, with the table
    `properties`) in one transaction; with `replace_shards`, the same transaction first removes
    every existing row of those shards. Returns the new version, or None when there was nothing
    to do."""
    with storage.naming("committing to", uri):
        return _commit_files(uri, schema, files, metadata, replace_shards, properties)


def _commit_files(uri: str, schema: pa.Schema, files: list[dict[str, Any]], metadata: dict[str, Any],
                  replace_shards: Optional[Collection[int]], properties: Optional[dict[str, str]]) -> Optional[int]:
    from deltalake import Schema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import CommitProperties

    delta_schema = Schema.from_arrow(storage_schema(schema))
    adds = [_add_action(f) for f in files]
    tag = f"{metadata.get('run_id', 'commit')}-{uuid.uuid4().hex[:6]}"
    for attempt in range(_CONFLICT_RETRIES):
        table = open_table(uri)
        try:
            if table is None:
                if not adds:
                    return None
                create_table(uri, delta_schema, adds, {**metadata, "files": len(adds)}, [PARTITION_COLUMN], properties)
                return open_table(uri).version()
            removes: list = []
            rewritten: list[dict[str, Any]] = []
            if replace_shards:
                removes, rewritten = _plan_replacement(uri, table, replace_shards, tag, {f["path"] for f in files})
            actions = removes + [_add_action(f) for f in rewritten] + adds
            if not actions:
                return None
            # A replacement lands only on the snapshot it was planned on. delta-rs would rebase it
            # onto a newer one, and its conflict check ignores removes that change no data: a
            # replacement planned before a compaction (sink.maintenance, jobs.maintain) committed
            # after it, its removes of the compacted-away files did nothing, and the shards' old
            # rows stayed beside the new ones. With no retry, any commit in between fails it
            # here, and it is planned again on the new snapshot.
            properties = CommitProperties(custom_metadata={
                **metadata, "files": len(adds), "removed_files": len(removes), "rewritten_files": len(rewritten)},
                max_commit_retries=0 if removes else None)
            table.create_write_transaction(actions, mode="append", schema=delta_schema,
                                           partition_by=[PARTITION_COLUMN], commit_properties=properties)
            table.update_incremental()
            return table.version()
        except (CommitFailedError, DeltaError) as exc:
            # The rewritten files are left in place: a commit whose response was lost may have
            # landed and reference them. Unreferenced ones are removed by VACUUM.
            if attempt == _CONFLICT_RETRIES - 1 or not _is_conflict(exc, table is None and open_table(uri) is not None):
                raise
            time.sleep(random.uniform(0.05, 0.5) * (attempt + 1))  # jitter: racing writers spread out
    raise AssertionError("unreachable")


def _is_conflict(exc: Exception, created_by_another: bool) -> bool:
    from deltalake.exceptions import CommitFailedError

    # Another writer created the table between our look and our create: the next attempt appends
    # to it. delta-rs words that failure by save mode ("SaveMode `append` is not allowed for
    # create operation"), not as a conflict, so the table's existence decides.
    return isinstance(exc, CommitFailedError) or created_by_another


class TableMoved(RuntimeError):
    """A table was committed to after the version a whole-table replacement was computed from."""


def overwrite_files(uri: str, schema: pa.Schema, files: list[dict[str, Any]], metadata: dict[str, Any],
                    read_version: Optional[int]) -> int:
    """Replace every row of the table at `uri` with `files`, in one transaction that lands only
    on `read_version`: the version the new rows were derived from (None: the table did not
    exist). Any commit in between raises TableMoved, since the new rows no longer account for
    it. Returns the new version."""
    from deltalake import Schema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import CommitProperties, RemoveAction

    with storage.naming("replacing the rows of", uri):
        delta_schema = Schema.from_arrow(storage_schema(schema))
        adds = [_add_action(f) for f in files]
        table = open_table(uri)
        try:
            if table is None and read_version is None:
                create_table(uri, delta_schema, adds, {**metadata, "files": len(adds)}, [PARTITION_COLUMN])
                return 0
            if table is None:
                raise TableMoved(f"{uri} no longer exists (it was at version {read_version})")
            if read_version is None:
                raise TableMoved(f"{uri} was created by another writer meanwhile")
            table.load_as_version(read_version)
            now = int(time.time() * 1000)
            removes = [RemoveAction(path=a["path"], data_change=True, deletion_timestamp=now, size=a["size_bytes"],
                                    partition_values={PARTITION_COLUMN: str(a[f"partition.{PARTITION_COLUMN}"])})
                       for a in pa.table(table.get_add_actions(flatten=True)).to_pylist()]
            table.create_write_transaction(removes + adds, mode="append", schema=delta_schema,
                                           partition_by=[PARTITION_COLUMN], commit_properties=CommitProperties(
                                               custom_metadata={**metadata, "files": len(adds),
                                                                "removed_files": len(removes)},
                                               max_commit_retries=0))
            return read_version + 1
        except (CommitFailedError, DeltaError) as exc:
            if isinstance(exc, CommitFailedError) or (read_version is None and open_table(uri) is not None):
                raise TableMoved(f"{uri} was committed to after version {read_version}: {exc}") from None
            raise
