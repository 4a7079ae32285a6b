"""The curation job on a real cluster of several nodes (tests/ray_cluster.py): a head that runs
no work, a stand-in GPU node (one logical L4 GPU: the planner puts the captioner and encoders
there, and they run on its CPUs for want of CUDA) and two CPU nodes of 2 CPUs, each node with its
own raylet, object store and temp folder, jobs sent with `ray job submit`. What Ray did is read
from the run's own summary (where each row went through each stage) and compared with the plan;
then the GPU node is SIGKILLed mid-run while another GPU node joins, and every sample must still
land exactly once, without `--resume`."""

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.ray_cluster import new_cluster, submitted_job

SAMPLES, PER_SHARD, BROKEN = 360, 6, 7
STAGES = ("read", "decode", "caption", "encode", "write")


@pytest.fixture(scope="module")
def cluster():
    cluster = new_cluster()
    try:
        cluster.start_head()
        _add_gpu_node(cluster, "gpu0")
        for name in ("cpu0", "cpu1"):
            cluster.add_worker(name, cpus=2, memory_gb=5, resources={"cpu_node": 1})
        yield cluster
    finally:
        cluster.stop()


def _add_gpu_node(cluster, name: str):
    # 3 logical CPUs: the engine's (resources.captioner.cpus_per_engine), the encoder's and task room
    return cluster.add_worker(name, cpus=3, gpus=1, accelerator="L4", memory_gb=8, resources={"gpu_node": 1})


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """An MDS dataset nobody tuned for this test, one sample broken, and local.yaml with the tiny
    models and the transformers captioner (vLLM's engine start would add a minute per start)."""
    root = tmp_path_factory.mktemp("multinode")
    config = submitted_job(root, SAMPLES, PER_SHARD, BROKEN, rows_per_write=8, commit_every_shards=2)
    settings = yaml.safe_load(config.read_text())
    settings["ray"]["min_worker_nodes"] = 3  # the fixture's workers: plan on all of them
    settings.setdefault("resources", {}).setdefault("captioner", {})["cpus_per_engine"] = 1
    config.write_text(yaml.safe_dump(settings))
    return root


def _submit(cluster, job: Path, name: str, config: str = "job.yaml", options: tuple = ()):
    from ray.job_submission import JobSubmissionClient

    output = job / name
    submitted = cluster.submit(["python", "-m", "jobs.curate", "--config", str(job / config), "--input",
                                str(job / "mds"), "--output", str(output), "--text-column", "text",
                                "--summary-json", str(job / f"{name}.json"), *options], no_wait=True)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    submission = next(word.strip("'") for word in (submitted.stdout + submitted.stderr).split()
                      if word.strip("'").startswith("raysubmit_"))
    return JobSubmissionClient(cluster.dashboard), submission, output


def _wait(client, submission: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(submission)).rsplit(".", 1)[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(f"job {submission} still running after {timeout} s")


def _exactly_once(output: Path) -> tuple[int, int]:
    from deltalake import DeltaTable

    samples = DeltaTable(str(output / "samples")).to_pyarrow_table(columns=["sample_id"]).column(0).to_pylist()
    quarantined = DeltaTable(str(output / "quarantine")).to_pyarrow_table(columns=["sample_id"]).column(0).to_pylist()
    assert len(set(samples)) == len(samples) and not set(samples) & set(quarantined)
    assert len(samples) + len(quarantined) == SAMPLES and len(quarantined) == 1
    return len(samples), len(quarantined)


def _names(cluster) -> dict[str, str]:
    return {node.node_id: node.name for node in cluster.nodes}


def _where(summary: dict, cluster) -> dict[str, dict[str, dict]]:
    """{stage: {node name: {"workers", "rows"}}} from the run's summary."""
    names = {node.node_id: node.name for node in cluster.nodes}
    return {stage: {names.get(node, node): counts for node, counts in nodes.items()}
            for stage, nodes in summary["placement"].items()}


def test_the_job_runs_where_its_plan_says_on_every_node(cluster, job):
    client, submission, output = _submit(cluster, job, "clean")
    status = _wait(client, submission)
    assert status == "SUCCEEDED", client.get_job_logs(submission)[-4000:]
    _exactly_once(output)
    summary = json.loads((job / "clean.json").read_text())
    where = _where(summary, cluster)
    planned = summary["planned"]
    # every row went through every stage once, and nothing ran on the head (0 CPUs)
    assert {stage: sum(n["rows"] for n in nodes.values()) for stage, nodes in where.items()} == {
        stage: SAMPLES for stage in STAGES}
    assert not any("head" in nodes for nodes in where.values()), where
    # the actor pools Ray ran are the plan's (from Ray's State API: an actor that started late may
    # have had no rows left to take)
    actors = cluster.actors()

    def pool(stage_class: str) -> list:
        return [a for a in actors if f"MapBatches({stage_class})" in a.class_name]

    for stage_class, unit in (("CaptionStage", "engines"), ("EncodeStage", "encoders"),
                              ("DecodeStage", "decode_actors"), ("WriteStage", "writers")):
        assert len(pool(stage_class)) == planned[unit], (stage_class, pool(stage_class), planned)
    # the models on the GPU node type only, one engine per GPU node, in the room held for them
    # from the start (etl.reservations), not in whatever decode and the reads had left of the node
    assert set(where["caption"]) == set(where["encode"]) == {"gpu0"}, where
    assert where["caption"]["gpu0"]["workers"] == 1
    assert all(a.placement_group_id for a in pool("CaptionStage") + pool("EncodeStage"))
    # decode actors spread, one per node, and read tasks ran on every CPU node
    assert len({a.node_id for a in pool("DecodeStage")}) == planned["decode_actors"], pool("DecodeStage")
    assert {"cpu0", "cpu1"} <= set(where["read"]), where["read"]  # gpu0's spare CPU may hold a decode actor
    assert summary["cluster"]["lost_nodes"] == [] and summary["cluster"]["joined_nodes"] == []
    print(f"placement (planned {planned}): {where}; decode actors on "
          f"{sorted(_names(cluster)[a.node_id] for a in pool('DecodeStage'))}; first rows at "
          f"{summary['first_rows_seconds']} s, last at {summary['last_rows_seconds']} s")


def test_a_node_lost_mid_run_costs_no_row_and_a_joining_node_takes_its_work(cluster, job):
    client, submission, output = _submit(cluster, job, "lost")
    deadline = time.monotonic() + 600
    while "Starting execution of Dataset" not in client.get_job_logs(submission):  # planned: the pools are sized
        assert time.monotonic() < deadline, "the job did not start its dataset"
        time.sleep(1)
    joined = _add_gpu_node(cluster, "gpu1")  # a spot GPU node comes while another goes
    first_commit = output / "samples" / "_delta_log" / "00000000000000000000.json"
    while not first_commit.exists():
        ended = str(client.get_job_status(submission)).endswith(("SUCCEEDED", "FAILED", "STOPPED"))
        assert not ended and time.monotonic() < deadline, "the job ended (or stalled) before its first commit"
        time.sleep(0.5)
    # the GPU node holding the engine and the encoder (the actors with the most work left)
    actors = cluster.actors()
    encoder_node = next(a.node_id for a in actors if "EncodeStage" in a.class_name and a.state == "ALIVE")
    lost = next(node for node in cluster.nodes if node.node_id == encoder_node)
    assert lost.name == "gpu0"
    killed_at = time.time()
    cluster.kill_node(lost)
    status = _wait(client, submission)
    logs = client.get_job_logs(submission)
    assert status == "SUCCEEDED", logs[-4000:]
    committed, quarantined = _exactly_once(output)
    summary = json.loads((job / "lost.json").read_text())
    events = summary["cluster"]
    # the report names the lost node and the work that was run again
    assert [node["node_id"] for node in events["lost_nodes"]] == [lost.node_id], events
    assert [node["node_id"] for node in events["joined_nodes"]] == [joined.node_id], events
    assert events["restarted_actors"] or events["retried_tasks"], events
    assert any("EncodeStage" in actor["actor"] for actor in events["restarted_actors"]), events
    # the joining GPU node took the lost one's models: captions and encodings were made there
    where = _where(summary, cluster)
    assert where["caption"].get("gpu1", {}).get("rows") and where["encode"].get("gpu1", {}).get("rows"), where
    # recovered: the first commit after Ray marked the node dead
    died_at = events["lost_nodes"][0]["died_at"]
    recovered = [t + summary["started_at"] - died_at for t in summary["commit_seconds"]
                 if t + summary["started_at"] > died_at]
    assert recovered, "no commit after the node was lost"
    report = (output / "report.html").read_text()
    assert lost.node_id[:12] in report and "was lost" in report
    print(f"lost node {lost.name}: marked dead {died_at - killed_at:.1f} s after the kill, next commit "
          f"{recovered[0]:.1f} s after that, run {summary['seconds']:.0f} s; {committed} samples + {quarantined} "
          f"quarantined, each once; retried {events['retried_tasks']}; restarted {events['restarted_actors']}; "
          f"placement {where}")


def test_losing_the_last_gpu_node_stops_the_run_by_name_and_resume_finishes_it(cluster, job):
    """After the test above, gpu1 is the only GPU node. Killed, with no GPU node to come within
    ray.wait_for_nodes_s, the run stops naming the models it could not place (rather than wait
    forever); --resume then plans on the CPU nodes and finishes, each sample exactly once."""
    settings = yaml.safe_load((job / "job.yaml").read_text())
    settings["ray"].update({"wait_for_nodes_s": 20, "min_worker_nodes": 2})
    (job / "short_wait.yaml").write_text(yaml.safe_dump(settings))
    client, submission, output = _submit(cluster, job, "stranded", "short_wait.yaml")
    first_commit = output / "samples" / "_delta_log" / "00000000000000000000.json"
    deadline = time.monotonic() + 600
    while not first_commit.exists():
        ended = str(client.get_job_status(submission)).endswith(("SUCCEEDED", "FAILED", "STOPPED"))
        assert not ended and time.monotonic() < deadline, "the job ended (or stalled) before its first commit"
        time.sleep(0.5)
    gpu1 = next(node for node in cluster.nodes if node.name == "gpu1")
    killed_at = time.monotonic()
    cluster.kill_node(gpu1)
    status = _wait(client, submission)
    stopped_after = time.monotonic() - killed_at
    logs = client.get_job_logs(submission)
    assert status == "FAILED", logs[-3000:]
    assert "ReservationError" in logs and "lost the node holding their room" in logs, logs[-3000:]
    assert "within 20 s (ray.wait_for_nodes_s" in logs
    from deltalake import DeltaTable

    kept = DeltaTable(str(output / "samples")).to_pyarrow_table(columns=["sample_id"]).column(0).to_pylist()
    assert 0 < len(kept) == len(set(kept)) < SAMPLES
    client, resumed, _ = _submit(cluster, job, "stranded", "short_wait.yaml", ("--resume",))
    assert _wait(client, resumed) == "SUCCEEDED", client.get_job_logs(resumed)[-4000:]
    _exactly_once(output)
    summary = json.loads((job / "stranded.json").read_text())
    assert set(_where(summary, cluster)["caption"]) <= {"cpu0", "cpu1"}  # the models on CPU nodes now
    print(f"stranded: the run stopped {stopped_after:.0f} s after its last GPU node died, with {len(kept)} "
          f"samples committed; --resume finished on the CPU nodes in {summary['seconds']:.0f} s")
