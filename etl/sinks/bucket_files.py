"""Bucket files: rows conformed to their table's versioned schema (schemas/tables.py), sorted by
bucket and written as one Parquet file per bucket they hold, under `bucket=<n>/`. What comes
back is each file's metadata (path, size, rows, stats): all a Delta commit needs
(`etl.sinks.delta_commits`), so workers write and only metadata travels to the driver. Plain
hive Parquet needs no commit at all.
"""

import json
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from etl import storage
from schemas.tables import PARTITION_COLUMN, to_storage

_STATS_COLUMNS = ("shard", "row", "sample_id")  # min/max for data skipping (shard-range backfills)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns and types, or a ValueError naming the gap."""
    have, want = set(table.schema.names), set(schema.names)
    if have != want:
        raise ValueError(f"rows do not match table schema {schema.metadata.get(b'table', b'?').decode()} "
                         f"v{schema.metadata.get(b'schema_version', b'?').decode()}: missing "
                         f"{sorted(want - have)}, unexpected {sorted(have - want)}")
    # Column by column, and only columns whose type differs: pyarrow 25 segfaults casting a
    # list<fixed_shape_tensor> column even to its own type, which `Table.cast` does for every
    # column as soon as any one differs (a write of 4096 rows crashed its worker, endlessly retried).
    columns = []
    for field in schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            raise ValueError(f"column {field.name!r} holds {column.null_count} null(s); the schema forbids them")
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValueError(f"rows do not cast to the table schema: column {field.name!r}: {exc}") from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _stats(table: pa.Table) -> str:
    minimum, maximum, nulls = {}, {}, {}
    for name in _STATS_COLUMNS:
        if name in table.schema.names and table.num_rows:
            bounds = pc.min_max(table.column(name)).as_py()
            minimum[name], maximum[name] = bounds["min"], bounds["max"]
            nulls[name] = table.column(name).null_count
    return json.dumps({"numRecords": table.num_rows, "minValues": minimum, "maxValues": maximum,
                       "nullCount": nulls})


def write_bucket_files(table: pa.Table, schema: pa.Schema, uri: str, tag: str,
                       filesystem: Optional[pafs.FileSystem] = None) -> list[dict[str, Any]]:
    """Conform `table` to `schema` and write one Parquet file per bucket it holds, named
    `bucket=<n>/part-<tag>.parquet`. Returns the files' metadata (what a commit needs)."""
    fs, root = storage.resolve(uri, filesystem)
    table = to_storage(conform(table, schema))
    table = table.take(pc.sort_indices(table.column(PARTITION_COLUMN)))
    buckets = table.column(PARTITION_COLUMN).to_numpy()
    values, starts = np.unique(buckets, return_index=True)
    stops = list(starts[1:]) + [len(buckets)]
    return [file_entry(fs, root, f"{PARTITION_COLUMN}={bucket}/part-{tag}.parquet",
                       table.slice(start, stop - start).drop_columns([PARTITION_COLUMN]), bucket)
            for bucket, start, stop in zip(values.tolist(), starts.tolist(), stops)]


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: all but the float tensors. Embeddings and latents never
    repeat, so their dictionaries are built only to be thrown away, and Parquet's dictionary
    builder for a nested float column held ~70 MiB for 2 MB of 10-frame latents."""
    return [field.name for field in schema if not _holds_floats(field.type)]


def _holds_floats(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return pa.types.is_floating(kind)


def file_entry(fs: pafs.FileSystem, root: str, path: str, part: pa.Table, bucket: int) -> dict[str, Any]:
    """Write one bucket's rows (storage form, no partition column) to `root/path`; return the
    metadata a Delta add action needs."""
    sink = pa.BufferOutputStream()
    pq.write_table(part, sink, compression="zstd", use_dictionary=_dictionary_columns(part.schema))
    data = sink.getvalue()
    storage.write_file(fs, storage.join(root, path), data)
    return {"path": path, "size": data.size, "bucket": bucket, "rows": part.num_rows,
            "stats": _stats(part), "modification_time": int(time.time() * 1000)}
