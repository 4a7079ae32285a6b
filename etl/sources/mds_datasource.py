"""`MDSDatasource`: MDS shards as a Ray Data source.

The driver reads index.json once, at construction. `get_read_tasks` only groups the selected
shards (it is called several times per execution, so it stays cheap and pure). Each read task
holds at most `shards_per_task` consecutive shards and yields blocks of about `block_bytes` as
it decodes, so a task never holds more than one shard's bytes. Each task's `size_bytes` is the
decoded size. Cells of broken samples are null (tensor cells too, which numpy cannot hold):
split rows with `mds_error` off before converting tensor columns.
"""

import functools
from typing import Iterator, Literal, Optional, Sequence

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
from etl.mds.hashing import check_hash_names
from etl.mds.reader import DEFAULT_BLOCK_BYTES
from etl.mds.shard import output_schema
from etl.sources.shard_selection import ShardSpec, group_shards, select_shards

PROVENANCE = (pa.field("shard", pa.int64()), pa.field("row", pa.int64()))
OnBadShard = Literal["raise", "quarantine"]
_ROW_OVERHEAD_BYTES = 64  # provenance, offsets and validity per row


def estimate_decoded_bytes(entry: ShardEntry, columns: Sequence[str]) -> int:
    """Bytes of the Arrow table a shard decodes to: the uncompressed payload (images stay
    encoded) minus fixed-width columns not selected, plus per-row bookkeeping."""
    unselected_fixed = sum(size or 0 for name, size in zip(entry.column_names, entry.column_sizes)
                           if name not in columns)
    payload = entry.raw_data.bytes - entry.samples * unselected_fixed
    return max(payload, 0) + entry.samples * (_ROW_OVERHEAD_BYTES + 8 * len(columns))


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
        shards: "A:B", a list of shard indices, or None for all.
        columns: columns to read (default: all). Output adds `shard`, `row` and `mds_error`.
        verify_hashes: hash algorithms to verify for every shard read (must be in the index).
        allow_pickle: read `pkl` columns (as the pickle bytes; nothing is unpickled).
        shards_per_task: most shards one read task holds.
        max_bytes_per_task: do not group shards past this decoded size (one big shard still
            gets its own task).
        on_bad_shard: "raise" fails the read on a corrupt/missing shard; "quarantine" turns each
            of its samples into a row whose `mds_error` names the shard and the problem.
        block_bytes: size of the blocks a shard is decoded into (see DEFAULT_BLOCK_BYTES).
        max_image_pixels: if set, jpeg/png cells (and frames of image lists) whose header is
            unreadable or claims more pixels become errors, checked without decoding pixels.
    """

    def __init__(
        self,
        uri: str,
        *,
        shards: ShardSpec = None,
        columns: Optional[Sequence[str]] = None,
        verify_hashes: Sequence[str] = (),
        allow_pickle: bool = False,
        shards_per_task: int = 2,
        max_bytes_per_task: Optional[int] = 256 << 20,
        on_bad_shard: OnBadShard = "raise",
        block_bytes: Optional[int] = DEFAULT_BLOCK_BYTES,
        max_image_pixels: Optional[int] = None,
        filesystem: Optional[pafs.FileSystem] = None,
    ):
        super().__init__()
        if on_bad_shard not in ("raise", "quarantine"):
            raise ValueError(f"on_bad_shard={on_bad_shard!r}; allowed: 'raise', 'quarantine'")
        if shards_per_task < 1:
            raise ValueError(f"shards_per_task must be >= 1, got {shards_per_task}")
        self._fs, self._root = storage.resolve(uri, filesystem)
        self._uri = storage.display(self._fs, self._root)
        all_entries = load_index(self._fs, self._root)
        self._entries = [all_entries[i] for i in select_shards(shards, len(all_entries))]
        self._columns = self._choose_columns(columns, allow_pickle)
        self._verify_hashes = check_hash_names(verify_hashes)
        self._shards_per_task = shards_per_task
        self._max_bytes_per_task = max_bytes_per_task
        self._on_bad_shard = on_bad_shard
        self._block_bytes = block_bytes
        self._max_image_pixels = max_image_pixels
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

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return sum(estimate_decoded_bytes(e, self._columns) for e in self._entries)

    def num_read_tasks(self) -> int:
        """How many read tasks `get_read_tasks` returns: pass it as `override_num_blocks` so Ray
        does not slice each task's blocks further (slices of one block, moved between tasks,
        are serialized with the whole block's buffers)."""
        sizes = [estimate_decoded_bytes(e, self._columns) for e in self._entries]
        return len(group_shards(sizes, self._shards_per_task, self._max_bytes_per_task))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> list[ReadTask]:
        # Shards are never split, so `parallelism` above the shard count has no effect; below it,
        # groups stay bounded anyway and Ray runs only as many tasks as fit.
        sizes = [estimate_decoded_bytes(e, self._columns) for e in self._entries]
        tasks = []
        for group in group_shards(sizes, self._shards_per_task, self._max_bytes_per_task):
            entries = [self._entries[i] for i in group]
            metadata = BlockMetadata(
                num_rows=sum(e.samples for e in entries),
                size_bytes=sum(sizes[i] for i in group),
                input_files=[storage.display(self._fs, storage.join(self._root, e.stored.basename))
                             for e in entries],
                exec_stats=None,
            )
            read_fn = functools.partial(
                _read_group, self._fs, self._root, entries, self._columns, self._verify_hashes,
                self._on_bad_shard, self._block_bytes, self._max_image_pixels, self._schema)
            tasks.append(ReadTask(read_fn, metadata, schema=self._schema,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
