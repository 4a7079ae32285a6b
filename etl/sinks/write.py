"""`write_mds`: the public writer."""

from typing import Any, Mapping, Optional, Sequence, Union

from etl.mds.writer import DEFAULT_SIZE_LIMIT
from etl.sinks.mds_datasink import MDSDatasink


def write_mds(
    dataset,
    uri: str,
    *,
    columns: Mapping[str, str],
    compression: Optional[str] = None,
    hashes: Sequence[str] = (),
    size_limit: Union[int, str, None] = DEFAULT_SIZE_LIMIT,
    filesystem=None,
    **write_args: Any,
) -> int:
    """Write `dataset` as MDS under `uri`: shards written by workers in parallel, then the
    merged index.json by the driver. Returns the number of shards. `write_args` go to
    `Dataset.write_datasink` (e.g. ray_remote_args, concurrency)."""
    sink = MDSDatasink(uri, columns=columns, compression=compression, hashes=hashes,
                       size_limit=size_limit, filesystem=filesystem)
    dataset.write_datasink(sink, **write_args)
    return sink.shard_count
