"""`MDSDatasource`: MDS shards as a Ray Data source.

The driver reads index.json once (or is handed the index it already read), at construction,
and derives the read tasks there (`ReadTasks`). `get_read_tasks` only builds them (it is called
several times per execution, so it stays cheap and pure). Each read task
holds at most `shards_per_task` consecutive shards and yields blocks of about `block_bytes` as
it decodes, so a task never holds more than one shard's bytes. Each task's `size_bytes` is the
decoded size. Cells of broken samples are null (tensor cells too, which numpy cannot hold):
split rows with `mds_error` off before converting tensor columns.
"""

import functools
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from etl import storage
from etl.cpu_cores import keep_off_engine_cores
from etl.mds import (
    ERROR_COLUMN, MDSError, ShardEntry, ShardReader, UnsafeEncodingError, get_encoding, load_index,
)
from etl.mds.shard import output_schema
from etl.sources.read_options import OnBadShard, ReadOptions
from etl.sources.read_tasks import ReadTasks
from etl.sources.shard_selection import select_shards

PROVENANCE = (pa.field("shard", pa.int64()), pa.field("row", pa.int64()))


def _quarantined(entry: ShardEntry, problem: str, schema: pa.Schema) -> pa.Table:
    """The whole shard is unreadable: one error row per sample the index declares."""
    table = pa.table({field.name: pa.nulls(entry.samples, field.type)
                      for field in schema if field.name not in ("shard", "row")})
    return table.set_column(table.schema.get_field_index(ERROR_COLUMN), ERROR_COLUMN,
                            pa.array([f"unreadable shard: {problem}"] * entry.samples, pa.string()))


def _read_group(
    fs: pafs.FileSystem, root: str, entries: list[ShardEntry], columns: list[str],
    verify_hashes: tuple[str, ...], on_bad_shard: OnBadShard, block_bytes: Optional[int],
    max_image_pixels: Optional[int], schema: pa.Schema,
) -> Iterator[pa.Table]:
    keep_off_engine_cores()
    reader = ShardReader(fs, root, verify_hashes, max_image_pixels)
    for entry in entries:
        blocks = reader.read_blocks(entry, columns, block_bytes)
        try:
            # Every shard-level check (size, hashes, decompression, header, offsets) runs before
            # the first block comes out, so a damaged shard is never half-emitted.
            first = next(blocks)
        except MDSError as exc:
            if on_bad_shard == "raise":
                raise
            yield _with_provenance(entry, 0, _quarantined(entry, str(exc), schema), schema)
            continue
        yield _with_provenance(entry, *first, schema)
        for block in blocks:
            yield _with_provenance(entry, *block, schema)


def _with_provenance(entry: ShardEntry, first: int, table: pa.Table, schema: pa.Schema) -> pa.Table:
    rows = table.num_rows
    table = table.add_column(0, "row", pa.array(np.arange(first, first + rows, dtype=np.int64)))
    table = table.add_column(0, "shard", pa.array(np.full(rows, entry.index, dtype=np.int64)))
    return table.cast(schema)


class MDSDatasource(Datasource):
    """Read an MDS dataset (local path or s3://) into rows of encoded bytes plus provenance.

    Args:
        uri: dataset root holding index.json (a merged index with sub-folders is fine).
        options: what to read and how (`ReadOptions`).
        index: the dataset's shard entries, when the caller has already read index.json.
        filesystem: a pyarrow filesystem for `uri` (default: resolved from it).
    """

    def __init__(self, uri: str, options: ReadOptions = ReadOptions(), *,
                 index: Optional[Sequence[ShardEntry]] = None, filesystem: Optional[pafs.FileSystem] = None):
        super().__init__()
        self._fs, self._root = storage.resolve(uri, filesystem)
        self._uri = storage.display(self._fs, self._root)
        self._options = options
        all_entries = list(index) if index is not None else load_index(self._fs, self._root)
        self._entries = [all_entries[i] for i in select_shards(options.shards, len(all_entries))]
        self._columns = self._choose_columns(options.columns, options.allow_pickle)
        self._tasks = ReadTasks.of_entries(self._entries, self._columns, options.shards_per_task,
                                           options.max_bytes_per_task)
        reference = self._entries[0] if self._entries else None
        self._schema = (output_schema(reference, self._columns, PROVENANCE) if reference
                        else pa.schema([*PROVENANCE, pa.field(ERROR_COLUMN, pa.string())]))

    def _choose_columns(self, columns: Optional[Sequence[str]], allow_pickle: bool) -> list[str]:
        if not self._entries:
            if columns:
                raise ValueError(f"{self._uri}: no shards selected, cannot read columns {list(columns)}")
            return []
        first = self._entries[0]
        chosen = list(first.column_names) if columns is None else list(columns)
        reserved = {f.name for f in PROVENANCE} | {ERROR_COLUMN}
        clash = sorted(reserved & set(chosen))
        if clash:
            raise ValueError(f"{self._uri}: column(s) {clash} collide with the columns read_mds "
                             "adds (shard, row, mds_error); select other columns")
        for entry in self._entries:
            have = dict(zip(entry.column_names, entry.column_encodings))
            for name in chosen:
                if name not in have:
                    raise ValueError(f"{self._uri}: shard {entry.index} has no column {name!r}; "
                                     f"its columns are {sorted(have)}")
                if have[name] != dict(zip(first.column_names, first.column_encodings))[name]:
                    raise MDSError(self._uri, f"column {name!r} is {have[name]!r} in shard "
                                              f"{entry.index} but differs in shard {first.index}")
                if not get_encoding(have[name]).safe and not allow_pickle:
                    raise UnsafeEncodingError(
                        self._uri, f"column {name!r} is pickled (pkl): unpickling runs arbitrary "
                                   "code. Pass allow_pickle=True to read its bytes, or leave it out of columns")
        return chosen

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def entries(self) -> list[ShardEntry]:
        return list(self._entries)

    def get_name(self) -> str:
        return "MDS"

    @property
    def read_tasks(self) -> ReadTasks:
        return self._tasks

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return sum(self._tasks.sizes)

    def num_read_tasks(self) -> int:
        """How many read tasks `get_read_tasks` returns: `read_mds` passes it as
        `override_num_blocks` so Ray does not slice each task's blocks further (slices of one
        block, moved between tasks, are serialized with the whole block's buffers)."""
        return len(self._tasks)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> list[ReadTask]:
        # Shards are never split, so `parallelism` above the shard count has no effect; below it,
        # groups stay bounded anyway and Ray runs only as many tasks as fit.
        options, tasks = self._options, []
        for group in self._tasks.groups:
            entries = [self._entries[i] for i in group]
            metadata = BlockMetadata(
                num_rows=sum(e.samples for e in entries),
                size_bytes=self._tasks.task_bytes(group),
                input_files=[storage.display(self._fs, storage.join(self._root, e.stored.basename))
                             for e in entries],
                exec_stats=None,
            )
            read_fn = functools.partial(
                _read_group, self._fs, self._root, entries, self._columns, options.verify_hashes,
                options.on_bad_shard, options.block_bytes, options.max_image_pixels, self._schema)
            tasks.append(ReadTask(read_fn, metadata, schema=self._schema,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
