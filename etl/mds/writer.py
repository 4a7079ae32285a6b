"""Write MDS shards and index.json that the reference reader (mosaicml-streaming) reads as-is.

`MDSWriter` is a context manager like the reference's: shards are flushed as they fill, and
index.json is written last, only when the block exits cleanly, so a failed write never leaves an
index that points at missing shards. Encoding is columnar: each column's payloads are described
as byte ranges (`Pieces`) of the input Arrow buffers, and a shard file is assembled from its
header plus those ranges by a single copy (`concat_segments`).
"""

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from etl import storage
from etl.mds.compression import parse_compression
from etl.mds.encodings import EncodingError, Pieces, _python_values, get_encoding
from etl.mds.hashing import check_hash_names, hexdigest
from etl.mds.index import INDEX_BASENAME, check_basename, index_json
from etl.mds.segments import concat_segments

DEFAULT_SIZE_LIMIT = 1 << 26
_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}


def parse_size_limit(value: Union[int, str, None]) -> Optional[int]:
    """None, bytes as an int, or text like "64mb" (1024-based, as the reference reads it)."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([kmg]?b)?\s*", value.lower())
        if not match:
            raise ValueError(f"size_limit {value!r}: use bytes or a number with kb/mb/gb")
        value = int(match.group(1)) * _UNITS[match.group(2) or "b"]
    if not isinstance(value, int) or not 0 < value < (1 << 32):
        raise ValueError(f"size_limit must be between 1 and 2**32 - 1 bytes (offsets are u32), got {value!r}")
    return value


@dataclass(frozen=True)
class WriterOptions:
    """Validated, normalised writer settings (columns sorted by name, as the reference does)."""

    column_names: list[str]
    column_encodings: list[str]
    encodings: list
    compression: Optional[str]
    hashes: list[str]
    size_limit: Optional[int]


def writer_options(columns: Mapping[str, str], compression: Optional[str] = None, hashes: Sequence[str] = (),
                   size_limit: Union[int, str, None] = DEFAULT_SIZE_LIMIT) -> WriterOptions:
    """Check every writer setting up front; errors name the column and the allowed values."""
    if not columns:
        raise ValueError("columns must map at least one column name to an MDS encoding")
    names = sorted(columns)
    encodings = []
    for name in names:
        try:
            encodings.append(get_encoding(columns[name]))
        except ValueError as exc:
            raise ValueError(f"column {name!r}: {exc}") from None
    parse_compression(compression or None)
    return WriterOptions(names, [columns[n] for n in names], encodings, compression or None,
                         sorted(set(check_hash_names(hashes))), parse_size_limit(size_limit))


@dataclass
class _Batch:
    """Encoded rows awaiting a shard: row r is pieces [r*width, (r+1)*width)."""

    buffers: list[pa.Buffer]
    which: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    width: int
    sizes: np.ndarray  # bytes per sample

    def rows(self) -> int:
        return len(self.sizes)


class MDSWriter:
    """Columnar MDS writer.

    Args:
        out: dataset root (local path or s3:// URI).
        columns: {name: encoding}; stored sorted by name, as the reference does.
        compression: None or "family[:level]" (br, bz2, gz, snappy, zstd).
        hashes: hash algorithms to record for every file.
        size_limit: start a new shard before one would pass this many bytes (reference rule).
        subdir: write shards under this sub-folder; their basenames carry it (merged layout).
        write_index: write index.json at `out` on exit; False when a driver merges indexes.
    """

    def __init__(
        self,
        out: str,
        *,
        columns: Mapping[str, str],
        compression: Optional[str] = None,
        hashes: Sequence[str] = (),
        size_limit: Union[int, str, None] = DEFAULT_SIZE_LIMIT,
        subdir: str = "",
        write_index: bool = True,
        exist_ok: bool = False,
        filesystem: Optional[pafs.FileSystem] = None,
    ):
        options = writer_options(columns, compression, hashes, size_limit)
        self.column_names, self.encodings = options.column_names, options.encodings
        self.column_encodings = options.column_encodings
        self.column_sizes = [e.fixed_size for e in self.encodings]
        self.compression, self.hashes, self.size_limit = options.compression, options.hashes, options.size_limit
        self._codec, self._level = parse_compression(self.compression)
        self.subdir = check_basename(subdir, "subdir") if subdir else ""
        self.write_index = write_index
        self.fs, self.root = storage.resolve(out, filesystem)
        if write_index and not exist_ok and storage.exists(self.fs, storage.join(self.root, INDEX_BASENAME)):
            raise FileExistsError(f"{storage.display(self.fs, self.root)} already holds an index.json")
        # The shard config, as the reference writes it into each shard and each index entry.
        self._settings = {
            "column_encodings": self.column_encodings, "column_names": self.column_names,
            "column_sizes": self.column_sizes, "compression": self.compression, "format": "mds",
            "hashes": self.hashes, "size_limit": self.size_limit, "version": 2,
        }
        self._config = json.dumps(self._settings, sort_keys=True).encode("utf-8")
        self._variable = [j for j, size in enumerate(self.column_sizes) if size is None]
        self._pending: list[_Batch] = []
        self._loose: list[bytes] = []
        self._shard_bytes = 8 + len(self._config)  # reference accounting: N, offsets[N], config
        self._shard_rows = 0
        self.shards: list[dict[str, Any]] = []
        self.rows_written = 0
        self._finished = False

    # -- input ---------------------------------------------------------------------------------

    def write(self, sample: Mapping[str, Any]) -> None:
        """One sample as a dict of Python values (reference semantics, per value)."""
        payloads = []
        for name, enc in zip(self.column_names, self.encodings):
            try:
                payloads.append(enc.encode_value(sample[name]))
            except KeyError:
                raise ValueError(f"sample lacks column {name!r}") from None
            except (EncodingError, TypeError, ValueError) as exc:
                raise EncodingError(f"column {name!r} ({enc.name}): {exc}") from exc
        for name, enc, payload in zip(self.column_names, self.encodings, payloads):
            if enc.fixed_size is not None and len(payload) != enc.fixed_size:
                raise EncodingError(f"column {name!r}: {len(payload)} bytes, {enc.name} needs {enc.fixed_size}")
        header = np.array([len(payloads[j]) for j in self._variable], np.uint32).tobytes()
        self._loose.append(header + b"".join(payloads))
        self._flush_full()

    def write_table(self, table: Union[pa.Table, pa.RecordBatch]) -> None:
        """Rows of an Arrow table; extra columns are ignored."""
        missing = [name for name in self.column_names if name not in table.schema.names]
        if missing:
            raise ValueError(f"input lacks column(s) {missing}; it has {table.schema.names}")
        batches = table.to_batches() if isinstance(table, pa.Table) else [table]
        for batch in batches:
            if batch.num_rows:
                self._gather_loose()
                self._pending.append(self._encode_batch(batch))
                self._flush_full()

    def _encode_batch(self, batch: pa.RecordBatch) -> _Batch:
        rows = batch.num_rows
        buffers: list[pa.Buffer] = []
        parts = []  # (which, starts, lengths) each (rows, w)
        payload_sizes = []
        for name, encoding in zip(self.column_names, self.encodings):
            array = batch.column(name)
            if array.null_count:
                raise EncodingError(f"column {name!r} has {array.null_count} null value(s); MDS cannot store nulls")
            try:
                pieces = encoding.encode(array)
                if pieces is None:
                    pieces = Pieces.from_values([encoding.encode_value(v) for v in _python_values(array)])
            except (EncodingError, pa.ArrowInvalid, TypeError, ValueError) as exc:
                raise EncodingError(f"column {name!r} ({encoding.name}, Arrow {array.type}): {exc}") from exc
            encoding.check_size(pieces, name)
            parts.append((pieces.which + len(buffers), pieces.starts, pieces.lengths))
            buffers.extend(pieces.buffers)
            payload_sizes.append(pieces.lengths.sum(axis=1))
        head_width = 4 * len(self._variable)
        header = np.stack([payload_sizes[j] for j in self._variable], axis=1).astype("<u4") \
            if self._variable else np.zeros((rows, 0), "<u4")
        if (np.stack(payload_sizes, axis=1).sum(axis=1) + head_width >= (1 << 32)).any():
            raise EncodingError("a sample of 4 GiB or more cannot be stored (u32 offsets)")
        parts.insert(0, (np.full((rows, 1), len(buffers)), np.arange(rows)[:, None] * head_width,
                         np.full((rows, 1), head_width)))
        buffers.append(pa.py_buffer(np.ascontiguousarray(header)))
        which, starts, lengths = (np.concatenate([p[k] for p in parts], axis=1) for k in range(3))
        return _Batch(buffers, which.ravel(), starts.ravel(), lengths.ravel(), which.shape[1],
                      lengths.sum(axis=1))

    def _gather_loose(self) -> None:
        if self._loose:
            pieces = Pieces.from_values(self._loose)
            self._pending.append(_Batch(pieces.buffers, pieces.which.ravel(), pieces.starts.ravel(),
                                        pieces.lengths.ravel(), 1, pieces.lengths[:, 0].copy()))
            self._loose = []

    # -- shards --------------------------------------------------------------------------------

    def _flush_full(self) -> None:
        """Cut shards exactly where the reference writer would: before a sample that would take
        the shard past size_limit (even if that leaves an empty shard, as the reference does)."""
        if self.size_limit is None:
            return
        self._gather_loose()
        just_flushed = False
        while True:
            taken = self._shard_rows
            cost = np.concatenate([b.sizes for b in self._pending] or [np.zeros(0, np.int64)]) + 4
            new = cost[taken:]
            if not len(new):
                return
            room = self.size_limit - self._shard_bytes
            fits = int(np.searchsorted(np.cumsum(new), room, side="right"))
            if just_flushed:  # the reference adds the sample that forced a flush unconditionally
                fits = max(fits, 1)
            if fits == len(new):
                self._shard_bytes += int(new.sum())
                self._shard_rows += fits
                return
            self._flush_shard(taken + fits)
            just_flushed = True

    def _flush_shard(self, rows: int) -> None:
        """Write the first `rows` pending samples as the next shard."""
        buffers: list[pa.Buffer] = []
        which, starts, lengths, sizes = [], [], [], []
        left = rows
        keep: list[_Batch] = []
        for batch in self._pending:
            take = min(left, batch.rows())
            left -= take
            cut = take * batch.width
            if take:
                which.append(batch.which[:cut] + len(buffers))
                starts.append(batch.starts[:cut])
                lengths.append(batch.lengths[:cut])
                sizes.append(batch.sizes[:take])
                buffers.extend(batch.buffers)
            if take < batch.rows():
                keep.append(_Batch(batch.buffers, batch.which[cut:], batch.starts[cut:],
                                   batch.lengths[cut:], batch.width, batch.sizes[take:]))
        self._pending = keep
        sample_sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        count = len(sample_sizes)
        head = np.empty(count + 2, dtype="<u4")
        head[0] = count
        first = 4 * (count + 2) + len(self._config)
        head[1:] = first + np.concatenate([[0], np.cumsum(sample_sizes)])
        if int(head[-1]) != first + int(sample_sizes.sum()):
            raise EncodingError("shard would reach 4 GiB: lower size_limit")
        header = pa.py_buffer(head.tobytes() + self._config)
        pieces = concat_segments(
            [header, *buffers],
            np.concatenate([[0], *starts]),
            np.concatenate([[header.size], *lengths]),
            np.concatenate([[0], *(w + 1 for w in which)]),
        )
        data = pieces.buffers()[2] or pa.py_buffer(b"")
        self._store_shard(data.slice(0, first + int(sample_sizes.sum())), count)
        self._shard_bytes = 8 + len(self._config)
        self._shard_rows = 0

    def _store_shard(self, raw: pa.Buffer, samples: int) -> None:
        number = len(self.shards)
        prefix = f"{self.subdir}/" if self.subdir else ""
        raw_name = f"{prefix}shard.{number:05}.mds"
        raw_info = {"basename": raw_name, "bytes": raw.size,
                    "hashes": {a: hexdigest(a, raw) for a in self.hashes}}
        zip_info, stored, stored_name = None, raw, raw_name
        if self._codec is not None:
            stored = self._codec.compress(raw, self._level)
            stored_name = f"{raw_name}.{self._codec.family}"
            zip_info = {"basename": stored_name, "bytes": len(stored),
                        "hashes": {a: hexdigest(a, stored) for a in self.hashes}}
        storage.write_file(self.fs, storage.join(self.root, stored_name), stored)
        self.shards.append({**self._settings, "raw_data": raw_info, "samples": samples, "zip_data": zip_info})
        self.rows_written += samples

    # -- finish --------------------------------------------------------------------------------

    def finish(self) -> list[dict[str, Any]]:
        """Flush the last shard and (if asked) write index.json. Returns the shard entries."""
        if not self._finished:
            self._gather_loose()
            pending = sum(b.rows() for b in self._pending)
            if pending:
                self._flush_shard(pending)
            if self.write_index:
                storage.write_file(self.fs, storage.join(self.root, INDEX_BASENAME), index_json(self.shards))
            self._finished = True
        return self.shards

    def __enter__(self) -> "MDSWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
