"""`python -m jobs.plan` on the cluster files in cluster/ and the production config, with the
production checkpoints' shapes (a Qwen3-VL-8B-sized checkpoint: real config, sparse weights)."""

import pytest

from jobs import plan as plan_job
from tests.large_checkpoints import qwen3_vl_8b_like


@pytest.fixture(scope="module")
def checkpoints(tiny, tmp_path_factory):
    qwen = qwen3_vl_8b_like(tiny["qwen3_vl"], tmp_path_factory.mktemp("checkpoints") / "qwen3-vl-8b")
    return ["--set", f"models.captioner.model={qwen}", "--set", f"models.embedder.model={tiny['clip']}",
            "--set", f"models.vae.model={tiny['vae']}"]


@pytest.mark.parametrize("cluster", ["cluster/aws.yaml", "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml"])
def test_the_production_config_fits_the_shipped_clusters(cluster, checkpoints, capsys):
    code = plan_job.main(["--cluster", cluster, "--config", "jobs/configs/production.yaml",
                          "--assume-shards", "966x266MB", *checkpoints])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4xL40S" in out and "captioner (vllm): 32 x [4 CPU, 0.85 GPU" in out
    assert "966 shards in 966 tasks" in out


def test_the_field_reports_16_read_tasks_are_refused_with_the_fix(checkpoints, capsys):
    code = plan_job.main(["--cluster", "cluster/aws.yaml", "--config", "jobs/configs/production.yaml",
                          "--assume-shards", "966x266MB", "--set", "read.shards_per_task=61",
                          "--set", "read.max_task_mb=20000", *checkpoints])
    assert code == 1
    assert "966 shards in only 16 read tasks" in capsys.readouterr().err


def test_plans_from_the_input_index_and_rejects_bad_arguments(tmp_path, checkpoints, capsys):
    from etl.mds import MDSWriter

    with MDSWriter(str(tmp_path / "mds"), columns={"jpg": "bytes", "text": "str"}, size_limit=4096) as writer:
        for i in range(20):
            writer.write({"jpg": b"\xff\xd8" + bytes(500), "text": f"sample {i}"})
    code = plan_job.main(["--cluster", "cluster/aws.yaml", "--config", "jobs/configs/production.yaml",
                          "--input", str(tmp_path / "mds"), *checkpoints])
    out = capsys.readouterr().out
    assert code == 0 and "read:" in out
    assert plan_job.main(["--cluster", "cluster/aws.yaml", "--config", "jobs/configs/production.yaml",
                          "--set", "read.nope=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected COUNTxSIZE"):
        plan_job.parse_assumed_shards("966 shards")
