"""`read_mds`: the public reader."""

from typing import Any, Optional, Sequence

from etl.mds.reader import DEFAULT_BLOCK_BYTES
from etl.sources.mds_datasource import MDSDatasource, OnBadShard
from etl.sources.shard_selection import ShardSpec


def read_mds(
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
    filesystem=None,
    **read_args: Any,
):
    """Read an MDS dataset as a `ray.data.Dataset` (see `MDSDatasource` for the arguments).

    Rows carry `shard` and `row` (provenance in index.json) and `mds_error` (null unless the
    sample, or its whole shard under on_bad_shard="quarantine", could not be decoded).
    `read_args` go to `ray.data.read_datasource` (e.g. num_cpus, memory, concurrency).
    """
    import ray.data

    source = MDSDatasource(
        uri, shards=shards, columns=columns, verify_hashes=verify_hashes, allow_pickle=allow_pickle,
        shards_per_task=shards_per_task, max_bytes_per_task=max_bytes_per_task,
        on_bad_shard=on_bad_shard, block_bytes=block_bytes, max_image_pixels=max_image_pixels,
        filesystem=filesystem,
    )
    return ray.data.read_datasource(source, **read_args)
