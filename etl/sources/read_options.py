"""`ReadOptions`: how `read_mds` reads a dataset, validated once, the one place the defaults live."""

from dataclasses import dataclass, fields
from typing import Any, Literal, Optional, Sequence

from etl.mds.hashing import check_hash_names
from etl.mds.reader import DEFAULT_BLOCK_BYTES
from etl.sources.shard_selection import ShardSpec

OnBadShard = Literal["raise", "quarantine"]
DEFAULT_SHARDS_PER_TASK = 2
DEFAULT_MAX_TASK_BYTES = 256 << 20


@dataclass(frozen=True)
class ReadOptions:
    """
    shards: "A:B", a list of shard indices, or None for all.
    columns: columns to read (None: all). The output adds `shard`, `row` and `mds_error`.
    verify_hashes: hash algorithms to verify for every shard read (they must be in the index).
    allow_pickle: read `pkl` columns (as the pickle bytes; nothing is unpickled).
    shards_per_task: most shards one read task holds.
    max_bytes_per_task: no more shards join a task past this decoded size (one big shard still
        gets its own task); None: no bound.
    on_bad_shard: "raise" fails the read on a corrupt or missing shard; "quarantine" turns each
        of its samples into a row whose `mds_error` names the shard and the problem.
    block_bytes: size of the blocks a shard is decoded into (None: one block per shard).
    max_image_pixels: if set, jpeg/png cells (and frames of image lists) whose header is
        unreadable or claims more pixels become errors, checked without decoding pixels.
    """

    shards: ShardSpec = None
    columns: Optional[Sequence[str]] = None
    verify_hashes: Sequence[str] = ()
    allow_pickle: bool = False
    shards_per_task: int = DEFAULT_SHARDS_PER_TASK
    max_bytes_per_task: Optional[int] = DEFAULT_MAX_TASK_BYTES
    on_bad_shard: OnBadShard = "raise"
    block_bytes: Optional[int] = DEFAULT_BLOCK_BYTES
    max_image_pixels: Optional[int] = None

    def __post_init__(self):
        if self.on_bad_shard not in ("raise", "quarantine"):
            raise ValueError(f"on_bad_shard={self.on_bad_shard!r}; allowed: 'raise', 'quarantine'")
        if self.shards_per_task < 1:
            raise ValueError(f"shards_per_task must be >= 1, got {self.shards_per_task}")
        for name in ("max_bytes_per_task", "block_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if isinstance(self.columns, str):
            raise ValueError(f"columns={self.columns!r}: give a list of column names")
        object.__setattr__(self, "verify_hashes", check_hash_names(self.verify_hashes))
        object.__setattr__(self, "columns", None if self.columns is None else tuple(self.columns))


def split_options(kwargs: dict[str, Any]) -> tuple[ReadOptions, dict[str, Any]]:
    """(ReadOptions from the keywords that name its fields, the other keywords)."""
    names = {f.name for f in fields(ReadOptions)}
    return (ReadOptions(**{k: v for k, v in kwargs.items() if k in names}),
            {k: v for k, v in kwargs.items() if k not in names})
