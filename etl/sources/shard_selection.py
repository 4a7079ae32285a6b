"""Which shards of an index a run covers: "A:B", a list of indices, or all of them."""

from typing import Optional, Sequence, Union

ShardSpec = Union[None, str, Sequence[int]]


def select_shards(spec: ShardSpec, count: int) -> list[int]:
    """Resolve a shard spec against an index of `count` shards, in ascending order.

    "A:B" is half-open like a Python slice ("A:" and ":B" too); indices must exist.
    """
    if spec is None:
        return list(range(count))
    if isinstance(spec, str):
        start_text, sep, stop_text = spec.partition(":")
        try:
            start = int(start_text) if start_text.strip() else 0
            stop = int(stop_text) if stop_text.strip() else count
        except ValueError:
            start = stop = -1
        if not sep or start < 0 or stop < start:
            raise ValueError(f"shards {spec!r}: expected 'A:B' with 0 <= A <= B, e.g. '0:16'")
        if stop > count:
            raise ValueError(f"shards {spec!r}: the index has only {count} shards (0:{count})")
        return list(range(start, stop))
    chosen = sorted(set(int(i) for i in spec))
    if len(chosen) != len(list(spec)):
        raise ValueError(f"shards {list(spec)}: duplicate indices")
    outside = [i for i in chosen if not 0 <= i < count]
    if outside:
        raise ValueError(f"shards {outside} do not exist: the index has {count} shards (0..{count - 1})")
    return chosen


def group_shards(sizes: Sequence[int], max_shards: int, max_bytes: Optional[int]) -> list[list[int]]:
    """Consecutive groups (positions into `sizes`) of at most `max_shards` shards, and at most
    `max_bytes` unless one shard alone is bigger."""
    groups: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for position, size in enumerate(sizes):
        if current and (len(current) >= max_shards
                        or (max_bytes is not None and current_bytes + size > max_bytes)):
            groups.append(current)
            current, current_bytes = [], 0
        current.append(position)
        current_bytes += size
    if current:
        groups.append(current)
    return groups
