from pathlib import Path

import pytest

from etl.config import ConfigError, load_config

LOCAL = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"


def test_the_shipped_local_config_is_valid_and_cli_values_override_it():
    config = load_config(str(LOCAL), {"input": "in", "output": "out", "sink.buckets": 8,
                                      "read.shards": "0:4", "read.text_column": None})
    assert (config.input, config.output, config.sink.buckets, config.read.shards) == ("in", "out", 8, "0:4")
    assert config.models.captioner.backend == "vllm" and config.models.build_tiny_if_missing  # the production path
    assert config.sink.format == "delta"  # untouched file value


def test_defaults_fill_only_what_neither_the_file_nor_a_flag_sets(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: from-file\nsink:\n  buckets: 32\n")
    config = load_config(str(path), {"sink.buckets": 64}, defaults={"input": "default", "output": "default",
                                                                      "sink.buckets": 8, "read.shards": None})
    assert (config.input, config.output, config.sink.buckets, config.read.shards) == ("from-file", "default", 64, None)


def test_a_section_given_in_part_keeps_its_other_defaults():
    """An encoder's batch size alone, from a flag or a file, keeps that encoder's checkpoint."""
    config = load_config(None, {"input": "in", "output": "out", "models.vae.batch_size": 16,
                                "models.embedder.batch_size": 64})
    assert (config.models.vae.model, config.models.vae.batch_size) == ("models/tiny/vae", 16)
    assert (config.models.embedder.model, config.models.embedder.batch_size) == ("models/tiny/clip", 64)
    assert load_config(None, {"input": "in", "output": "out"}).models.vae.batch_size == 8


@pytest.mark.parametrize("yaml_text, message", [
    ("sink:\n  fromat: delta\n", "sink.fromat: unknown key; allowed keys: ['buckets', 'commit_every_files', 'commit_every_minutes', 'commit_every_shards', 'format', 'maintenance', 'rows_per_write']"),
    ("sink:\n  format: orc\n", "sink.format: Input should be 'delta' or 'parquet' (got 'orc')"),
    ("models:\n  captioner:\n    backend: tgi\n", "models.captioner.backend: Input should be 'vllm' or 'transformers'"),
    ("sink:\n  buckets: 0\n", "sink.buckets: Input should be greater than or equal to 1 (got 0)"),
    ("frames:\n  min_pixels: 5000\n  max_pixels: 4096\n", "min_pixels (5000) exceeds max_pixels (4096)"),
    ("sink:\n  maintenance:\n    retention_hour: 1\n", "sink.maintenance.retention_hour: unknown key; allowed keys: "
     "['checkpoint_interval', 'enabled', 'retention_hours', 'target_file_mb']"),
    ("colour: blue\n", "colour: unknown key; allowed keys: ['dedup', 'filters', 'frames', 'input', 'max_error_fraction'"),
])
def test_errors_name_the_key_and_the_allowed_values(tmp_path, yaml_text, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {"input": "in", "output": "out"})
    assert message in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("sink:\n  format: orc\n  buckets: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    text = str(info.value)
    assert "input: required" in text and "output: required" in text
    assert "sink.format" in text and "sink.buckets" in text


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))
