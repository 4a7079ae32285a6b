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
