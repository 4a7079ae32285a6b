"""Appending worker-written files and replacing a set of shards' rows, each in one Delta commit,
on local disk and on the loopback S3 server, with concurrent writers in separate processes."""

import multiprocessing
import time

import pyarrow as pa
import pytest

from etl import storage
from etl.sinks.delta_commits import commit_files, open_table
from etl.sinks.bucket_files import write_bucket_files
from schemas.tables import quarantine_schema

SCHEMA = quarantine_schema()  # small, and has sample_id, shard, row, bucket, run_id


def rows(shards, run_id, per_shard=6, buckets=3):
    shard = [s for s in shards for _ in range(per_shard)]
    row = [r for _ in shards for r in range(per_shard)]
    return pa.table({
        "sample_id": [f"{s}:{r}" for s, r in zip(shard, row)], "shard": pa.array(shard, pa.int64()),
        "row": pa.array(row, pa.int64()), "bucket": pa.array([(s + r) % buckets for s, r in zip(shard, row)], pa.int32()),
        "stage": ["read"] * len(shard), "error_class": ["x"] * len(shard), "error": [run_id] * len(shard),
        "run_id": [run_id] * len(shard)}, schema=SCHEMA)


def write(uri, shards, run_id, tag):
    return write_bucket_files(rows(shards, run_id), SCHEMA, uri, tag)


def state(uri, version=None):
    from deltalake import DeltaTable

    table = DeltaTable(uri, version=version, storage_options=storage.delta_storage_options(uri))
    got = table.to_pyarrow_table(columns=["sample_id", "shard", "run_id"]).to_pylist()
    return sorted((r["shard"], r["sample_id"], r["run_id"]) for r in got)


@pytest.fixture
def table_uri(storage_root):
    return storage_root + "/table"


def test_replace_swaps_exactly_those_shards_in_one_commit(table_uri):
    # two files that straddle shard boundaries: {0,1,2} and {3,4}
    commit_files(table_uri, SCHEMA, write(table_uri, [0, 1, 2], "old", "a"), {"run_id": "old"})
    before = commit_files(table_uri, SCHEMA, write(table_uri, [3, 4], "old", "b"), {"run_id": "old"})
    after = commit_files(table_uri, SCHEMA, write(table_uri, [2, 3], "new", "c"), {"run_id": "new"},
                         replace_shards=[2, 3])
    assert after == before + 1
    got = state(table_uri)
    assert len(got) == len(set(got)) == 5 * 6
    assert {(s, run) for s, _, run in got} == {(0, "old"), (1, "old"), (2, "new"), (3, "new"), (4, "old")}
    assert state(table_uri, before) == sorted((s, f"{s}:{r}", "old") for s in range(5) for r in range(6))
    history = open_table(table_uri).history(1)[0]
    assert history["run_id"] == "new" and history["removed_files"] > 0 and history["rewritten_files"] > 0


def test_replace_with_no_files_removes_the_shards_rows(tmp_path):
    uri = str(tmp_path / "table")
    commit_files(uri, SCHEMA, write(uri, [0, 1, 2], "old", "a"), {"run_id": "old"})
    commit_files(uri, SCHEMA, [], {"run_id": "resume"}, replace_shards=[1])
    assert {s for s, _, _ in state(uri)} == {0, 2}
    assert commit_files(uri, SCHEMA, [], {"run_id": "resume"}, replace_shards=[7]) is None  # nothing to do


def _replace_repeatedly(uri, shards, rounds, tag, endpoint_env):
    import os

    os.environ.update(endpoint_env)
    for i in range(rounds):
        files = write_bucket_files(rows(shards, f"{tag}{i}"), SCHEMA, uri, f"{tag}-{i}")
        commit_files(uri, SCHEMA, files, {"run_id": f"{tag}{i}"}, replace_shards=shards)


def test_concurrent_replacements_of_disjoint_ranges_both_land(table_uri):
    """Two processes replace neighbouring ranges 8 times each while files straddle the border:
    every shard ends with exactly its rows, from the writer that owns it (conditional PUTs and
    re-planning on conflict; a lost update would duplicate or drop the straddling rows)."""

    commit_files(table_uri, SCHEMA, write(table_uri, list(range(8)), "seed", "seed"), {"run_id": "seed"})
    started = time.monotonic()
    run_in_processes(_replace_repeatedly, [(table_uri, shards, 8, tag) for shards, tag in
                                           (([0, 1, 2, 3], "left"), ([4, 5, 6, 7], "right"))])
    got = state(table_uri)
    assert len(got) == len(set(got)) == 8 * 6, time.monotonic() - started
    owners = {s: run for s, _, run in got}
    assert {s: owners[s] for s in range(4)} == {s: "left7" for s in range(4)}
    assert {s: owners[s] for s in range(4, 8)} == {s: "right7" for s in range(4, 8)}
    assert open_table(table_uri).version() == 16  # seed + 8 + 8 commits, none lost


def run_in_processes(target, argument_lists):
    """Run `target(*arguments, aws_env)` in one spawned process per argument list, all at once;
    each must exit cleanly."""
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=target, args=(*arguments, env)) for arguments in argument_lists]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
        assert worker.exitcode == 0


def test_concurrent_appends_lose_nothing(table_uri):
    run_in_processes(_append_repeatedly, [(table_uri, base, 10) for base in (0, 100)])
    got = state(table_uri)
    assert len(got) == len(set(got)) == 20 * 6
    assert open_table(table_uri).version() == 19


def test_a_table_created_by_another_writer_after_our_look_gets_our_files_appended(table_uri,
                                                                                another_writer_after_our_look):
    """The interleaving two first commits can meet (seen once under load in the concurrent test
    below): we find no table, another writer creates it, then our create fails. Our files must
    still land, in the next version."""
    theirs = write(table_uri, [0], "theirs", "theirs")
    another_writer_after_our_look(lambda: commit_files(table_uri, SCHEMA, theirs, {"run_id": "theirs"}))
    version = commit_files(table_uri, SCHEMA, write(table_uri, [1], "ours", "ours"), {"run_id": "ours"})
    assert version == 1
    assert {(s, run) for s, _, run in state(table_uri)} == {(0, "theirs"), (1, "ours")}


def _append_repeatedly(uri, base, rounds, endpoint_env):
    import os

    os.environ.update(endpoint_env)
    for i in range(rounds):
        files = write_bucket_files(rows([base + i], "append"), SCHEMA, uri, f"{base}-{i}")
        commit_files(uri, SCHEMA, files, {"run_id": "append"})


def test_a_replacement_planned_before_a_compaction_lands_after_it_exactly_once(table_uri, monkeypatch):
    """A backfill plans its replacement; table maintenance compacts the files it means to remove
    and commits first. delta-rs's conflict check ignores a compaction's removes (they change no
    data), so a rebased replacement removed nothing and the shards' old rows stayed beside the
    new ones. It must be planned again on the compacted snapshot instead."""
    from etl.sinks import delta_commits
    from etl.sinks.compaction import compact

    for i, shards in enumerate(([0, 1], [2, 3], [4, 5])):
        commit_files(table_uri, SCHEMA, write(table_uri, shards, "old", f"o{i}"), {"run_id": "old"})
    planned = delta_commits._plan_replacement
    compacted = []

    def plan_then_compact(*args, **kwargs):
        plan = planned(*args, **kwargs)
        if not compacted:  # the first attempt's plan goes stale: maintenance lands in between
            compacted.append(compact(table_uri, open_table(table_uri), 128 << 20).files_removed)
        return plan

    monkeypatch.setattr(delta_commits, "_plan_replacement", plan_then_compact)
    commit_files(table_uri, SCHEMA, write(table_uri, [2, 3], "new", "n"), {"run_id": "new"}, replace_shards=[2, 3])
    assert compacted and compacted[0] > 0
    got = state(table_uri)
    assert len(got) == len(set(got)) == 6 * 6, "a shard's rows landed twice or went missing"
    assert {(s, run) for s, _, run in got} == {(0, "old"), (1, "old"), (2, "new"), (3, "new"), (4, "old"), (5, "old")}
