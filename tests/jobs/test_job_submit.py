"""`ray job submit` end to end: a Ray head of its own on 127.0.0.1 (`ray start --head`), the
curation job submitted with the repo as its working directory, then the tables checked."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import yaml

from etl.mds import MDSWriter
from etl.models.tiny import ensure_tiny_models
from etl.synthetic import jpeg_frames
from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[2]


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Ray dashboard did not answer at {url}")


def test_ray_job_submit_runs_the_curation_job(tmp_path):
    data = tmp_path / "mds"
    pool = jpeg_frames(4, 64, 48)
    with MDSWriter(str(data), columns={"frames": "jpeg_array", "text": "str"}, size_limit=6 * 3 * len(pool[0])) as writer:
        for i in range(16):
            frames = [pool[(i + k) % 4] for k in range(3)]
            if i == 9:
                frames[2] = frames[2][:150]  # one broken sample
            writer.write({"frames": frames, "text": f"clip {i}"})
    tiny = ensure_tiny_models(tmp_path / "models")
    config = yaml.safe_load((REPO / "jobs/configs/local.yaml").read_text())
    config["frames"].update({"min_pixels": 32 * 32, "max_pixels": 64 * 64, "crop_size": 64})
    config["models"].update({"build_tiny_if_missing": False})
    # the transformers captioner: this test is about submission, and vLLM's engine start costs a minute
    config["models"]["captioner"].update({"model": str(tiny["qwen3_vl"]), "max_new_tokens": 8,
                                          "backend": "transformers"})
    config["models"]["embedder"]["model"] = str(tiny["clip"])
    config["models"]["vae"]["model"] = str(tiny["vae"])
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "tables"

    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard, agent_http, agent_grpc, metrics = (free_port() for _ in range(5))
    # --block: the head's processes live and die with this one, leaving other clusters alone
    head = subprocess.Popen([f"{bin_dir}/ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "true",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                             # other clusters on this machine (the test session's) hold the default
                             # agent ports; a head whose agent cannot bind never accepts jobs
                             "--dashboard-agent-listen-port", str(agent_http),
                             "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(url, head)
        for _ in range(30):  # the job agent comes up a little after the dashboard answers
            submitted = subprocess.run(
                [f"{bin_dir}/ray", "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
                 "python", "-m", "jobs.curate", "--config", str(config_path), "--input", str(data),
                 "--output", str(output), "--text-column", "text"],
                env=env, capture_output=True, text=True, timeout=900)
            if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
                break
            time.sleep(2)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)
        # `ray start` records its address for later `ray.init()` calls on this machine; a stopped
        # head's record would make them try to join a dead cluster
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{port}"):
            record.unlink()
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in log, log[-4000:]
    assert f"{output}/samples: 15 rows" in log and "quarantined 1 x read: no readable PNG or JPEG header" in log, \
        log[-3000:]

    from deltalake import DeltaTable

    samples = DeltaTable(str(output / "samples")).to_pyarrow_table()
    quarantine = DeltaTable(str(output / "quarantine")).to_pyarrow_table()
    runs = DeltaTable(str(output / "runs")).to_pyarrow_table()
    assert samples.num_rows == 15 and quarantine.num_rows == 1
    counts = [shard["samples"] for shard in json.loads((data / "index.json").read_text())["shards"]]
    shard = next(i for i in range(len(counts)) if sum(counts[:i + 1]) > 9)  # where sample 9 is
    assert quarantine.select(["shard", "row", "stage"]).to_pylist() == [
        {"shard": shard, "row": 9 - sum(counts[:shard]), "stage": "read"}]  # 150 bytes: no JPEG header
    assert sum(runs.column("samples").to_pylist()) + sum(runs.column("quarantined").to_pylist()) == 16
    assert json.loads(runs.column("config")[0].as_py())["input"] == str(data)
    assert pa.compute.all(pa.compute.is_valid(samples.column("caption"))).as_py()
