"""The CLI layer of jobs.curate: flags and --set overrides reach the validated config."""

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
