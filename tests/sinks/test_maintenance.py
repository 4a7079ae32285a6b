"""Table health: compaction keeps every row and bucket, a version pinned inside the retention
still reads, vacuum deletes only what the retention allows (never a running job's uncommitted
files), the log is checkpointed, and backfills and resumes work on compacted tables; locally
and on S3."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl import storage
from etl.committer import remove_unfinished_rows
from etl.config import MaintenanceConfig
from etl.sinks.bucket_files import write_bucket_files
from etl.sinks.delta_commits import commit_files, open_table
from etl.sinks.maintenance import log_shape, maintain_tables, table_properties
from schemas.tables import quarantine_schema
from tests.samples_tables import BUCKETS, SCHEMA, commit_samples, sample_rows

SHARDS, ROWS_PER_SHARD = 12, 20
FULL_COLUMNS = ["sample_id", "shard", "row", "bucket", "caption", "quality", "run_id", "latents"]


@pytest.fixture
def output(storage_root):
    """A samples table of one commit per shard: every bucket gets a small file per commit."""
    for shard in range(SHARDS):
        commit_samples(storage_root, sample_rows(shard, ROWS_PER_SHARD))
    return storage_root


def _rows(table) -> pa.Table:
    rows = table.to_pyarrow_table(columns=FULL_COLUMNS)
    return rows.take(pc.sort_indices(rows, [("shard", "ascending"), ("row", "ascending")]))


def _samples(output, version=None):
    from deltalake import DeltaTable

    uri = storage.join(output, "samples")
    return DeltaTable(uri, version=version, storage_options=storage.delta_storage_options(uri))


def _exists(output, path) -> bool:
    fs, root = storage.resolve(storage.join(output, "samples"))
    return storage.exists(fs, storage.join(root, path))


def test_compaction_leaves_one_file_per_bucket_with_every_row_and_a_checkpoint(output):
    before = _samples(output)
    rows_before, version_before = _rows(before), before.version()
    assert len(before.file_uris()) == SHARDS * BUCKETS

    [health] = maintain_tables(output, MaintenanceConfig())

    after = _samples(output)
    assert (health.table, health.files_before, health.files_after) == ("samples", SHARDS * BUCKETS, BUCKETS)
    buckets = pa.table(after.get_add_actions(flatten=True)).column("partition.bucket").to_pylist()
    assert sorted(buckets) == list(range(BUCKETS))  # files never merge across buckets
    assert _rows(after).equals(rows_before)  # values, run_id and tensors unchanged
    assert _rows(_samples(output, version_before)).equals(rows_before)  # pinned, inside the retention
    assert health.version_after == after.version() > version_before
    assert (health.replay_before, health.replay_after) == (SHARDS, 0)
    fs, root = storage.resolve(storage.join(output, "samples"))
    assert storage.exists(fs, storage.join(root, "_delta_log", f"{after.version():020d}.checkpoint.parquet"))
    assert after.metadata().configuration == table_properties(MaintenanceConfig())
    history = after.history(5)
    [compaction] = [entry for entry in history if entry.get("maintenance") == "compaction"]
    assert (compaction["removed_files"], compaction["files"]) == (SHARDS * BUCKETS, BUCKETS)
    assert not any(entry["operation"].startswith("VACUUM") for entry in history)  # nothing expired yet


def test_maintaining_again_changes_no_file(output):
    maintain_tables(output, MaintenanceConfig())
    files = sorted(_samples(output).file_uris())
    [again] = maintain_tables(output, MaintenanceConfig())
    assert sorted(_samples(output).file_uris()) == files
    assert (again.files_before, again.files_after, again.files_vacuumed) == (BUCKETS, BUCKETS, 0)


def test_vacuum_deletes_removed_files_past_the_retention_and_never_an_uncommitted_file(output):
    first = _samples(output)
    version_before, removed = first.version(), pa.table(first.get_add_actions()).column("path").to_pylist()
    maintain_tables(output, MaintenanceConfig(retention_hours=1))
    assert all(_exists(output, path) for path in removed)  # removed a moment ago: kept for pinned readers
    pending = write_bucket_files(sample_rows(SHARDS, 5), SCHEMA, storage.join(output, "samples"), "running-job")

    [health] = maintain_tables(output, MaintenanceConfig(retention_hours=0))

    assert health.files_vacuumed == len(removed) == SHARDS * BUCKETS
    assert not any(_exists(output, path) for path in removed)
    assert all(_exists(output, file["path"]) for file in pending)  # another job's files, not yet committed
    assert _samples(output).to_pyarrow_table(columns=["shard"]).num_rows == SHARDS * ROWS_PER_SHARD
    with pytest.raises(OSError):  # the pinned version was outside this retention
        _samples(output, version_before).to_pyarrow_table()


def test_a_backfill_and_a_resume_on_compacted_tables_replace_exactly_their_shards(output):
    maintain_tables(output, MaintenanceConfig())
    uri = storage.join(output, "samples")
    backfill = sample_rows(3, ROWS_PER_SHARD, run_id="backfill")
    commit_files(uri, SCHEMA, write_bucket_files(backfill, SCHEMA, uri, "backfill"), {"run_id": "backfill"},
                 replace_shards=[3])
    remove_unfinished_rows(output, {"samples": SCHEMA, "quarantine": quarantine_schema()}, "resume", [5])

    rows = _rows(_samples(output))
    per_shard = {count["values"]: count["counts"] for count in pc.value_counts(rows.column("shard")).to_pylist()}
    assert per_shard == {s: ROWS_PER_SHARD for s in range(SHARDS) if s != 5}
    shard_3 = rows.filter(pc.equal(rows.column("shard"), 3))
    assert set(shard_3.column("run_id").to_pylist()) == {"backfill"}
    assert sorted(shard_3.column("row").to_pylist()) == list(range(ROWS_PER_SHARD))
    others = rows.filter(pc.not_equal(rows.column("shard"), 3))
    assert set(others.column("run_id").to_pylist()) == {"run-test"}


def test_tables_created_with_the_properties_get_a_checkpoint_every_interval(storage_root):
    uri = storage.join(storage_root, "samples")
    properties = table_properties(MaintenanceConfig(checkpoint_interval=3))
    for shard in range(7):
        files = write_bucket_files(sample_rows(shard, 4), SCHEMA, uri, f"s{shard}")
        commit_files(uri, SCHEMA, files, {"run_id": "run-test"}, properties=properties)
    fs, root = storage.resolve(uri)
    checkpoints = sorted(name for name in storage.folder_sizes(fs, storage.join(root, "_delta_log"))
                         if ".checkpoint." in name)
    assert checkpoints == [f"{v:020d}.checkpoint.parquet" for v in (2, 5)]
    assert log_shape(uri)[1] == 1  # version 6 is the one entry past the last checkpoint
    assert open_table(uri).metadata().configuration == properties


def test_an_output_without_tables_is_refused_by_name(storage_root):
    with pytest.raises(FileNotFoundError, match=storage_root.rsplit("/", 1)[-1]):
        maintain_tables(storage_root, MaintenanceConfig())
