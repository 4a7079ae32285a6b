"""The MDS (MosaicML Streaming) format: index, shard layout, encodings, compression, hashes,
a columnar reader and a columnar writer. No Ray here: `etl.sources` / `etl.sinks` wrap it."""

from etl.mds.encodings import ENCODINGS, get_encoding
from etl.mds.errors import MDSError, UnsafeEncodingError
from etl.mds.index import INDEX_BASENAME, FileInfo, ShardEntry, parse_index
from etl.mds.reader import ShardReader, load_index
from etl.mds.shard import ERROR_COLUMN, decode_shard
from etl.mds.writer import MDSWriter

__all__ = [
    "ENCODINGS", "ERROR_COLUMN", "INDEX_BASENAME", "FileInfo", "MDSError",
    "MDSWriter", "ShardEntry", "ShardReader", "UnsafeEncodingError", "decode_shard",
    "get_encoding", "load_index", "parse_index",
]
