"""Every table exists with its versioned schema, rows or none: created once, kept when it exists,
refused when it has another schema, and safe when first runs race, locally and on S3."""

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import storage
from etl.sinks.delta_commits import commit_files, open_table
from etl.sinks.bucket_files import write_bucket_files
from etl.sinks.tables import PARQUET_SCHEMA_FILE, TableSchemaMismatch, ensure_tables
from schemas.tables import SCHEMA_VERSION, quarantine_schema, runs_schema, samples_schema, storage_schema
from tests.sinks.test_delta_commits import rows, run_in_processes

SCHEMAS = {"samples": samples_schema(8, (4, 2, 2)), "quarantine": quarantine_schema(), "runs": runs_schema()}


@pytest.fixture
def output(storage_root):
    return storage_root + "/out"


def _stored_fields(uri):
    return json.loads(open_table(uri).schema().to_json())["fields"]


def _wanted_fields(schema):
    from deltalake import Schema

    return json.loads(Schema.from_arrow(storage_schema(schema)).to_json())["fields"]


def test_a_fresh_output_gets_every_table_empty_with_its_schema(output):
    assert ensure_tables(output, SCHEMAS, "delta") == ["samples", "quarantine", "runs"]
    for name, schema in SCHEMAS.items():
        uri = storage.join(output, name)
        table = open_table(uri)
        assert table.version() == 0
        assert table.to_pyarrow_table().num_rows == 0
        assert _stored_fields(uri) == _wanted_fields(schema)
        assert table.metadata().name == name and f"schema version {SCHEMA_VERSION}" in table.metadata().description
    assert open_table(f"{output}/samples").metadata().partition_columns == ["bucket"]
    assert open_table(f"{output}/runs").metadata().partition_columns == []


def test_creating_again_keeps_the_tables_and_their_rows(output):
    uri = storage.join(output, "quarantine")
    commit_files(uri, SCHEMAS["quarantine"], write_bucket_files(rows([0], "r"), SCHEMAS["quarantine"], uri, "a"),
                 {"run_id": "r"})
    assert ensure_tables(output, SCHEMAS, "delta") == ["samples", "runs"]  # quarantine already had rows
    assert ensure_tables(output, SCHEMAS, "delta") == []
    assert open_table(uri).version() == 0 and open_table(uri).to_pyarrow_table().num_rows == 6
    assert open_table(f"{output}/samples").version() == 0


def test_a_table_of_another_schema_is_refused_by_name(tmp_path):
    other = {"samples": samples_schema(16, (4, 2, 2))}  # another embedder's width
    ensure_tables(str(tmp_path), other, "delta")
    with pytest.raises(TableSchemaMismatch, match=r"samples.*another schema.*embedding"):
        ensure_tables(str(tmp_path), {"samples": SCHEMAS["samples"]}, "delta")


def test_a_table_created_by_another_run_between_our_look_and_our_create_is_kept(tmp_path,
                                                                             another_writer_after_our_look):
    quarantine = {"quarantine": SCHEMAS["quarantine"]}
    from etl.sinks import tables

    another_writer_after_our_look(lambda: ensure_tables(str(tmp_path), quarantine, "delta"), tables)
    assert ensure_tables(str(tmp_path), quarantine, "delta") == []  # theirs is kept
    assert open_table(f"{tmp_path}/quarantine").version() == 0


def _create_at(output, start_at, result_dir, endpoint_env):
    import deltalake  # noqa: F401 - imported before the start, so that all processes create at once

    os.environ.update(endpoint_env)
    open_table(storage.join(output, "not-a-table"))  # the storage client is warm too
    time.sleep(max(0.0, start_at - time.time()))
    created = ensure_tables(output, SCHEMAS, "delta")
    with open(os.path.join(result_dir, f"{os.getpid()}.json"), "w") as out:
        json.dump(created, out)


def test_first_runs_racing_to_create_the_tables_create_each_once(output, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    start_at = time.time() + 8
    run_in_processes(_create_at, [(output, start_at, str(results)) for _ in range(4)])
    created = [name for f in results.iterdir() for name in json.loads(f.read_text())]
    assert sorted(created) == sorted(SCHEMAS), created
    for name in SCHEMAS:
        table = open_table(storage.join(output, name))
        assert table.version() == 0 and len(table.history()) == 1


def test_a_parquet_output_gets_each_folder_with_its_schema_file(output):
    assert ensure_tables(output, SCHEMAS, "parquet") == ["samples", "quarantine", "runs"]
    assert ensure_tables(output, SCHEMAS, "parquet") == []
    fs, root = storage.resolve(output)
    for name, schema in SCHEMAS.items():
        data, _ = storage.read_file(fs, storage.join(root, name, PARQUET_SCHEMA_FILE))
        assert pq.read_schema(pa.BufferReader(data)).names == schema.names
        import pyarrow.dataset as ds

        assert ds.dataset(storage.join(root, name), filesystem=fs, format="parquet").count_rows() == 0
