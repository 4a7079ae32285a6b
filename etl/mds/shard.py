"""Decode one uncompressed `.mds` shard file into Arrow tables (row blocks), column by column.

Layout (MDS_FORMAT.md): u32 N, u32 offsets[N+1], config JSON, then the samples. A sample is one
u32 size per variable-size column followed by every column's payload in column order. We check
the header against the file and the index, locate every column of every sample with numpy, and
hand each selected column's byte ranges to its encoding. Shard-level damage raises `MDSError`;
a malformed sample only nulls its cells and names the problem in the `mds_error` column.
"""

from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from etl.mds.encodings import Segments, get_encoding
from etl.mds.errors import MDSError
from etl.mds.image_headers import image_limit_problems
from etl.mds.index import ShardEntry

ERROR_COLUMN = "mds_error"


def _null_where(array: pa.Array, mask: np.ndarray) -> pa.Array:
    if not mask.any():
        return array
    if isinstance(array.type, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(array.type, _null_where(array.storage, mask))
    import pyarrow.compute as pc

    return pc.if_else(pa.array(~mask), array, pa.scalar(None, array.type))


def read_header(u8: np.ndarray, entry: ShardEntry, where: str) -> np.ndarray:
    """Validate the header against the file and index; return the N+1 offsets as int64."""
    size = len(u8)
    if size < 4:
        raise MDSError(where, f"file is {size} bytes, too short for a sample count")
    count = int(u8[:4].view("<u4")[0])
    if count != entry.samples:
        raise MDSError(where, f"file holds {count} samples but index.json says {entry.samples}")
    table_end = 4 * (count + 2)
    if size < table_end:
        raise MDSError(where, f"file is {size} bytes, too short for its {count + 1} offsets "
                              f"(truncated?)")
    offsets = u8[4:table_end].view("<u4").astype(np.int64)
    if offsets[0] < table_end:
        raise MDSError(where, f"first sample offset {offsets[0]} points inside the header, which "
                              f"ends at byte {table_end}")
    steps = np.diff(offsets)
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0])
        raise MDSError(where, f"offsets are not increasing: sample {i} starts at {offsets[i]}, "
                              f"sample {i + 1} at {offsets[i + 1]}")
    if offsets[-1] != size:
        raise MDSError(where, f"offsets end at byte {offsets[-1]} but the file is {size} bytes "
                              "(truncated, padded or a lying offset table)")
    return offsets


class ShardLayout:
    """Where every column of every sample of one shard lies, computed once with numpy."""

    def __init__(self, data: pa.Buffer, entry: ShardEntry, where: str,
                 max_image_pixels: Optional[int] = None):
        self.max_image_pixels = max_image_pixels
        u8 = np.frombuffer(data, dtype=np.uint8)
        offsets = read_header(u8, entry, where)
        rows = entry.samples
        starts, lengths = offsets[:-1], np.diff(offsets)
        fixed = np.array([s if s is not None else -1 for s in entry.column_sizes], dtype=np.int64)
        variable = np.flatnonzero(fixed < 0)
        head = 4 * len(variable)

        bad = lengths < head
        sizes = np.tile(fixed, (rows, 1))
        if len(variable) and rows:
            at = np.where(bad, 0, starts)[:, None] + 4 * np.arange(len(variable))
            raw = u8[np.minimum(at[:, :, None] + np.arange(4), len(u8) - 1)]
            sizes[:, variable] = np.ascontiguousarray(raw).view("<u4")[:, :, 0]
        sizes[bad] = 0
        bad |= head + sizes.sum(axis=1) != lengths
        sizes[bad] = np.where(fixed < 0, 0, fixed)
        self.data, self.entry = data, entry
        self.sizes, self.bad, self.fixed = sizes, bad, fixed
        self.column_starts = starts[:, None] + head + np.cumsum(sizes, axis=1) - sizes
        self.first_bad_length = int(lengths[bad][0]) if bad.any() else 0
        # Cells of broken samples point at zeros (fixed width) or at nothing (variable width).
        self.zeros = pa.py_buffer(np.zeros(max(int(fixed.max(initial=0)), 1), np.uint8))

    def blocks(self, columns: Sequence[str], block_bytes: Optional[int]) -> list[tuple[int, int]]:
        """Row ranges whose selected columns hold about `block_bytes` each (one range if None)."""
        rows = self.entry.samples
        if block_bytes is None or rows == 0:
            return [(0, rows)]
        picked = [self.entry.column_names.index(c) for c in columns]
        cumulative = np.cumsum(self.sizes[:, picked].sum(axis=1))
        cuts = np.searchsorted(cumulative, np.arange(block_bytes, cumulative[-1], block_bytes), side="right")
        bounds = sorted(set([0, *cuts.tolist(), rows]))
        return list(zip(bounds[:-1], bounds[1:]))

    def decode(self, columns: Sequence[str], first: int, stop: int) -> pa.Table:
        entry, bad = self.entry, self.bad[first:stop]
        rows = stop - first
        errors = np.full(rows, None, dtype=object)

        def note(mask: np.ndarray, message: str) -> None:
            for i in np.flatnonzero(mask):
                errors[i] = message if errors[i] is None else f"{errors[i]}; {message}"

        if bad.any():
            note(bad, f"sample's column sizes do not add up to its bytes (first bad sample "
                      f"of the shard is {self.first_bad_length} bytes)")
        arrays = {}
        for name in columns:
            j = entry.column_names.index(name)
            col_starts = np.where(bad, 0, self.column_starts[first:stop, j])
            which = bad.astype(np.int64) if self.fixed[j] >= 0 else None
            seg = Segments([self.data, self.zeros], col_starts, self.sizes[first:stop, j], which)
            encoding = get_encoding(entry.column_encodings[j])
            array, problems = encoding.decode(seg)
            if self.max_image_pixels is not None and encoding.image_files:
                problems = problems + image_limit_problems(array, self.max_image_pixels)
            column_bad = bad.copy()
            for mask, message in problems:
                mask = mask & ~bad
                note(mask, f"column {name!r}: {message}")
                column_bad |= mask
            arrays[name] = _null_where(array, column_bad)
        arrays[ERROR_COLUMN] = pa.array(errors, type=pa.string())
        return pa.table(arrays)


def decode_shard(
    data: pa.Buffer,
    entry: ShardEntry,
    columns: Sequence[str],
    where: str,
    block_bytes: Optional[int] = None,
    max_image_pixels: Optional[int] = None,
) -> Iterator[tuple[int, pa.Table]]:
    """Decode `columns` of a whole shard as (first row, table) blocks of about `block_bytes`.

    Tables never reference `data`, but `data` must stay valid until the generator finishes.
    Each table has `mds_error` (null for good rows). Raises MDSError for a damaged shard. With
    `max_image_pixels`, image cells whose header is unreadable or claims more pixels are errors.
    """
    layout = ShardLayout(data, entry, where, max_image_pixels)
    for first, stop in layout.blocks(columns, block_bytes):
        yield first, layout.decode(columns, first, stop)


def output_schema(entry: ShardEntry, columns: Sequence[str],
                  extra: Optional[Sequence[pa.Field]] = None) -> pa.Schema:
    fields = list(extra or [])
    fields += [pa.field(name, entry.encoding(name).arrow_type) for name in columns]
    fields.append(pa.field(ERROR_COLUMN, pa.string()))
    return pa.schema(fields)
