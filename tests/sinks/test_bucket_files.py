import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pytest

from etl.sinks.bucket_files import conform, write_bucket_files
from etl.sinks.delta_commits import commit_files
from etl.sinks.partitioning import buckets_of
from schemas.tables import quarantine_schema


def _quarantine_rows(count, buckets=4, run_id="run-1", start=0):
    ids = pa.array([f"id-{i}" for i in range(start, start + count)])
    return pa.table({
        "sample_id": ids, "shard": pa.array(np.arange(start, start + count) // 10),
        "row": pa.array(np.arange(start, start + count) % 10), "bucket": buckets_of(ids, buckets),
        "stage": pa.array(["decode"] * count), "error_class": pa.array(["frame 0"] * count),
        "error": pa.array(["decode: frame 0: not a decodable image"] * count),
        "run_id": pa.array([run_id] * count),
    })


def test_conform_names_missing_and_unexpected_columns_and_nulls():
    rows = _quarantine_rows(3)
    with pytest.raises(ValueError, match=r"missing \['stage'\], unexpected \['extra'\]"):
        conform(rows.drop_columns(["stage"]).append_column("extra", pa.array([1, 2, 3])), quarantine_schema())
    nulls = rows.set_column(rows.schema.get_field_index("error"), "error", pa.array([None, "x", "y"], pa.string()))
    with pytest.raises(ValueError, match=r"column 'error' holds 1 null\(s\)"):
        conform(nulls, quarantine_schema())


def test_conform_casts_only_the_columns_that_differ_and_keeps_tensor_lists_intact():
    from tests.samples_tables import SCHEMA, sample_rows

    # pyarrow 25 segfaults casting list<fixed_shape_tensor> (even to its own type), which
    # Table.cast does to every column once any column needs a cast
    rows = sample_rows(0, 12)
    narrow = rows.set_column(rows.schema.get_field_index("row"), "row", pa.compute.cast(rows.column("row"), pa.int32()))
    conformed = conform(pa.concat_tables([narrow.slice(0, 5), narrow.slice(5)]), SCHEMA)
    assert conformed.schema == SCHEMA and conformed.equals(rows)
    with pytest.raises(ValueError, match="column 'row'"):
        conform(rows.set_column(rows.schema.get_field_index("row"), "row", pa.array(["x"] * 12)), SCHEMA)


def _written_by_tasks(rows, uri, run_id, tasks=3):
    """The production path: Ray tasks write their rows' bucket files, only metadata comes back."""
    import ray.data

    def write(batch):
        files = write_bucket_files(batch, quarantine_schema(), uri, f"{run_id}-{uuid.uuid4().hex[:8]}")
        return pa.table({"file": [json.dumps(f) for f in files]})

    written = ray.data.from_arrow(rows).repartition(tasks).map_batches(write, batch_format="pyarrow", batch_size=None)
    return [json.loads(row["file"]) for row in written.take_all()]


def test_delta_appends_commit_worker_written_files_per_bucket(tmp_path, ray_local):
    from deltalake import DeltaTable

    uri = str(tmp_path / "quarantine")
    for run, start in (("run-1", 0), ("run-2", 100)):
        files = _written_by_tasks(_quarantine_rows(100, run_id=run, start=start), uri, run)
        commit_files(uri, quarantine_schema(), files, {"run_id": run})
        assert sum(f["rows"] for f in files) == 100
        per_bucket = {}
        for f in files:
            per_bucket[f["bucket"]] = per_bucket.get(f["bucket"], 0) + 1
        assert max(per_bucket.values()) <= 3  # at most one file per bucket per write task
    table = DeltaTable(uri)
    assert table.version() == 1  # one commit per write
    rows = table.to_pyarrow_table()
    assert rows.num_rows == 200 and sorted(set(rows.column("run_id").to_pylist())) == ["run-1", "run-2"]
    assert sorted(rows.column("sample_id").to_pylist()) == sorted(f"id-{i}" for i in range(200))
    history = table.history()
    assert {h.get("run_id") for h in history if "run_id" in h} == {"run-1", "run-2"}


def test_parquet_format_is_hive_partitioned(tmp_path, ray_local):
    uri = str(tmp_path / "q")
    files = _written_by_tasks(_quarantine_rows(50, buckets=2), uri, "r")
    dataset = pds.dataset(uri, format="parquet", partitioning="hive")
    assert dataset.to_table().num_rows == 50 == sum(f["rows"] for f in files)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["bucket=0", "bucket=1"]
    assert {f["path"].split("/")[0] for f in files} == {"bucket=0", "bucket=1"}


def test_rows_that_do_not_conform_write_no_file(tmp_path):
    from deltalake import DeltaTable

    uri = str(tmp_path / "q")
    bad = _quarantine_rows(20).drop_columns(["stage"])
    with pytest.raises(ValueError, match=r"missing \['stage'\]"):
        write_bucket_files(bad, quarantine_schema(), uri, "r")
    assert not DeltaTable.is_deltatable(uri)
    assert not [p for p in tmp_path.rglob("*.parquet")]


def test_float_tensors_are_written_without_a_dictionary_and_the_ids_with_one(tmp_path):
    """Embeddings and latents never repeat: a dictionary for them is built only to be dropped
    (Parquet's builder held ~70 MiB for 2 MB of 10-frame latents). Ids and strings keep theirs."""
    import pyarrow.parquet as pq

    from tests.samples_tables import SCHEMA, sample_rows

    rows = sample_rows(shard=3, count=40)
    files = write_bucket_files(rows, SCHEMA, str(tmp_path / "samples"), "t")
    assert files and sum(f["rows"] for f in files) == 40
    metadata = pq.ParquetFile(tmp_path / "samples" / files[0]["path"]).metadata
    encodings = {metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).encodings
                 for i in range(metadata.num_columns)}
    tensors = [path for path in encodings if path.split(".")[0] in ("embedding", "frame_embeddings", "latents")]
    assert tensors and all("PLAIN_DICTIONARY" not in encodings[p] and "RLE_DICTIONARY" not in encodings[p]
                           for p in tensors), encodings
    assert {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(encodings["sample_id"]), encodings
    # and the tensors read back exactly as written
    import pyarrow.compute as pc

    from schemas.tables import to_storage

    back = pq.read_table(tmp_path / "samples" / files[0]["path"])
    written = to_storage(rows).filter(pc.equal(rows.column("bucket"), files[0]["bucket"]))
    for name in ("sample_id", "embedding", "frame_embeddings", "latents"):
        assert back.column(name).to_pylist() == written.column(name).to_pylist(), name
