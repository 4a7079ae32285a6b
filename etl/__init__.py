"""Multimodal curation ETL on Ray Data.

Public entry points are imported lazily so that `import etl` stays cheap (no Ray, no torch).
"""

from typing import Any

__all__ = ["read_mds", "write_mds"]


def read_mds(source, options=None, **kwargs: Any):
    """Read an MDS dataset as a `ray.data.Dataset`. See `etl.sources.read`."""
    from etl.sources.read import read_mds as _read_mds

    return _read_mds(source, options, **kwargs)


def write_mds(dataset, uri: str, **kwargs: Any):
    """Write a `ray.data.Dataset` as MDS shards plus a merged index.json. See `etl.sinks`."""
    from etl.sinks.write import write_mds as _write_mds

    return _write_mds(dataset, uri, **kwargs)
