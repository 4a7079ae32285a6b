"""The CLI layer of jobs.curate: flags and --set overrides reach the validated config."""

import os

import pytest

from etl.config import ConfigError, load_config
from jobs.curate import parse_sets


def test_set_overrides_are_typed_yaml_scalars_and_validated():
    overrides = parse_sets(["sink.buckets=64", "frames.use_draft=false", "max_error_fraction=0.05"])
    assert overrides == {"sink.buckets": 64, "frames.use_draft": False, "max_error_fraction": 0.05}
    config = load_config("jobs/configs/local.yaml", {**overrides, "input": "in", "output": "out"})
    assert (config.sink.buckets, config.frames.use_draft, config.max_error_fraction) == (64, False, 0.05)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_sets(["sink.buckets"])
    with pytest.raises(ConfigError, match="sink.bukets: unknown key"):
        load_config("jobs/configs/local.yaml", {**parse_sets(["sink.bukets=3"]), "input": "in", "output": "out"})


def test_a_set_override_stands_unless_its_flag_is_given():
    from jobs.curate import job_config, parse_args

    def buckets(*flags):
        return job_config(parse_args(["--input", "in", "--output", "out", "--config", "jobs/configs/local.yaml",
                                      "--set", "sink.buckets=16", *flags])).sink.buckets

    assert buckets() == 16  # local.yaml says 4; an absent --buckets once reset it to that
    assert buckets("--buckets", "8") == 8


def test_summary_json_gives_commit_times_and_each_stage_first_row_relative_to_the_start(tmp_path):
    import json

    from etl.pipeline import RunSummary
    from jobs.curate import write_summary_json

    start = 1_800_000_000.0
    summary = RunSummary("run-1", "out", started_at=start, seconds=30.0, first_commit_seconds=12.5,
                         commit_times=[start + 12.5, start + 30.0],
                         timeline={"read": {int(start) + 3: 100, int(start) + 2: 50},
                                   "caption": {int(start) + 9: 150}, "encode": {}})
    path = tmp_path / "summary.json"
    write_summary_json(summary, str(path))
    figures = json.loads(path.read_text())
    assert figures["commit_seconds"] == [12.5, 30.0]
    # a stage that produced nothing yet is absent, not zero
    assert figures["first_rows_seconds"] == {"read": 2.0, "caption": 9.0}


class _WriteFailsUnnamed:
    def __call__(self, batch):
        from etl import storage

        with storage.naming("writing", "s3://bucket/out/samples/bucket=3/part-x.parquet"):
            raise FileNotFoundError(2, "No such file or directory")


@pytest.mark.parametrize("compute", ["task", "actor"])
def test_a_storage_error_inside_a_stage_reaches_the_job_naming_the_file(compute, ray_local):
    import ray.data
    from ray.data import ActorPoolStrategy

    from etl.config import load_config
    from etl.pipeline import configure_execution
    from jobs.curate import carried_error, without_ray_retry_note

    dataset = ray.data.range(2, override_num_blocks=1)
    if compute == "task":
        dataset = dataset.map_batches(lambda batch: _WriteFailsUnnamed()(batch), max_retries=0)
    else:
        dataset = dataset.map_batches(_WriteFailsUnnamed, compute=ActorPoolStrategy(size=1), num_cpus=0.1)
    dataset = configure_execution(dataset, load_config("jobs/configs/local.yaml", {"input": "in", "output": "out"}))
    with pytest.raises(Exception) as caught:
        dataset.take_all()
    cause = carried_error(caught.value)
    assert isinstance(cause, FileNotFoundError), type(cause).__mro__
    # Ray Data appends its retry note on a line of its own
    assert without_ray_retry_note(str(cause)) == "writing s3://bucket/out/samples/bucket=3/part-x.parquet: No such file or directory"


def test_an_output_bucket_that_does_not_exist_fails_the_job_naming_it_before_any_work(tmp_path, s3_server, tiny,
                                                                                      ray_local):
    import yaml

    from etl.mds import MDSWriter
    from etl.synthetic import jpeg_frames
    from tests.curate_process import curate

    with MDSWriter(str(tmp_path / "in"), columns={"frames": "jpeg_array"}) as writer:
        for frame in jpeg_frames(3, 64, 48):
            writer.write({"frames": [frame]})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"models": {"captioner": {"model": str(tiny["qwen3_vl"])},
                                                 "embedder": {"model": str(tiny["clip"])},
                                                 "vae": {"model": str(tiny["vae"])}}}))
    missing = f"s3://no-such-bucket-{os.urandom(3).hex()}/tables"
    job = curate(config, str(tmp_path / "in"), missing, ray_address=ray_local.get_runtime_context().gcs_address)
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("run failed: storage error: ") and missing.split("/")[2] in last, output[-3000:]
    assert "Traceback (most recent call last)" in output
