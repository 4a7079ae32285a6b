"""`ray job submit` end to end: a Ray head of its own on 127.0.0.1 (`ray start --head`,
tests/ray_cluster.py), the curation job submitted with the repo as its working directory, then
the tables checked."""

import json
from pathlib import Path

import pyarrow as pa

from tests.ray_cluster import new_cluster, submitted_job

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_the_curation_job(tmp_path):
    data = tmp_path / "mds"
    config_path = submitted_job(tmp_path, samples=16, per_shard=6, broken=9)
    output = tmp_path / "tables"

    cluster = new_cluster()
    try:
        cluster.start_head(cpus=2)  # one node: the repo as working dir is unpacked once
        submitted = cluster.submit(["python", "-m", "jobs.curate", "--config", str(config_path), "--input", str(data),
                                    "--output", str(output), "--text-column", "text"],
                                   options=("--working-dir", str(REPO)))
    finally:
        cluster.stop()
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
