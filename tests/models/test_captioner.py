import numpy as np
import pytest

from etl.models.captioner import (
    SCORES, SYSTEM_PROMPT, CaptionSample, TransformersCaptioner, answer_token_bound, build_messages, caption_schema,
    engine_summary, parse_answer,
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


def test_what_a_constrained_engine_writes_inside_strings_parses_and_becomes_valid_utf8():
    # raw control characters (the byte-level tokenizer emits them), a surrogate pair, a lone surrogate
    raw = '{"caption":"a\x06b\tc \\ud83d\\ude00 \\ud800 end","quality":2,"aesthetics":5}'
    result = parse_answer(raw)
    assert result.parse_error is None and (result.quality, result.aesthetics) == (2.0, 5.0)
    assert result.caption == "a\x06b\tc \U0001F600 \ufffd end"
    result.caption.encode("utf-8")  # what Arrow needs
    blank = parse_answer('{"caption":" \t","quality":1,"aesthetics":1}')  # the schema allows it: kept as written
    assert blank.parse_error is None and blank.caption == " \t"
    cut = parse_answer('{"caption":"never closes', cut=True)
    assert cut.parse_error == "no JSON object in the answer (cut at max_new_tokens)" and cut.quality is None


def test_the_token_bound_holds_the_longest_answer_the_schema_allows():
    import json

    import jsonschema

    for chars in (1, 17, 200):
        schema = caption_schema(chars)
        longest = {"caption": "\x01" * chars, **{name: 5 for name in SCORES}}  # each char escapes to \u0001
        jsonschema.validate(longest, schema)
        text = json.dumps(longest, separators=(",", ":"))
        assert len(text.encode()) == answer_token_bound(chars)  # one byte per token at worst
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**longest, "caption": "x" * (chars + 1)}, schema)


def test_engine_summary_derives_rates_from_the_counters():
    summary = engine_summary({"answers": 10, "parsed": 9, "generate_seconds": 2.0, "wall_seconds": 4.0,
                              "prompt_tokens": 1000, "generation_tokens": 300, "prefix_cache_queries": 1000,
                              "prefix_cache_hits": 250})
    assert summary["parsed_share"] == 0.9 and summary["busy_share"] == 0.5 and summary["wall_seconds"] == 4.0
    assert (summary["prompt_tokens_per_s"], summary["generation_tokens_per_s"]) == (500, 150)
    assert summary["prefix_cache_hit_rate"] == 0.25
    assert engine_summary({})["parsed_share"] is None  # nothing captioned: no made-up shares
    assert "prompt_tokens_per_s" not in engine_summary({"answers": 1, "parsed": 1, "generate_seconds": 1})


def test_prompt_puts_the_shared_system_prompt_first_and_one_image_per_frame():
    messages = build_messages(3, "beach clip")
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert [c["type"] for c in messages[1]["content"]] == ["image"] * 3 + ["text"]
    assert "beach clip" in messages[1]["content"][-1]["text"]
    assert set(caption_schema(200)["required"]) == {"caption", "quality", "aesthetics"}


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
    from etl.models.vllm_captioner import vllm_requests, vllm_sampling_kwargs

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
    kwargs = vllm_sampling_kwargs(64, 0.0, 3, 120)
    assert kwargs["structured_outputs"] == {"json": caption_schema(120)}
    assert (kwargs["max_tokens"], kwargs["temperature"], kwargs["seed"]) == (64, 0.0, 3)


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
    from etl.models.vllm_captioner import vllm_requests

    model, _ = captioner
    clip = [np.full((64, 96, 3), i, np.uint8) for i in range(4)]
    video, images = vllm_requests(model.processor, [CaptionSample(clip, "x"), CaptionSample(clip[:1])], "video", 2.0)
    frames, metadata = video["multi_modal_data"]["video"][0]
    assert frames.shape == (4, 64, 96, 3) and frames[3, 0, 0, 0] == 3
    assert metadata["fps"] == 2.0 and metadata["duration"] == 2.0 and metadata["frames_indices"] == [0, 1, 2, 3]
    assert video["mm_processor_kwargs"] == {"do_sample_frames": False, "do_resize": False}
    # the sample's own frame rate and frame indices, where it has them
    (own,) = vllm_requests(model.processor, [CaptionSample(clip, fps=10.0, frame_indices=[0, 10, 20, 30])], "video", 2.0)
    _, metadata = own["multi_modal_data"]["video"][0]
    assert (metadata["fps"], metadata["frames_indices"], metadata["total_num_frames"]) == (10.0, [0, 10, 20, 30], 31)
    with pytest.raises(ValueError, match="3 frame indices for 4 frames"):
        vllm_requests(model.processor, [CaptionSample(clip, frame_indices=[0, 1, 2])], "video")
    assert video["prompt"].count("<|video_pad|>") == 1
    assert len(images["multi_modal_data"]["image"]) == 1 and images["mm_processor_kwargs"] == {"do_resize": False}


def test_vllm_engine_arguments_come_from_the_config():
    from etl.config import load_config
    from etl.models.vllm_captioner import vllm_engine_kwargs

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
    assert kwargs["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert kwargs["disable_log_stats"] is False and "kv_cache_memory_bytes" not in kwargs  # GPU: vLLM sizes it
    single = vllm_engine_kwargs("/m", max_model_len=8192, max_frames=4, kv_cache_bytes=64 << 20)
    assert single["limit_mm_per_prompt"] == {"image": 4, "video": 0} and "distributed_executor_backend" not in single
    assert single["kv_cache_memory_bytes"] == 64 << 20  # CPU node: the plan's KV cache, not a share of RAM


def test_max_new_tokens_below_the_answer_bound_is_refused_for_vllm():
    from etl.config import ConfigError, load_config

    base = {"input": "i", "output": "o", "models.captioner.caption_max_chars": 100}
    assert load_config(None, base).models.captioner.new_tokens == answer_token_bound(100)
    with pytest.raises(ConfigError, match=rf"raise max_new_tokens to >= {answer_token_bound(100)}"):
        load_config(None, {**base, "models.captioner.max_new_tokens": 64})
    transformers = load_config(None, {**base, "models.captioner.max_new_tokens": 64,
                                      "models.captioner.backend": "transformers"})
    assert transformers.models.captioner.new_tokens == 64  # no constrained decoding there: no bound to keep
