"""The driver's commit loop on its own: cadence, ledger, row accounting and the error budget."""

import json
import uuid

import pyarrow as pa
import pytest

from etl import ledger
from etl.committer import CommitCadence, ErrorBudgetExceeded, RowAccountingError, RunCommitter
from etl.sinks.delta_commits import open_table
from etl.sinks.bucket_files import write_bucket_files
from etl.stages.rows import COUNTS, FILE
from schemas.tables import quarantine_schema, runs_schema

SCHEMAS = {"samples": quarantine_schema(), "quarantine": quarantine_schema(), "runs": runs_schema()}


def write_output(output, shard, rows, bad=0, reason="decode: not a decodable image"):
    """What the write stage returns for `rows` rows of `shard` (the last `bad` of them failed)."""
    table = pa.table({"sample_id": [f"{shard}:{r}" for r in rows], "shard": pa.array([shard] * len(rows), pa.int64()),
                      "row": pa.array(rows, pa.int64()), "bucket": pa.array([r % 2 for r in rows], pa.int32()),
                      "stage": ["decode"] * len(rows), "error_class": ["x"] * len(rows), "error": ["e"] * len(rows),
                      "run_id": ["r"] * len(rows)}, schema=SCHEMAS["samples"])
    files = write_bucket_files(table, SCHEMAS["samples"], f"{output}/samples", uuid.uuid4().hex)
    counts = {"shards": {str(shard): [len(rows) - bad, bad, 0.0]}, "reasons": {reason: bad} if bad else {}}
    return [(FILE, "samples", f) for f in files] + [(COUNTS, None, counts)]


def committer(output, expected, mode="incremental", every_shards=1, fraction=0.5):
    return RunCommitter(str(output), SCHEMAS, "run-1", json.dumps({"input": "in"}), expected, format="delta",
                        mode=mode, cadence=CommitCadence(every_shards, 60.0, 1000), max_error_fraction=fraction)


def feed(run, outputs):
    for kind, table, payload in outputs:
        if kind == COUNTS:
            run.receive_counts(payload)
        else:
            run.receive_file(table, payload)


def test_a_round_commits_files_then_ledgers_only_finished_shards(tmp_path):
    run = committer(tmp_path, {0: 4, 1: 4, 2: 0})
    feed(run, write_output(tmp_path, 0, [0, 1]))  # shard 0 half done: nothing due yet
    assert open_table(f"{tmp_path}/samples") is None
    feed(run, write_output(tmp_path, 0, [2, 3]))  # shard 0 finished: a round
    assert open_table(f"{tmp_path}/samples").to_pyarrow_table().num_rows == 4
    assert ledger.finished_shards(str(tmp_path), "delta", "in") == {0: "run-1", 2: "run-1"}  # 2 is empty
    feed(run, write_output(tmp_path, 1, [0, 1, 2, 3]))
    run.finish()
    assert sorted(ledger.finished_shards(str(tmp_path), "delta", "in")) == [0, 1, 2]
    assert ledger.finished_shards(str(tmp_path), "delta", "another input") == {}


def test_rows_beyond_a_shards_declared_count_are_refused_uncommitted(tmp_path):
    run = committer(tmp_path, {0: 4}, every_shards=5)
    feed(run, write_output(tmp_path, 0, [0, 1, 2]))
    with pytest.raises(RowAccountingError, match="shard 0: 5 rows arrived, its index declares 4"):
        feed(run, write_output(tmp_path, 0, [1, 2]))  # a repeated write of rows 1-2
    assert len(run.pending["samples"]) == 2  # the first output's files only
    assert open_table(f"{tmp_path}/samples") is None


def test_a_shard_short_of_rows_fails_the_run_and_is_not_ledgered(tmp_path):
    run = committer(tmp_path, {0: 4, 1: 2})
    feed(run, write_output(tmp_path, 1, [0, 1]))
    feed(run, write_output(tmp_path, 0, [0, 1, 2]))
    with pytest.raises(RowAccountingError, match="shard 0: 3 of 4"):
        run.finish()
    assert ledger.finished_shards(str(tmp_path), "delta", "in") == {1: "run-1"}


def test_the_error_budget_stops_the_run_as_soon_as_failure_is_certain(tmp_path):
    run = committer(tmp_path, {0: 10, 1: 10}, fraction=0.1)
    feed(run, write_output(tmp_path, 0, list(range(10)), bad=2))  # 2 of 20 = 10%: still within
    with pytest.raises(ErrorBudgetExceeded) as failure:
        feed(run, write_output(tmp_path, 1, [0, 1], bad=1))
    message = str(failure.value)
    assert "3 of 20 samples failed" in message and "3 x decode: not a decodable image" in message
    assert sorted(ledger.finished_shards(str(tmp_path), "delta", "in")) == [0]  # consistent: shard 0 only


def test_replace_mode_commits_nothing_until_the_end(tmp_path):
    first = committer(tmp_path, {0: 2, 1: 2})
    feed(first, write_output(tmp_path, 0, [0, 1]) + write_output(tmp_path, 1, [0, 1]))
    first.finish()
    version = open_table(f"{tmp_path}/samples").version()
    backfill = committer(tmp_path, {1: 2}, mode="replace")
    feed(backfill, write_output(tmp_path, 1, [0, 1]))
    assert open_table(f"{tmp_path}/samples").version() == version
    backfill.finish()
    table = open_table(f"{tmp_path}/samples")
    assert table.version() == version + 1
    assert sorted(table.to_pyarrow_table().column("sample_id").to_pylist()) == ["0:0", "0:1", "1:0", "1:1"]


def test_resume_clean_up_removes_only_unfinished_shards_rows(tmp_path):
    from etl.committer import remove_unfinished_rows

    crashed = committer(tmp_path, {0: 2, 1: 4}, every_shards=1)
    feed(crashed, write_output(tmp_path, 0, [0, 1]))  # shard 0 finished and ledgered
    feed(crashed, write_output(tmp_path, 1, [0, 1]))  # half of shard 1 ...
    crashed.commit_round()                             # ... committed, then the driver dies
    assert open_table(f"{tmp_path}/samples").to_pyarrow_table().num_rows == 4
    versions = remove_unfinished_rows(str(tmp_path), SCHEMAS, "run-2", [1])
    assert versions["quarantine"] is None  # no quarantine rows: nothing to do
    ids = sorted(open_table(f"{tmp_path}/samples").to_pyarrow_table().column("sample_id").to_pylist())
    assert ids == ["0:0", "0:1"]
    assert open_table(f"{tmp_path}/samples").history(1)[0]["reason"].startswith("resume")


def test_a_run_with_nothing_quarantined_still_leaves_an_empty_quarantine_table(tmp_path):
    run = committer(tmp_path, {0: 2})
    feed(run, write_output(tmp_path, 0, [0, 1]))  # the only round: samples rows, no failure
    run.finish()
    for name, rows in (("samples", 2), ("quarantine", 0), ("runs", 1)):
        table = open_table(f"{tmp_path}/{name}")
        assert table is not None and table.to_pyarrow_table().num_rows == rows, name
    assert open_table(f"{tmp_path}/samples").version() == 0  # a table given rows is created with them


def _commit_a_whole_run(output, shards, start_at, endpoint_env):
    import os
    import time

    os.environ.update(endpoint_env)
    run = RunCommitter(output, SCHEMAS, f"run-{shards[0]}", json.dumps({"input": "in"}), {s: 3 for s in shards},
                       format="delta", mode="incremental", cadence=CommitCadence(1, 60.0, 1000),
                       max_error_fraction=1.0)
    outputs = [write_output(output, shard, [0, 1, 2]) for shard in shards]
    open_table(f"{output}/samples")  # deltalake imported, storage warm: the first rounds meet
    time.sleep(max(0.0, start_at - time.time()))
    for output_of_shard in outputs:
        feed(run, output_of_shard)
    run.finish()


def test_two_first_runs_at_once_land_every_row_once(tmp_path):
    import time

    from tests.sinks.test_delta_commits import run_in_processes

    start_at = time.time() + 8
    run_in_processes(_commit_a_whole_run, [(str(tmp_path), shards, start_at) for shards in ([0, 1], [2, 3])])
    ids = open_table(f"{tmp_path}/samples").to_pyarrow_table().column("sample_id").to_pylist()
    assert sorted(ids) == [f"{s}:{r}" for s in range(4) for r in range(3)]
    assert sorted(ledger.finished_shards(str(tmp_path), "delta", "in")) == [0, 1, 2, 3]
    for name in ("samples", "quarantine", "runs"):
        history = open_table(f"{tmp_path}/{name}").history()
        assert [h["operation"] for h in history].count("CREATE TABLE") == 1, (name, history)
