"""The caption stage: how its actor takes batches."""

from etl.config import load_config
from etl.stages.caption import caption_batches_per_actor


def test_a_vllm_caption_actor_takes_two_batches_at_once_and_transformers_one():
    vllm = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out"})
    assert vllm.models.captioner.backend == "vllm"
    assert caption_batches_per_actor(vllm) == 2
    hf = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out", "models.captioner.backend": "transformers"})
    assert caption_batches_per_actor(hf) == 1
