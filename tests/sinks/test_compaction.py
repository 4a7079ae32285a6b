"""Compaction beside concurrent writers: two compactions planned on one snapshot, a compaction
overtaken by appends, by a shard backfill, or by the loss of its own commit's answer, and
several at once in threads. Each ends with every row exactly once, with its values and run_id;
locally and on S3. (delta-rs's OPTIMIZE, planned twice on one snapshot, doubled every row.)"""

import json
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from etl import storage
from etl.sinks import compaction
from etl.sinks.bucket_files import write_bucket_files
from etl.sinks.compaction import compact, log_actions_after, plan_bins
from etl.sinks.delta_commits import commit_files, open_table
from tests.samples_tables import BUCKETS, SCHEMA, commit_samples, sample_rows

SHARDS, ROWS_PER_SHARD = 8, 12
TARGET = 128 << 20
COLUMNS = ["sample_id", "shard", "row", "caption", "run_id", "latents"]


@pytest.fixture
def uri(storage_root):
    for shard in range(SHARDS):
        commit_samples(storage_root, sample_rows(shard, ROWS_PER_SHARD))
    return storage.join(storage_root, "samples")


def _rows(uri) -> pa.Table:
    rows = open_table(uri).to_pyarrow_table(columns=COLUMNS)
    return rows.take(pc.sort_indices(rows, [("shard", "ascending"), ("row", "ascending")]))


def _file_exists(uri, path) -> bool:
    fs, root = storage.resolve(uri)
    return storage.exists(fs, storage.join(root, path))


def _expected(shards=range(SHARDS), run_ids=None) -> pa.Table:
    run_ids = run_ids or {}
    parts = [sample_rows(s, ROWS_PER_SHARD, run_ids.get(s, "run-test")).select(COLUMNS) for s in shards]
    rows = pa.concat_tables(parts)
    return rows.take(pc.sort_indices(rows, [("shard", "ascending"), ("row", "ascending")]))


def test_compaction_packs_each_bucket_in_arrival_order_and_logs_no_data_change(uri):
    before = _rows(uri)
    table = open_table(uri)
    version, files = table.version(), len(table.file_uris())
    done = compact(uri, table, TARGET)
    assert (done.files_removed, done.files_added, done.attempts, done.replans) == (files, BUCKETS, 1, 0)
    assert _rows(uri).equals(before)
    last, changes = log_actions_after(uri, version)
    assert last == version + 1
    assert changes["add"] == set(done.written) and len(changes["remove"]) == files
    fs, root = storage.resolve(uri)
    entry, _ = storage.read_file(fs, storage.join(root, "_delta_log", f"{version + 1:020d}.json"))
    actions = [json.loads(line) for line in entry.to_pybytes().splitlines()]
    changed = [a[kind]["dataChange"] for a in actions for kind in ("add", "remove") if kind in a]
    assert len(changed) == files + BUCKETS and not any(changed)  # the same rows: streaming readers skip it
    for path in done.written:  # each compacted file holds its bucket's shards in the order they came
        shards = pq.read_table(storage.join(root, path), filesystem=fs, columns=["shard"]).column("shard")
        assert shards.to_pylist() == sorted(shards.to_pylist())
    assert compact(uri, open_table(uri), TARGET).version is None  # nothing left to pack


def test_bins_stay_within_the_target_and_skip_lone_files(uri):
    sizes = pa.table(open_table(uri).get_add_actions(flatten=True)).column("size_bytes").to_pylist()
    target = 3 * max(sizes)
    bins = plan_bins(open_table(uri), target)
    assert bins and all(len(files) > 1 and sum(a["size_bytes"] for a in files) <= target for _, files in bins)
    assert plan_bins(open_table(uri), min(sizes)) == []  # every file is already at the target


def test_two_compactions_planned_on_one_snapshot_leave_every_row_once(uri, monkeypatch):
    before = _rows(uri)
    first, second = open_table(uri), open_table(uri)
    compact(uri, first, TARGET)
    rewritten_by_second = []
    real_rewrite = compaction._rewrite

    def recording_rewrite(uri_, bins):
        removes, adds, written = real_rewrite(uri_, bins)
        rewritten_by_second.extend(written)
        return removes, adds, written

    monkeypatch.setattr(compaction, "_rewrite", recording_rewrite)
    late = compact(uri, second, TARGET)
    assert (late.replans, late.version) == (1, None)  # lost, planned again: nothing left to pack
    assert _rows(uri).equals(before)
    assert rewritten_by_second and not any(_file_exists(uri, p) for p in rewritten_by_second)  # never referenced


def test_appends_that_overtook_a_compaction_cost_it_a_recommit_not_a_rewrite(uri):
    stale = open_table(uri)
    files = len(stale.file_uris())
    commit_samples(uri.rsplit("/", 1)[0], sample_rows(SHARDS, ROWS_PER_SHARD))
    done = compact(uri, stale, TARGET)
    assert (done.attempts, done.replans, done.files_removed) == (2, 0, files)
    assert _rows(uri).to_pylist() == _expected(range(SHARDS + 1)).to_pylist()
    live = set(pa.table(open_table(uri).get_add_actions()).column("path").to_pylist())
    assert set(done.written) <= live and len(live) == 2 * BUCKETS  # compacted files + the append's


def test_a_backfill_that_overtook_a_compaction_keeps_its_rows_alone(uri):
    stale = open_table(uri)
    backfill = sample_rows(3, ROWS_PER_SHARD, run_id="backfill")
    commit_files(uri, SCHEMA, write_bucket_files(backfill, SCHEMA, uri, "backfill"), {"run_id": "backfill"},
                 replace_shards=[3])
    done = compact(uri, stale, TARGET)
    assert done.replans == 1 and done.version is not None
    assert _rows(uri).to_pylist() == _expected(run_ids={3: "backfill"}).to_pylist()


def test_a_commit_that_landed_but_lost_its_answer_counts_as_landed(uri):
    """The first attempt's actions land through another handle (as a PUT whose response was
    lost would); the attempt on the stale handle then fails, finds its adds in the log and stops."""
    from deltalake import CommitProperties

    stale = open_table(uri)
    removes, adds, written = compaction._rewrite(uri, plan_bins(stale, TARGET))
    other = open_table(uri)
    other.create_write_transaction(removes + adds, mode="append", schema=other.schema(), partition_by=["bucket"],
                                   commit_properties=CommitProperties(max_commit_retries=0))
    done = compaction.Compaction()
    assert compaction._commit_until_removed_elsewhere(uri, stale, removes, adds, done) == "landed"
    assert done.attempts == 1 and all(_file_exists(uri, p) for p in written)
    assert _rows(uri).to_pylist() == _expected().to_pylist()


def test_compactions_and_appends_racing_in_threads_keep_every_row_once(uri):
    errors = []

    def run(work):
        try:
            work()
        except Exception as exc:  # reported below, with the thread's work
            errors.append(repr(exc))

    root = uri.rsplit("/", 1)[0]
    work = [lambda: compact(uri, open_table(uri), TARGET) for _ in range(3)]
    work += [lambda s=s: commit_samples(root, sample_rows(s, ROWS_PER_SHARD)) for s in range(SHARDS, SHARDS + 3)]
    threads = [threading.Thread(target=run, args=(w,)) for w in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    got, want = _rows(uri), _expected(range(SHARDS + 3))
    ids = got.column("sample_id").to_pylist()
    assert (len(ids), len(set(ids))) == (want.num_rows, want.num_rows)
    assert got.to_pylist() == want.to_pylist()


def test_an_unpartitioned_table_is_one_partition(storage_root):
    """The runs ledger: plain appends, no bucket column."""
    from deltalake import write_deltalake

    uri = storage.join(storage_root, "runs")
    for run in range(5):
        write_deltalake(uri, pa.table({"run_id": [f"r{run}"] * 3, "shard": [run, run + 1, run + 2]}), mode="append",
                        storage_options=storage.delta_storage_options(uri))
    done = compact(uri, open_table(uri), TARGET)
    after = open_table(uri)
    assert (done.files_removed, done.files_added, len(after.file_uris())) == (5, 1, 1)
    assert "/" not in done.written[0]  # in the table's root, as its other files
    rows = after.to_pyarrow_table().sort_by([("run_id", "ascending"), ("shard", "ascending")])
    assert rows.column("shard").to_pylist() == [s for run in range(5) for s in (run, run + 1, run + 2)]
