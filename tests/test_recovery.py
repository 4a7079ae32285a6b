"""Crashes, resume, backfills, a killed worker, the error budget and failing storage, end to end:
the job runs as `python -m jobs.curate` processes against the loopback S3 server, and processes
are really killed. Every test ends by checking that each input sample is in `samples` or
`quarantine` exactly once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from etl import ledger, storage
from etl.mds import MDSWriter
from etl.sinks.delta_commits import open_table
from etl.synthetic import jpeg_frames
from tests.curate_process import REPO, curate, finish
from tests.s3_server import SECRET_KEY, free_port

SAMPLES = 96
BROKEN = {17: "truncated", 58: "garbage"}


@pytest.fixture(scope="module")
def source(s3_server, tmp_path_factory):
    """96 samples in 12 shards on S3 (two broken samples), and the index's per-shard counts."""
    local = tmp_path_factory.mktemp("mds")
    pool = jpeg_frames(6, 64, 48)
    with MDSWriter(str(local), columns={"id": "str", "frames": "jpeg_array"},
                   size_limit=8 * 2 * len(pool[0]) + 8 * 40) as writer:
        for i in range(SAMPLES):
            frames = [pool[(i + k) % 6] for k in range(2)]
            if BROKEN.get(i) == "truncated":
                frames[1] = frames[1][:200]
            if BROKEN.get(i) == "garbage":
                frames[0] = b"not an image at all"
            writer.write({"id": f"s{i:03d}", "frames": frames})
    counts = {i: s["samples"] for i, s in enumerate(json.loads((local / "index.json").read_text())["shards"])}
    assert len(counts) >= 10, counts
    uri = s3_server.create_bucket("recovery-input-" + os.urandom(3).hex()) + "/mds"
    s3_server.put_tree(local, uri)
    return uri, counts, local


@pytest.fixture(scope="module")
def config_file(tiny, tmp_path_factory):
    config = yaml.safe_load((REPO / "jobs/configs/local.yaml").read_text())
    config["read"].update({"id_column": "id"})
    config["frames"].update({"min_pixels": 32 * 32, "max_pixels": 64 * 64, "crop_size": 64})
    config["models"].update({"build_tiny_if_missing": False})
    # the transformers captioner (vLLM's engine start costs a minute a run): the killed-engine
    # test runs vLLM (tests/test_pipeline_vllm.py)
    config["models"]["captioner"].update({"model": str(tiny["qwen3_vl"]), "max_new_tokens": 8,
                                          "backend": "transformers"})
    config["models"]["embedder"].update({"model": str(tiny["clip"]), "batch_size": 8})
    config["models"]["vae"].update({"model": str(tiny["vae"])})
    config["sink"].update({"buckets": 4, "rows_per_write": 8, "commit_every_shards": 1, "commit_every_files": 8})
    path = tmp_path_factory.mktemp("config") / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def delta(uri, version=None):
    from deltalake import DeltaTable

    return DeltaTable(uri, version=version, storage_options=storage.delta_storage_options(uri))


def rows(output, table, columns=("sample_id", "shard", "row", "run_id")):
    return delta(f"{output}/{table}").to_pyarrow_table(columns=list(columns)).to_pylist()


def assert_exactly_once(output, counts):
    """Every (shard, row) of the index exactly once across both tables; ids unique. (Samples of
    an unreadable shard have no readable id column: their sample_id is derived from shard:row.)"""
    samples, quarantine = rows(output, "samples"), rows(output, "quarantine")
    both = samples + quarantine
    places = [(r["shard"], r["row"]) for r in both]
    assert len(places) == len(set(places)) == SAMPLES, (len(places), len(set(places)))
    assert set(places) == {(shard, row) for shard, n in counts.items() for row in range(n)}
    assert len({r["sample_id"] for r in both}) == SAMPLES
    return samples, quarantine


@pytest.fixture(scope="module")
def cluster(ray_local):
    return ray_local.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def resumed(s3_server, source, config_file, cluster):
    """A run SIGKILLed after its first commit rounds, then the same command with --resume."""
    source_uri, counts, _ = source
    output = s3_server.create_bucket("recovery-out-" + os.urandom(3).hex()) + "/tables"
    started = time.monotonic()
    job = curate(config_file, source_uri, output, ray_address=cluster)
    finished = {}
    while not finished:
        assert job.poll() is None, "the run ended before it could be killed:\n" + job.stdout.read()[-3000:]
        time.sleep(0.2)
        finished = ledger.finished_shards(output, "delta", source_uri)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    killed_after = time.monotonic() - started
    finished = ledger.finished_shards(output, "delta", source_uri)
    assert 0 < len(finished) < len(counts)
    started = time.monotonic()
    log = finish(curate(config_file, source_uri, output, "--resume", ray_address=cluster))
    return {"output": output, "finished_before": finished, "killed_after": killed_after,
            "resume_seconds": time.monotonic() - started, "log": log}


def test_resume_after_sigkill_finishes_with_every_sample_exactly_once(resumed, source):
    source_uri, counts, _ = source
    output = resumed["output"]
    assert f"resume: {len(resumed['finished_before'])} shard(s) already finished, skipped" in resumed["log"]
    samples, quarantine = assert_exactly_once(output, counts)
    assert {r["sample_id"] for r in quarantine} == {f"s{i:03d}" for i in BROKEN}
    # shards the killed run finished were not redone: their rows keep the killed run's run_id
    for r in samples + quarantine:
        if r["shard"] in resumed["finished_before"]:
            assert r["run_id"] == resumed["finished_before"][r["shard"]]
    assert set(ledger.finished_shards(output, "delta", source_uri)) == set(counts)
    print(f"\nFIGURES resume: killed after {resumed['killed_after']:.1f}s with {len(resumed['finished_before'])}/"
          f"{len(counts)} shards finished; --resume took {resumed['resume_seconds']:.1f}s")


def test_credentials_are_never_logged_or_stored(resumed, s3_server):
    assert SECRET_KEY not in resumed["log"]
    bucket = resumed["output"][len("s3://"):].split("/")[0]
    client = s3_server.client()
    for key in s3_server.keys(resumed["output"]):
        assert SECRET_KEY.encode() not in client.get_object(Bucket=bucket, Key=key)["Body"].read(), key


class SnapshotWatcher(threading.Thread):
    """Reads every new version of `samples` while backfills run and checks each snapshot: each
    good sample exactly once, and each backfilled range either all its old rows (each with the
    run_id it had before) or all new rows from one new run, never a mix."""

    def __init__(self, uri, before, ranges):
        super().__init__(daemon=True)
        self.uri, self.before, self.ranges = uri, before, ranges  # before: sample_id -> (shard, run_id)
        self.stop, self.versions, self.problems = threading.Event(), [], []

    def run(self):
        while not self.stop.is_set():
            table = delta(self.uri)
            if not self.versions or table.version() != self.versions[-1]:
                self.versions.append(table.version())
                got = table.to_pyarrow_table(columns=["sample_id", "shard", "run_id"]).to_pylist()
                ids = [r["sample_id"] for r in got]
                if len(ids) != len(set(ids)) or set(ids) != set(self.before):
                    self.problems.append((table.version(), "duplicates or missing", len(ids), len(set(ids))))
                for shards in self.ranges:
                    inside = [r for r in got if r["shard"] in shards]
                    all_old = all(r["run_id"] == self.before[r["sample_id"]][1] for r in inside)
                    new_runs = {r["run_id"] for r in inside}
                    all_new = len(new_runs) == 1 and not new_runs & {self.before[r["sample_id"]][1] for r in inside}
                    if not (all_old or all_new):
                        self.problems.append((table.version(), f"shards {shards} half replaced", new_runs))
            time.sleep(0.05)


def test_two_concurrent_backfills_replace_exactly_their_ranges_atomically(resumed, source, config_file):
    source_uri, counts, _ = source
    output = resumed["output"]
    before = {r["sample_id"]: (r["shard"], r["run_id"]) for r in rows(output, "samples")}
    ranges = [range(2, 5), range(6, 9)]
    watcher = SnapshotWatcher(f"{output}/samples", before, ranges)
    watcher.start()
    # two drivers, each with its own local Ray: they run at once, commit at once
    jobs = [curate(config_file, source_uri, output, "--shards", f"{r.start}:{r.stop}", ray_address="local")
            for r in ranges]
    logs = [finish(job) for job in jobs]
    time.sleep(0.5)
    watcher.stop.set()
    watcher.join(30)
    assert not watcher.problems, watcher.problems[:5]
    assert len(watcher.versions) >= 3, watcher.versions  # saw the state before and after both commits
    for log in logs:
        assert "(replace, 3 shards)" in log
    samples, _ = assert_exactly_once(output, counts)
    new_owner = {}
    for r in samples:
        shard, old_run = before[r["sample_id"]]
        inside = [i for i, span in enumerate(ranges) if shard in span]
        if inside:
            assert r["run_id"] != old_run
            new_owner.setdefault(inside[0], set()).add(r["run_id"])
        else:
            assert r["run_id"] == old_run  # other shards keep their data and run_id
    assert all(len(owners) == 1 for owners in new_owner.values()) and len(new_owner) == 2
    finished = ledger.finished_shards(output, "delta", source_uri)
    assert {s: finished[s] for s in range(2, 5)} == {s: next(iter(new_owner[0])) for s in range(2, 5)}


def _parents(process):
    import psutil

    try:
        return process.parents()
    except psutil.Error:  # gone meanwhile
        return []


def test_a_killed_worker_is_retried_with_the_same_outcome(resumed, source, config_file, s3_server, ray_local):
    import psutil

    from etl import pipeline
    from etl.config import load_config

    source_uri, counts, _ = source
    output = s3_server.create_bucket("recovery-worker-" + os.urandom(3).hex()) + "/tables"
    config = load_config(str(config_file), {"input": source_uri, "output": output})
    killed = []

    def kill_the_encoder_once_it_works():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for process in psutil.process_iter(["name", "cmdline"]):
                title = f"{process.info['name']} {' '.join(process.info['cmdline'] or [])}"
                # this test's own Ray only: a machine-wide match once killed another job's encoder
                if "MapBatches(EncodeStage)" in title and os.getpid() in {p.pid for p in _parents(process)}:
                    time.sleep(2.0)  # past loading its models: encoding blocks
                    process.send_signal(signal.SIGKILL)
                    killed.append(time.time())
                    return
            time.sleep(0.05)

    started = time.monotonic()
    killer = threading.Thread(target=kill_the_encoder_once_it_works, daemon=True)
    killer.start()
    summary = pipeline.run(config)
    full_seconds = time.monotonic() - started
    killer.join(10)
    assert killed, "no encoder process was found to kill"
    assert summary.per_shard and time.time() > killed[0]
    rounds_after_kill = sum(t > killed[0] for t in summary.commit_times)
    assert rounds_after_kill >= 1, "the run ended before the kill: not mid-run"
    samples, _ = assert_exactly_once(output, counts)
    captions = {r["sample_id"]: r["caption"] for r in rows(output, "samples", ("sample_id", "caption"))}
    reference = {r["sample_id"]: r["caption"] for r in rows(resumed["output"], "samples", ("sample_id", "caption"))}
    assert captions == reference  # same seed, same outcome, whichever process captioned
    print(f"\nFIGURES full run with a killed encoder actor: {full_seconds:.1f}s; resume after SIGKILL: "
          f"{resumed['resume_seconds']:.1f}s")


def test_over_the_error_budget_the_run_fails_with_its_causes_and_stays_consistent(source, config_file, tmp_path,
                                                                                   ray_local):
    from etl import pipeline
    from etl.committer import ErrorBudgetExceeded
    from etl.config import load_config

    source_uri, counts, _ = source
    output = str(tmp_path / "tables")
    config = load_config(str(config_file), {"input": source_uri, "output": output, "max_error_fraction": 0.01})
    with pytest.raises(ErrorBudgetExceeded) as failure:
        pipeline.run(config)
    message = str(failure.value)
    assert "over max_error_fraction=0.01" in message and "causes:" in message
    assert "decode: not a decodable image" in message or "read: no readable PNG or JPEG header" in message
    finished = ledger.finished_shards(output, "delta", source_uri)
    committed = {t: rows(output, t) if open_table(f"{output}/{t}") else [] for t in ("samples", "quarantine")}
    for got in committed.values():
        assert len({r["sample_id"] for r in got}) == len(got)
    # every shard the ledger calls finished is complete; the rest is left to --resume
    for shard in finished:
        assert sum(r["shard"] == shard for got in committed.values() for r in got) == counts[shard]
    print(f"\nFIGURES error budget: stopped with {len(finished)} shard(s) finished; {message.splitlines()[0]}")


@pytest.fixture
def faulty_endpoint(s3_server, tmp_path):
    port, stats = free_port(), tmp_path / "proxy.json"
    proxy = subprocess.Popen([sys.executable, "-m", "tests.fault_proxy", "--port", str(port), "--upstream",
                              s3_server.endpoint, "--stats", str(stats), "--slowdown", "0.08",
                              "--reset-before", "0.03", "--reset-after", "0.02"], cwd=REPO)
    deadline = time.monotonic() + 20
    while not stats.exists():
        assert time.monotonic() < deadline and proxy.poll() is None, "fault proxy did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", stats
    proxy.terminate()
    proxy.wait(10)


def test_the_job_completes_through_failing_storage_with_nothing_lost(source, config_file, s3_server, faulty_endpoint,
                                                                      cluster):
    source_uri, counts, local = source
    endpoint, stats_file = faulty_endpoint
    # a copy of the input with one corrupt shard object and one deleted after the index was written
    damaged = s3_server.create_bucket("recovery-faults-" + os.urandom(3).hex())
    s3_server.put_tree(local, damaged + "/mds")
    bucket = damaged[len("s3://"):]
    shard_keys = sorted(k for k in s3_server.keys(damaged + "/mds") if k.endswith(".mds"))
    corrupt, deleted = shard_keys[3], shard_keys[7]
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=corrupt)["Body"].read())
    body[len(body) // 2:] = b"\xff" * (len(body) - len(body) // 2)
    client.put_object(Bucket=bucket, Key=corrupt, Body=bytes(body[:-5]))
    client.delete_object(Bucket=bucket, Key=deleted)

    output = damaged + "/tables"
    log = finish(curate(config_file, damaged + "/mds", output, "--max-error-fraction", "0.5",
                        env={"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "10"}, ray_address=cluster))
    stats = json.loads(stats_file.read_text())
    faults = stats["slowdown"] + stats["reset_before"] + stats["reset_after"]
    assert faults >= 5 and stats["requests"] > faults, stats
    samples, quarantine = assert_exactly_once(output, counts)
    reasons = {r["error"] for r in rows(output, "quarantine", ("error",))}
    assert any(corrupt.split("/")[-1] in reason for reason in reasons), reasons
    assert any(deleted.split("/")[-1] in reason and "unreadable shard" in reason for reason in reasons), reasons
    print(f"\nFIGURES faults: {stats['requests']} requests through the proxy, {faults} faults injected "
          f"({stats['slowdown']} x 503 SlowDown, {stats['reset_before']} resets before S3, "
          f"{stats['reset_after']} resets after S3 handled the request), each retried; "
          f"{len(samples)} + {len(quarantine)} rows verified exactly once")
    assert SECRET_KEY not in log


def test_storage_that_keeps_failing_fails_the_job_loudly(source, config_file, s3_server, tmp_path, cluster):
    source_uri, _, _ = source
    port, stats = free_port(), tmp_path / "proxy.json"
    proxy = subprocess.Popen([sys.executable, "-m", "tests.fault_proxy", "--port", str(port), "--upstream",
                              s3_server.endpoint, "--stats", str(stats), "--slowdown", "1.0"], cwd=REPO)
    try:
        while not stats.exists():
            time.sleep(0.1)
        job = curate(config_file, source_uri, str(tmp_path / "out"),
                     env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "3"},
                     ray_address=cluster)
        output, _ = job.communicate(timeout=300)
    finally:
        proxy.terminate()
    assert job.returncode != 0
    last = output.strip().splitlines()[-1]
    assert last.startswith("run failed: storage error: ") and "index.json" in last, output[-3000:]
    assert "Traceback (most recent call last)" in output  # where it failed stays in the job's log
    assert json.loads(stats.read_text())["slowdown"] >= 3  # retried up to the bound, then failed
