"""MDS shard compressions: a registry of the five families the reference writer supports.

Every family decompresses *into a caller-sized buffer* (cramjam's `decompress_into`), so a shard
that expands past the size its index declares is stopped there instead of filling memory.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import cramjam


@dataclass(frozen=True)
class Codec:
    family: str
    levels: Optional[range]  # None: the family has no levels
    default_level: Optional[int]
    compress: Callable[[bytes, Optional[int]], bytes]
    decompress_into: Callable[[object, object], int]


def _levelled(module) -> Callable[[bytes, Optional[int]], bytes]:
    return lambda data, level: bytes(module.compress(data, level=level))


CODECS: dict[str, Codec] = {
    "br": Codec("br", range(0, 12), 11, _levelled(cramjam.brotli), cramjam.brotli.decompress_into),
    "bz2": Codec("bz2", range(1, 10), 9, _levelled(cramjam.bzip2), cramjam.bzip2.decompress_into),
    "gz": Codec("gz", range(0, 10), 9, _levelled(cramjam.gzip), cramjam.gzip.decompress_into),
    # The reference uses python-snappy's raw (unframed) block format.
    "snappy": Codec(
        "snappy", None, None, lambda data, _: bytes(cramjam.snappy.compress_raw(data)),
        cramjam.snappy.decompress_raw_into,
    ),
    "zstd": Codec("zstd", range(1, 23), 3, _levelled(cramjam.zstd), cramjam.zstd.decompress_into),
}


def parse_compression(spec: Optional[str]) -> tuple[Optional[Codec], Optional[int]]:
    """`None`, `"zstd"` or `"zstd:7"` -> (codec, level). Raises ValueError naming allowed values."""
    if spec is None:
        return None, None
    family, _, level_text = str(spec).partition(":")
    codec = CODECS.get(family)
    if codec is None:
        raise ValueError(f"unknown compression {spec!r}; allowed families: {sorted(CODECS)} "
                         "(optionally with ':<level>')")
    if not level_text:
        return codec, codec.default_level
    if codec.levels is None:
        raise ValueError(f"compression {spec!r}: {family} takes no level")
    try:
        level = int(level_text)
    except ValueError:
        level = None
    if level is None or level not in codec.levels:
        raise ValueError(f"compression {spec!r}: {family} levels are "
                         f"{codec.levels.start}-{codec.levels.stop - 1}")
    return codec, level


def compress(spec: str, data: bytes) -> bytes:
    codec, level = parse_compression(spec)
    return codec.compress(data, level)


def decompress_exact(spec: str, data, out) -> int:
    """Decompress `data` into `out`, which must be one byte longer than the expected size.

    Returns the number of bytes written; a result of len(out) or a "buffer full" error both mean
    the data expands past what the index declared. Raises ValueError for corrupt input.
    """
    codec, _ = parse_compression(spec)
    try:
        return codec.decompress_into(data, out)
    except cramjam.DecompressionError as exc:
        text = str(exc)
        if "whole buffer" in text or "smaller than required" in text:
            return len(out)
        raise ValueError(f"not valid {codec.family} data ({text})") from None
