"""Every table a run promises exists once the run reaches its first commit, with its versioned
schema, even when it has no row: dashboards, training jobs and checks open `quarantine` on the
cleanest runs too.

Creation is idempotent and safe when two first runs race: a table that exists (or that another
run creates between our look and our create) is kept, after checking that its schema is the one
this run writes; a table of another schema is refused by name, never silently written into.
"""

import json
from typing import Literal, Optional

import pyarrow as pa

from etl import storage
from etl.sinks.delta_commits import create_table, open_table
from schemas.tables import PARTITION_COLUMN, SCHEMA_VERSION, storage_schema

PARQUET_SCHEMA_FILE = "_common_metadata"  # the Parquet convention: readers skip `_` files


class TableSchemaMismatch(RuntimeError):
    """A table exists with columns other than the ones this run writes."""


def ensure_tables(output: str, schemas: dict[str, pa.Schema], format: Literal["delta", "parquet"],
                  properties: Optional[dict[str, str]] = None) -> list[str]:
    """Create each table of `schemas` ({name: logical schema}) under `output` that does not exist
    yet, Delta ones with the table `properties`; returns the names created."""
    created = []
    for name, schema in schemas.items():
        uri = storage.join(output, name)
        with storage.naming("creating", uri):
            made = (_ensure_delta_table(uri, schema, properties) if format == "delta"
                    else _ensure_parquet_table(uri, schema))
            if made:
                created.append(name)
    return created


def _delta_fields(schema) -> list[dict]:
    return json.loads(schema.to_json())["fields"]


def _check_schema(uri: str, stored, wanted) -> None:
    have, want = _delta_fields(stored), _delta_fields(wanted)
    if have == want:
        return
    have_by_name, want_by_name = {f["name"]: f for f in have}, {f["name"]: f for f in want}
    differ = [name for name in dict.fromkeys([*have_by_name, *want_by_name])
              if have_by_name.get(name) != want_by_name.get(name)]
    details = "; ".join(f"{name}: table has {json.dumps(have_by_name.get(name))}, this run writes "
                        f"{json.dumps(want_by_name.get(name))}" for name in differ[:5])
    raise TableSchemaMismatch(f"the table at {uri} has another schema than this run's (schema version "
                              f"{SCHEMA_VERSION}): {details}; write to a new output, or use the models it was "
                              f"made with")


def _ensure_delta_table(uri: str, schema: pa.Schema, properties: Optional[dict[str, str]]) -> bool:
    from deltalake import Schema
    from deltalake.exceptions import DeltaError

    wanted = Schema.from_arrow(storage_schema(schema))
    table = open_table(uri)
    if table is None:
        try:
            create_table(uri, wanted, [], None, [PARTITION_COLUMN] if PARTITION_COLUMN in schema.names else None,
                         properties)
            return True
        except DeltaError:
            # another run created it between our look and our create: keep theirs if it matches
            table = open_table(uri)
            if table is None:
                raise
    _check_schema(uri, table.schema(), wanted)
    return False


def _ensure_parquet_table(uri: str, schema: pa.Schema) -> bool:
    """A Parquet table is a folder of files; an empty one holds only the schema file, which
    pyarrow, Spark and Dask read as the folder's schema."""
    import pyarrow.parquet as pq

    fs, root = storage.resolve(uri)
    path = storage.join(root, PARQUET_SCHEMA_FILE)
    if storage.exists(fs, path):
        return False
    sink = pa.BufferOutputStream()
    pq.write_metadata(storage_schema(schema), sink)
    storage.write_file(fs, path, sink.getvalue())  # atomic: a racing run writes the same bytes
    return True
