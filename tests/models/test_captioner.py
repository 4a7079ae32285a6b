import numpy as np
import pytest

from etl.models.captioner import (
    CAPTION_SCHEMA, SYSTEM_PROMPT, CaptionSample, TransformersCaptioner, build_messages, parse_answer,
)
from etl.synthetic import jpeg_frames
from etl.transforms.frames import FrameSpec, decode_sample


@pytest.mark.parametrize("raw, caption, quality, aesthetics", [
    ('{"caption": "a red car", "quality": 4, "aesthetics": 3}', "a red car", 4.0, 3.0),
    ('Sure!\n```json\n{"caption": " two dogs ", "quality": "5", "aesthetics": 2.5}\n```', "two dogs", 5.0, 2.5),
])
def test_answers_that_follow_the_schema(raw, caption, quality, aesthetics):
    result = parse_answer(raw)
    assert (result.caption, result.quality, result.aesthetics, result.parse_error) == (caption, quality, aesthetics, None)


@pytest.mark.parametrize("raw, error, scores", [
    ("a dog on a beach", "no JSON object in the answer", (None, None)),
    ('{"caption": "x", "quality": 9, "aesthetics": 3}', "quality 9 is not a number from 1 to 5", (None, 3.0)),
    ('{"caption": "", "quality": 3}', "caption missing or empty; aesthetics None is not a number from 1 to 5", (3.0, None)),
    ('{"caption": "x", "quality": 3, "aesthetics": 3', "no JSON object in the answer", (None, None)),
    ('{caption: x}', "invalid JSON", (None, None)),
])
def test_unparsable_answers_are_marked_and_never_get_default_scores(raw, error, scores):
    result = parse_answer(raw)
    assert result.parse_error.startswith(error)
    assert result.raw == raw and isinstance(result.caption, str)
    assert (result.quality, result.aesthetics) == scores  # only what the model really said


def test_prompt_puts_the_shared_system_prompt_first_and_one_image_per_frame():
    messages = build_messages(3, "beach clip")
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert [c["type"] for c in messages[1]["content"]] == ["image"] * 3 + ["text"]
    assert "beach clip" in messages[1]["content"][-1]["text"]
    assert set(CAPTION_SCHEMA["required"]) == {"caption", "quality", "aesthetics"}


@pytest.fixture(scope="module")
def captioner(tiny):
    return TransformersCaptioner(str(tiny["qwen3_vl"]), max_new_tokens=12, temperature=0.8, seed=7), tiny


def test_tiny_qwen3_vl_captions_multi_frame_samples_repeatably(captioner):
    model, paths = captioner
    assert model.frame_factor == 32
    spec = FrameSpec(factor=model.frame_factor, min_pixels=32 * 32 * 4, max_pixels=128 * 128, crop_size=32)
    frames = jpeg_frames(3, 320, 180)
    samples = [CaptionSample([f.caption_view for f in decode_sample(frames, spec)], "a clip", "clip-a"),
               CaptionSample([f.caption_view for f in decode_sample(frames[:1], spec)], None, "clip-b")]
    first = model.caption(samples)
    again = TransformersCaptioner(str(paths["qwen3_vl"]), max_new_tokens=12, temperature=0.8, seed=7).caption(samples)
    assert [r.raw for r in first] == [r.raw for r in again]  # same seed, same captions
    # a caption does not depend on its batch: alone, or after other samples, it is the same
    assert [r.raw for r in model.caption(samples[1:])] == [first[1].raw]
    assert model.caption([samples[1], samples[0]])[1].raw == first[0].raw
    other_seed = TransformersCaptioner(str(paths["qwen3_vl"]), max_new_tokens=12, temperature=0.8, seed=8)
    assert [r.raw for r in other_seed.caption(samples)] != [r.raw for r in first]
    assert all(isinstance(r.caption, str) for r in first)
    # random weights write junk: it must be marked unparsable, with no scores made up
    assert all(r.parse_error and r.quality is None and r.aesthetics is None for r in first)
    assert model.caption([]) == []


def test_vllm_requests_share_the_system_prefix_and_carry_every_frame(captioner):
    from etl.models.captioner import vllm_requests, vllm_sampling_kwargs

    model, _ = captioner
    frames = [np.zeros((64, 96, 3), np.uint8)] * 3
    requests = vllm_requests(model.processor, [CaptionSample(frames, "beach"), CaptionSample(frames[:1])])
    prompts = [r["prompt"] for r in requests]
    assert [len(r["multi_modal_data"]["image"]) for r in requests] == [3, 1]
    assert [p.count("<|image_pad|>") for p in prompts] == [3, 1]
    prefix = prompts[0][: prompts[0].index("<|im_start|>user")]
    assert SYSTEM_PROMPT in prefix and prompts[1].startswith(prefix)  # one cached prefix for all
    assert requests[0]["multi_modal_data"]["image"][0].size == (96, 64)
    from etl.models.captioner import sample_seed

    assert sample_seed(3, "clip-a") == sample_seed(3, "clip-a") != sample_seed(3, "clip-b") != sample_seed(4, "clip-b")
    kwargs = vllm_sampling_kwargs(64, 0.0, 3)
    assert kwargs["structured_outputs"] == {"json": CAPTION_SCHEMA}
    assert (kwargs["max_tokens"], kwargs["temperature"], kwargs["seed"]) == (64, 0.0, 3)


def test_the_vllm_backend_is_importable_and_reports_what_it_needs():
    from etl.models.captioner import CAPTIONERS, VLLMCaptioner

    assert CAPTIONERS["vllm"] is VLLMCaptioner
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            VLLMCaptioner("unused")


def test_video_mode_sends_same_size_frames_as_one_video_and_other_samples_as_images(captioner):
    from etl.models.captioner import goes_as_video

    model, paths = captioner
    video = TransformersCaptioner(str(paths["qwen3_vl"]), max_new_tokens=6, temperature=0.8, seed=7,
                                  frames_as="video", video_fps=2.0)
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 255, (64, 96, 3), np.uint8) for _ in range(5)]
    mixed = [clip[0], rng.integers(0, 255, (96, 64, 3), np.uint8)]
    samples = [CaptionSample(clip, None, "clip"), CaptionSample(mixed, None, "mixed"), CaptionSample(clip[:1], None, "one")]
    assert [goes_as_video(s, "video") for s in samples] == [True, False, False]
    assert not goes_as_video(samples[0], "images")
    prompt = video.processor.apply_chat_template(build_messages(5, None, as_video=True), add_generation_prompt=True,
                                                 tokenize=False)
    assert prompt.count("<|video_pad|>") == 1 and "<|image_pad|>" not in prompt
    from etl.models.captioner import prompt_of

    sent = [prompt_of(video.processor, s, video.frames_as) for s in samples]  # what caption() sends
    assert [(p.count("<|video_pad|>"), p.count("<|image_pad|>")) for p in sent] == [(1, 0), (0, 2), (0, 1)]
    results = video.caption(samples)
    assert len(results) == 3 and all(isinstance(r.caption, str) for r in results)
    assert video.caption(samples[:1])[0].raw == results[0].raw  # per-sample seeds: repeatable in any batch


def test_vllm_video_requests_carry_the_frames_and_their_timing(captioner):
    from etl.models.captioner import vllm_requests

    model, _ = captioner
    clip = [np.full((64, 96, 3), i, np.uint8) for i in range(4)]
    video, images = vllm_requests(model.processor, [CaptionSample(clip, "x"), CaptionSample(clip[:1])], "video", 2.0)
    frames, metadata = video["multi_modal_data"]["video"][0]
    assert frames.shape == (4, 64, 96, 3) and frames[3, 0, 0, 0] == 3
    assert metadata["fps"] == 2.0 and metadata["duration"] == 2.0 and metadata["frames_indices"] == [0, 1, 2, 3]
    assert video["mm_processor_kwargs"] == {"do_sample_frames": False}
    assert video["prompt"].count("<|video_pad|>") == 1
    assert len(images["multi_modal_data"]["image"]) == 1 and "mm_processor_kwargs" not in images


def test_vllm_engine_arguments_come_from_the_config():
    from etl.config import load_config
    from etl.models.captioner import vllm_engine_kwargs

    settings = load_config(None, {"input": "i", "output": "o", "models.captioner.max_model_len": 16384,
                                  "models.captioner.max_num_seqs": 128, "models.captioner.tensor_parallel_size": 2,
                                  "models.captioner.frames_as": "video"}).models.captioner
    kwargs = vllm_engine_kwargs("/m", max_model_len=settings.max_model_len, max_frames=10, frames_as=settings.frames_as,
                                tensor_parallel_size=settings.tensor_parallel_size, max_num_seqs=settings.max_num_seqs,
                                gpu_memory_utilization=settings.gpu_memory_utilization, mm_cache_gb=settings.mm_cache_gb)
    assert kwargs["enable_prefix_caching"] is True
    assert (kwargs["max_model_len"], kwargs["max_num_seqs"], kwargs["tensor_parallel_size"]) == (16384, 128, 2)
    assert kwargs["limit_mm_per_prompt"] == {"image": 10, "video": 1}
    assert kwargs["distributed_executor_backend"] == "mp"  # TP workers inside the actor that holds the GPUs
    single = vllm_engine_kwargs("/m", max_model_len=8192, max_frames=4)
    assert single["limit_mm_per_prompt"] == {"image": 4, "video": 0} and "distributed_executor_backend" not in single
