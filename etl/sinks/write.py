"""`write_mds`: the public writer."""

import inspect
from typing import Any

from etl.mds.writer import writer_options
from etl.sinks.mds_datasink import MDSDatasink

WRITER_SETTINGS = tuple(inspect.signature(writer_options).parameters)  # columns, compression, hashes, size_limit


def write_mds(dataset, uri: str, *, filesystem=None, **kwargs: Any) -> int:
    """Write `dataset` as MDS under `uri`: shards written by workers in parallel, then the
    merged index.json by the driver. Returns the number of shards. Keywords naming `MDSWriter`
    settings (columns, compression, hashes, size_limit) configure the shards, with its defaults;
    the others go to `Dataset.write_datasink` (e.g. ray_remote_args, concurrency)."""
    settings = {k: v for k, v in kwargs.items() if k in WRITER_SETTINGS}
    sink = MDSDatasink(uri, settings, filesystem=filesystem)
    dataset.write_datasink(sink, **{k: v for k, v in kwargs.items() if k not in WRITER_SETTINGS})
    return sink.shard_count
