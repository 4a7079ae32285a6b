"""Read MDS shards from any pyarrow filesystem: size and hash checks, bounded decompression,
columnar decode. This is the read path `read_mds` runs inside each Ray read task."""

import threading
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from etl import storage
from etl.mds.compression import decompress_exact
from etl.mds.errors import MDSError
from etl.mds.hashing import check_hash_names, hexdigest
from etl.mds.index import INDEX_BASENAME, ShardEntry, parse_index
from etl.mds.shard import decode_shard

# Decompressed shards are only needed until their columns are copied out, so each thread keeps
# one buffer and reuses it: fresh pages cost a page fault per 4 KiB.
_SCRATCH_KEEP_BYTES = 1 << 30
_scratch = threading.local()


def _scratch_buffer(size: int) -> np.ndarray:
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = np.empty(size, dtype=np.uint8)
        if size <= _SCRATCH_KEEP_BYTES:
            _scratch.buf = buf
    return buf[:size]


def load_index(fs: pafs.FileSystem, root: str) -> list[ShardEntry]:
    path = storage.join(root, INDEX_BASENAME)
    where = storage.display(fs, path)
    try:
        data, _ = storage.read_file(fs, path)
    except FileNotFoundError:
        raise MDSError(where, "no index.json here: not an MDS dataset (or not finished writing)") from None
    return parse_index(data.to_pybytes(), where)


class ShardReader:
    """Reads whole shards and decodes selected columns. Raises MDSError for a bad shard."""

    def __init__(self, fs: pafs.FileSystem, root: str, verify_hashes: Sequence[str] = ()):
        self.fs, self.root = fs, root
        self.verify_hashes = check_hash_names(verify_hashes)

    def where(self, entry: ShardEntry) -> str:
        return storage.display(self.fs, storage.join(self.root, entry.stored.basename))

    def _verify(self, entry: ShardEntry, info, data, where: str) -> None:
        for algo in self.verify_hashes:
            expected = info.hashes.get(algo)
            if expected is None:
                if algo not in entry.raw_data.hashes and not (entry.zip_data and algo in entry.zip_data.hashes):
                    raise MDSError(where, f"index.json records no {algo} hash for this shard "
                                          f"(it has: {sorted(info.hashes)})")
                continue
            if hexdigest(algo, data) != expected:
                raise MDSError(where, f"{algo} checksum mismatch with {info.basename!r} in index.json")

    def read_raw(self, entry: ShardEntry) -> pa.Buffer:
        """The uncompressed shard bytes, checked against the index."""
        info = entry.stored
        where = self.where(entry)
        try:
            data, size = storage.read_file(self.fs, storage.join(self.root, info.basename))
        except FileNotFoundError:
            raise MDSError(where, f"shard file is missing (index.json lists it as shard {entry.index})") from None
        if size != info.bytes:
            raise MDSError(where, f"file is {size} bytes but index.json says {info.bytes} "
                                  "(truncated or replaced)")
        self._verify(entry, info, data, where)
        if entry.zip_data is None:
            return data
        expected = entry.raw_data.bytes
        out = _scratch_buffer(expected + 1)
        try:
            produced = decompress_exact(entry.compression, data, out)
        except ValueError as exc:
            raise MDSError(where, f"cannot decompress: {exc}") from None
        if produced > expected:
            raise MDSError(where, f"decompresses past the {expected} bytes index.json declares "
                                  "(decompression bomb or lying index); stopped there")
        if produced < expected:
            raise MDSError(where, f"decompresses to {produced} bytes, index.json declares {expected}")
        raw = pa.py_buffer(out[:expected])
        self._verify(entry, entry.raw_data, raw, where)
        return raw

    def read(self, entry: ShardEntry, columns: Sequence[str]) -> pa.Table:
        return decode_shard(self.read_raw(entry), entry, columns, self.where(entry))
