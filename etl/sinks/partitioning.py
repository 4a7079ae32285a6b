"""Stable sample ids and hash buckets: the same sample lands in the same bucket on every run,
machine and Python process (Python's own `hash` is salted per process, so it is not used)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash


def derived_sample_ids(shards: pa.Array, rows: pa.Array) -> pa.Array:
    """`<shard>:<row>` (both zero-padded) for datasets without an id column."""
    shard_text = pc.utf8_lpad(pc.cast(shards, pa.string()), 6, "0")
    row_text = pc.utf8_lpad(pc.cast(rows, pa.string()), 6, "0")
    return pc.binary_join_element_wise(shard_text, row_text, ":")


def buckets_of(sample_ids: pa.Array, buckets: int) -> pa.Array:
    """xxh64(sample_id UTF-8) mod `buckets`, as int32."""
    ids = sample_ids.cast(pa.string()).to_pylist()
    digests = np.fromiter((xxhash.xxh64_intdigest(i.encode("utf-8")) for i in ids), dtype=np.uint64, count=len(ids))
    return pa.array((digests % np.uint64(buckets)).astype(np.int32))
