"""The GPU smoke test's checks, run here on CPU with the tiny models. The captioner check runs the
transformers backend (it must see unparsable answers); the same `captioner_from_config` path
with vLLM generates for real in tests/models/test_vllm_captioner.py."""

from etl.config import load_config
from jobs import smoke_gpu


def _config(tiny, **extra):
    return load_config("jobs/configs/local.yaml", {
        "input": "i", "output": "o", "models.captioner.model": str(tiny["qwen3_vl"]),
        "models.captioner.max_new_tokens": 8, "models.captioner.backend": "transformers",
        "models.embedder.model": str(tiny["clip"]),
        "models.vae.model": str(tiny["vae"]), **extra})


def test_captioner_check_runs_multi_frame_samples_and_reports_parse_errors(tiny):
    result = smoke_gpu.check_captioner(_config(tiny))
    assert result["samples"] == 12 and result["samples_per_s"] > 0
    # random weights cannot follow the schema: the check sees it (vLLM's structured output would not)
    assert len(result["parse_errors"]) == 12


def test_encoder_check_reports_shapes_and_throughput(tiny):
    result = smoke_gpu.check_encoders(_config(tiny, **{"frames.crop_size": 64}), frames=16)
    assert result["device"] == "cpu" and result["finite"] is True
    assert result["embedding"] == [16, 16] and result["latents"] == [16, 4, 8, 8]
    assert result["frames_per_s"] > 0
