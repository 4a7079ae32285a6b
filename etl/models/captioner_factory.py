"""The captioner a job config names, for the pipeline's caption stage, `jobs.smoke_gpu` and the
benchmarks. Apart from both backends, so neither imports the other."""

from typing import Optional


def captioner_from_config(config, kv_cache_bytes: Optional[int] = None, cpu_cores: int = 0) -> "Captioner":
    """The captioner a job config names (`models.captioner`, `frames.max_frames`), as the
    pipeline's CaptionStage and `jobs.smoke_gpu` run it. For vLLM, what the plan gives one
    engine: its KV cache (None: vLLM's own sizing) and, on a CPU node, how many cores it binds."""
    settings = config.models.captioner
    common = dict(max_new_tokens=settings.new_tokens, temperature=settings.temperature, seed=settings.seed,
                  frames_as=settings.frames_as, video_fps=settings.video_fps)
    if settings.backend != "vllm":
        from etl.models.captioner import TransformersCaptioner

        return TransformersCaptioner(settings.model, **common)
    from etl.models.vllm_captioner import VLLMCaptioner  # vLLM is imported only where it runs

    return VLLMCaptioner(settings.model, **common, caption_max_chars=settings.caption_max_chars,
                         max_model_len=settings.max_model_len, max_frames=config.frames.max_frames,
                         tensor_parallel_size=settings.tensor_parallel_size, max_num_seqs=settings.max_num_seqs,
                         gpu_memory_utilization=settings.gpu_memory_utilization, mm_cache_gb=settings.mm_cache_gb,
                         enforce_eager=settings.enforce_eager, kv_cache_bytes=kv_cache_bytes, cpu_cores=cpu_cores)
