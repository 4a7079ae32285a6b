"""`python -m jobs.plan` on the cluster files in cluster/ and the production config, with the
production checkpoints' shapes (a Qwen3-VL-8B-sized checkpoint: real config, sparse weights)."""

import numpy as np
import pytest

from etl.synthetic import jpeg_frames
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

    frame = jpeg_frames(1, 64, 48)[0]
    with MDSWriter(str(tmp_path / "mds"), columns={"jpg": "jpeg", "text": "str"}, size_limit=4096) as writer:
        for i in range(20):
            writer.write({"jpg": frame, "text": f"sample {i}"})
    code = plan_job.main(["--cluster", "cluster/aws.yaml", "--config", "jobs/configs/production.yaml",
                          "--input", str(tmp_path / "mds"), *checkpoints])
    out = capsys.readouterr().out
    assert code == 0 and "read:" in out
    # an input the job would refuse is refused here too, with the job's reason
    with MDSWriter(str(tmp_path / "no-images"), columns={"jpg": "bytes"}) as writer:
        writer.write({"jpg": frame})
    assert plan_job.main(["--cluster", "cluster/aws.yaml", "--config", "jobs/configs/production.yaml",
                          "--input", str(tmp_path / "no-images"), *checkpoints]) == 1
    assert "no image column" in capsys.readouterr().err
    assert plan_job.main(["--cluster", "cluster/aws.yaml", "--config", "jobs/configs/production.yaml",
                          "--set", "read.nope=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected COUNTxSIZE"):
        plan_job.parse_assumed_shards("966 shards")


def _read_line(plan_text: str) -> str:
    return next(line for line in plan_text.splitlines() if line.strip().startswith("read:"))


def test_jobs_plan_and_the_job_compute_the_same_read_tasks_from_an_input_with_unread_columns(
        tmp_path, tiny, ray_local, capsys):
    """jobs.plan used to size shards from every column while the job sized them from the columns
    it reads: with a large unread column it printed read tasks and memory the job did not run."""
    from etl import pipeline
    from etl.config import load_config
    from etl.mds import MDSWriter

    frames = jpeg_frames(3, 64, 48)
    # a fixed-size column the job does not read: 256 KiB per sample (the estimate leaves fixed-size
    # columns out when they are not read; a variable-size one it counts either way, unread)
    with MDSWriter(str(tmp_path / "mds"), columns={"frames": "jpeg_array", "text": "str",
                                                   "depth": "ndarray:float32:256,256"}, size_limit=1 << 20) as writer:
        for i in range(24):
            writer.write({"frames": frames[: 1 + i % 3], "text": f"sample {i}",
                          "depth": np.zeros((256, 256), np.float32)})
    models = {"models.captioner.backend": "transformers", "models.captioner.max_new_tokens": 8,
              "models.captioner.model": str(tiny["qwen3_vl"]), "models.embedder.model": str(tiny["clip"]),
              "models.vae.model": str(tiny["vae"]), "models.build_tiny_if_missing": False,
              "frames.min_pixels": 32 * 32, "frames.max_pixels": 64 * 64, "frames.crop_size": 64,
              "read.text_column": "text", "read.shards_per_task": 2, "read.max_task_mb": 1}
    (tmp_path / "cluster.yaml").write_text(
        "head_node_type: head\navailable_node_types:\n  head:\n    resources: {CPU: 2, memory: 8589934592}\n"
        "    node_config: {}\n")
    sets = [arg for key, value in models.items() for arg in ("--set", f"{key}={value}")]
    assert plan_job.main(["--cluster", str(tmp_path / "cluster.yaml"), "--config", "jobs/configs/local.yaml",
                          "--input", str(tmp_path / "mds"), *sets]) == 0
    printed = _read_line(capsys.readouterr().out)
    config = load_config("jobs/configs/local.yaml", {**models, "input": str(tmp_path / "mds"),
                                                     "output": str(tmp_path / "out")})
    summary = pipeline.run(config)
    assert sum(summary.rows.values()) == 24
    assert printed == _read_line(summary.plan)
    # the plan of the columns read: counting the unread 256 KiB per sample, every ~1 MB shard
    # would fill read.max_task_mb=1 alone
    assert "up to 2 shard(s)" in printed, printed
