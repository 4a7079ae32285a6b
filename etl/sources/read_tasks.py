"""`ReadTasks`: the selected shards' decoded sizes and their grouping into read tasks. Derived
once on the driver, from the index and the columns read, and shared by the datasource (its
read tasks), the planner (memory per task) and `jobs.plan`, so all three see the same tasks."""

from dataclasses import dataclass
from typing import Optional, Sequence

from etl.mds import ShardEntry
from etl.sources.shard_selection import group_shards

_ROW_OVERHEAD_BYTES = 64  # provenance, offsets and validity per row


def estimate_decoded_bytes(entry: ShardEntry, columns: Sequence[str]) -> int:
    """Bytes of the Arrow table a shard decodes to: the uncompressed payload (images stay
    encoded) minus fixed-width columns not selected, plus per-row bookkeeping."""
    unselected_fixed = sum(size or 0 for name, size in zip(entry.column_names, entry.column_sizes)
                           if name not in columns)
    payload = entry.raw_data.bytes - entry.samples * unselected_fixed
    return max(payload, 0) + entry.samples * (_ROW_OVERHEAD_BYTES + 8 * len(columns))


@dataclass(frozen=True)
class ReadTasks:
    shards: tuple[int, ...]                 # the shards read, ascending
    sizes: tuple[int, ...]                  # decoded bytes per shard, in the same order
    groups: tuple[tuple[int, ...], ...]     # per read task, positions into `shards`

    @classmethod
    def of_sizes(cls, shards: Sequence[int], sizes: Sequence[int], shards_per_task: int,
                 max_bytes_per_task: Optional[int]) -> "ReadTasks":
        groups = group_shards(list(sizes), shards_per_task, max_bytes_per_task)
        return cls(tuple(shards), tuple(sizes), tuple(tuple(g) for g in groups))

    @classmethod
    def of_entries(cls, entries: Sequence[ShardEntry], columns: Sequence[str], shards_per_task: int,
                   max_bytes_per_task: Optional[int]) -> "ReadTasks":
        return cls.of_sizes([e.index for e in entries], [estimate_decoded_bytes(e, columns) for e in entries],
                            shards_per_task, max_bytes_per_task)

    def __len__(self) -> int:
        return len(self.groups)

    def task_bytes(self, group: Sequence[int]) -> int:
        return sum(self.sizes[i] for i in group)

    @property
    def largest_shard_bytes(self) -> int:
        return max(self.sizes, default=0)

    @property
    def largest_task_bytes(self) -> int:
        return max((self.task_bytes(g) for g in self.groups), default=0)

    @property
    def most_shards_per_task(self) -> int:
        return max((len(g) for g in self.groups), default=0)
