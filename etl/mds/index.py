"""index.json: parse it, and check every field before anything downstream trusts it."""

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from etl.mds.compression import parse_compression
from etl.mds.encodings import Encoding, get_encoding
from etl.mds.errors import MDSError

INDEX_BASENAME = "index.json"
_HEX = re.compile(r"^[0-9a-f]+$")
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9._+=@-]+$")


@dataclass(frozen=True)
class FileInfo:
    basename: str
    bytes: int
    hashes: dict


@dataclass(frozen=True)
class ShardEntry:
    """One shard as index.json describes it, validated. `index` is its position in the list."""

    index: int
    column_names: tuple[str, ...]
    column_encodings: tuple[str, ...]
    column_sizes: tuple[Optional[int], ...]
    compression: Optional[str]
    hashes: tuple[str, ...]
    raw_data: FileInfo
    zip_data: Optional[FileInfo]
    samples: int
    size_limit: Optional[int]

    @property
    def stored(self) -> FileInfo:
        """The file that actually exists in storage."""
        return self.zip_data or self.raw_data

    def encoding(self, column: str) -> Encoding:
        return get_encoding(self.column_encodings[self.column_names.index(column)])


def check_basename(basename: Any, where: str) -> str:
    """A basename must be a relative path of plain components: no `..`, no absolute paths."""
    if not isinstance(basename, str) or not basename:
        raise MDSError(where, f"basename {basename!r} is not a non-empty string")
    parts = basename.split("/")
    if (basename.startswith("/") or "\\" in basename or ":" in basename
            or any(p in ("", ".", "..") or not _SAFE_COMPONENT.match(p) for p in parts)):
        raise MDSError(where, f"unsafe basename {basename!r}: it must be a relative path of plain "
                              "names (no '..', no absolute path, no empty component)")
    return basename


def _int(obj: dict, key: str, where: str, *, optional: bool = False) -> Optional[int]:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MDSError(where, f"{key!r} must be a non-negative integer, got {value!r}")
    return value


def _file_info(obj: Any, where: str) -> FileInfo:
    if not isinstance(obj, dict):
        raise MDSError(where, f"file info must be an object, got {obj!r}")
    basename = check_basename(obj.get("basename"), where)
    size = _int(obj, "bytes", where)
    hashes = obj.get("hashes") or {}
    if not isinstance(hashes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _HEX.match(v) for k, v in hashes.items()):
        raise MDSError(where, f"hashes of {basename!r} must map algorithm names to hex digests")
    return FileInfo(basename, size, dict(hashes))


def parse_shard(obj: Any, index: int, source: str) -> ShardEntry:
    where = f"{source} shard {index}"
    if not isinstance(obj, dict):
        raise MDSError(where, "shard entry is not an object")
    if obj.get("format") != "mds":
        raise MDSError(where, f"format {obj.get('format')!r} is not supported; only 'mds'")
    if obj.get("version") != 2:
        raise MDSError(where, f"shard version {obj.get('version')!r} is not supported; only 2")
    names, encodings, sizes = (obj.get(k) for k in ("column_names", "column_encodings", "column_sizes"))
    if not (isinstance(names, list) and isinstance(encodings, list) and isinstance(sizes, list)
            and len(names) == len(encodings) == len(sizes) and names):
        raise MDSError(where, "column_names, column_encodings and column_sizes must be lists of "
                              "one equal, non-zero length")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise MDSError(where, f"column names must be unique non-empty strings: {names}")
    for name, text, size in zip(names, encodings, sizes):
        try:
            encoding = get_encoding(text)
        except ValueError as exc:
            raise MDSError(where, f"column {name!r}: {exc}") from None
        if size != encoding.fixed_size:
            raise MDSError(where, f"column {name!r} ({text}) has column_size {size!r}, the "
                                  f"encoding's size is {encoding.fixed_size!r}")
    compression = obj.get("compression")
    try:
        parse_compression(compression)
    except ValueError as exc:
        raise MDSError(where, str(exc)) from None
    hashes = obj.get("hashes") or []
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise MDSError(where, f"hashes must be a list of names, got {hashes!r}")
    raw = _file_info(obj.get("raw_data"), where)
    zipped = _file_info(obj["zip_data"], where) if obj.get("zip_data") else None
    if (compression is None) != (zipped is None):
        raise MDSError(where, "zip_data must be present exactly when compression is set")
    samples = _int(obj, "samples", where)
    if raw.bytes < 4 * (samples + 2):
        raise MDSError(where, f"raw_data is {raw.bytes} bytes, too small to hold the header of "
                              f"{samples} samples")
    return ShardEntry(
        index=index, column_names=tuple(names), column_encodings=tuple(encodings),
        column_sizes=tuple(sizes), compression=compression, hashes=tuple(hashes), raw_data=raw,
        zip_data=zipped, samples=samples, size_limit=_int(obj, "size_limit", where, optional=True),
    )


def parse_index(text: bytes, source: str) -> list[ShardEntry]:
    """Parse and validate index.json bytes. `source` names the file in errors."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MDSError(source, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("version") != 2:
        version = obj.get("version") if isinstance(obj, dict) else None
        raise MDSError(source, f"index version {version!r} is not supported; only 2")
    shards = obj.get("shards")
    if not isinstance(shards, list):
        raise MDSError(source, "'shards' must be a list")
    entries = [parse_shard(shard, i, source) for i, shard in enumerate(shards)]
    seen: dict[str, int] = {}
    for entry in entries:
        for info in filter(None, (entry.raw_data, entry.zip_data)):
            other = seen.setdefault(info.basename, entry.index)
            if other != entry.index:
                raise MDSError(source, f"shards {other} and {entry.index} both name file "
                                       f"{info.basename!r}")
    return entries


def index_json(entries: list[dict]) -> bytes:
    """The reference writer's exact serialisation (sorted keys)."""
    return json.dumps({"shards": entries, "version": 2}, sort_keys=True).encode("utf-8")

