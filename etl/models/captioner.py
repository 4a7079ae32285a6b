"""Captions and quality scores from a vision-language model (Qwen3-VL).

Shared by every backend: the prompt (a fixed system prompt first, so prefix caching pays), the
JSON schema the answer must follow (vLLM enforces it with structured outputs), and the parser.
The parser is lenient about wrapping (code fences, text around the object) and strict about
content: output it cannot read is recorded as unparsable, with the raw text as the caption and
no scores. It never invents a default score.

Backends implement `Captioner.caption(samples) -> list[CaptionResult]`. `TransformersCaptioner`
runs anywhere (tests, demo, CPU); the vLLM backend is the production one.
"""

import json
import re
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np

SCORES = ("quality", "aesthetics")
SYSTEM_PROMPT = (
    "You write training captions for images and video frames. Answer with one JSON object and "
    "nothing else: {\"caption\": one or two sentences describing what is shown, \"quality\": "
    "technical quality from 1 (unusable) to 5 (excellent), \"aesthetics\": visual appeal from 1 to 5}."
)


def caption_schema(max_chars: int) -> dict:
    """The answer's JSON schema. The caption is bounded, so a constrained answer always closes
    within `answer_token_bound(max_chars)` tokens: with no bound, random or rambling output runs
    to max_tokens and the object never closes."""
    return {
        "type": "object",
        "properties": {
            "caption": {"type": "string", "minLength": 1, "maxLength": max_chars},
            **{name: {"type": "integer", "minimum": 1, "maximum": 5} for name in SCORES},
        },
        "required": ["caption", *SCORES],
        "additionalProperties": False,
    }


# The longest answer the schema allows, written with no whitespace (vLLM is told so): the fixed
# part plus at most 6 bytes per caption character (a \uXXXX escape; raw UTF-8 takes at most 4,
# and xgrammar writes bounded strings raw).
# A BPE token is at least one byte, so this many tokens always hold a whole answer.
_ANSWER_FRAME = '{"caption":"","quality":5,"aesthetics":5}'
_BYTES_PER_CAPTION_CHAR = 6


def answer_token_bound(max_chars: int) -> int:
    return len(_ANSWER_FRAME) + _BYTES_PER_CAPTION_CHAR * max_chars


@dataclass(frozen=True)
class CaptionSample:
    frames: Sequence[np.ndarray]  # (H, W, 3) uint8 each, sides multiples of the model's factor
    context: Optional[str] = None  # optional text that came with the sample
    key: str = ""                  # the sample's id: with the run's seed, it fixes the sampling
    fps: Optional[float] = None    # the source video's frame rate (None: the config's video_fps)
    frame_indices: Optional[Sequence[int]] = None  # which source frames these are (None: 0, 1, 2, ...)


def sample_seed(seed: int, key: str) -> int:
    """The sampling seed of one sample. Per sample, not per batch: a caption must not depend on
    which other samples shared its batch (that changes with timing, retries and resumes)."""
    import xxhash

    return xxhash.xxh64_intdigest(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def per_row_sampler(seeds: Sequence[int], temperature: float, device):
    """A transformers `LogitsProcessor` that draws each row's next token from its own seeded
    generator (temperature sampling) and leaves only that token, so greedy decoding emits it."""
    import torch
    from transformers import LogitsProcessor

    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    class PerRowSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            probs = torch.softmax(scores.float() / temperature, dim=-1)
            chosen = torch.cat([torch.multinomial(probs[row], 1, generator=generators[row])
                                for row in range(probs.shape[0])])
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter_(1, chosen[:, None], 0.0)

    return PerRowSampler()


@dataclass(frozen=True)
class CaptionResult:
    caption: str
    quality: Optional[float]
    aesthetics: Optional[float]
    parse_error: Optional[str]  # None when the answer followed the schema
    raw: str


class Captioner(Protocol):
    name: str

    def caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
        ...

    def stats(self) -> dict:
        """Running totals since the captioner started: `answers`, `parsed`, `generate_seconds`,
        and, where the engine counts them (vLLM), ENGINE_COUNTERS."""
        ...


@dataclass
class AnswerTally:
    """Running totals every backend reports in `stats()`: answers, those that parsed, seconds
    inside generate."""

    answers: int = 0
    parsed: int = 0
    generate_seconds: float = 0.0

    def add(self, results: Sequence[CaptionResult], seconds: float) -> None:
        self.answers += len(results)
        self.parsed += sum(r.parse_error is None for r in results)
        self.generate_seconds += seconds

    def as_dict(self) -> dict:
        return {"answers": self.answers, "parsed": self.parsed, "generate_seconds": self.generate_seconds}


def engine_summary(totals: dict) -> dict:
    """A run's captioner figures from summed `stats()` deltas (plus `wall_seconds`: time the
    engines spent from their first batch on, busy or waiting for input)."""
    seconds = totals.get("generate_seconds", 0.0)
    answers, queries = totals.get("answers", 0), totals.get("prefix_cache_queries", 0)
    summary = {"answers": answers, "parsed": totals.get("parsed", 0),
               "parsed_share": totals.get("parsed", 0) / answers if answers else None,
               "generate_seconds": round(seconds, 3), "wall_seconds": round(totals.get("wall_seconds", 0.0), 3),
               "busy_share": seconds / totals["wall_seconds"] if totals.get("wall_seconds") else None}
    if "prompt_tokens" in totals:
        summary.update(prompt_tokens=totals["prompt_tokens"], generation_tokens=totals["generation_tokens"],
                       prefix_cache_hit_rate=totals.get("prefix_cache_hits", 0) / queries if queries else None,
                       prompt_tokens_per_s=totals["prompt_tokens"] / seconds if seconds else None,
                       generation_tokens_per_s=totals["generation_tokens"] / seconds if seconds else None)
    return summary


def build_messages(frame_count: int, context: Optional[str], as_video: bool = False) -> list[dict]:
    """Chat messages for one sample: its frames first (as images, in order, or as one video),
    then the text."""
    text = f"{frame_count} frame(s) of one sample, in order."
    if context:
        text += f" Text that came with it: {context}"
    visual = [{"type": "video"}] if as_video else [{"type": "image"}] * frame_count
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": visual + [{"type": "text", "text": text}]},
    ]


def goes_as_video(sample: CaptionSample, frames_as: str) -> bool:
    """Video needs two or more frames of one size (Qwen3-VL patches frame pairs in time); any
    other sample goes as images, whatever the mode."""
    frames = sample.frames
    return frames_as == "video" and len(frames) > 1 and all(f.shape == frames[0].shape for f in frames)


def frame_timing_problem(frame_count: int, fps: Optional[float], indices: Optional[Sequence[int]]) -> Optional[str]:
    """Why a sample's own frame rate or frame indices cannot time its frames (None: they can,
    or it has none and the defaults apply)."""
    if fps is not None and not fps > 0:  # NaN too
        return f"fps {fps} is not positive"
    if indices is None:
        return None
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
        return f"frame indices {str(indices)[:80]!r} are not a list of integers"
    if len(indices) != frame_count:
        return f"{len(indices)} frame indices for {frame_count} frames"
    if indices and (indices[0] < 0 or any(b <= a for a, b in zip(indices, indices[1:]))):
        return f"frame indices {list(indices)[:12]} do not increase from 0 or more"
    return None


def video_metadata(sample: CaptionSample, default_fps: float) -> dict:
    """What Qwen3-VL needs to place its timestamps (frame index / fps, one per pair of frames):
    the frames are already sampled (frame sampling off); the sample's own frame rate and frame
    indices where it has them, else `default_fps` and consecutive frames."""
    fps = sample.fps or default_fps
    indices = list(sample.frame_indices) if sample.frame_indices is not None else list(range(len(sample.frames)))
    if len(indices) != len(sample.frames):
        raise ValueError(f"{len(indices)} frame indices for {len(sample.frames)} frames")
    height, width = sample.frames[0].shape[:2]
    return {"total_num_frames": indices[-1] + 1, "fps": fps, "width": width, "height": height,
            "duration": (indices[-1] + 1) / fps, "video_backend": "frames", "frames_indices": indices}


def prompt_of(processor, sample: CaptionSample, frames_as: str) -> str:
    return processor.apply_chat_template(
        build_messages(len(sample.frames), sample.context, goes_as_video(sample, frames_as)),
        add_generation_prompt=True, tokenize=False)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_answer(raw: str, cut: bool = False) -> CaptionResult:
    """Read one answer. Lenient about wrapping (code fences, text around the object) and about
    what a constrained engine emits inside strings (raw control characters, lone surrogate
    escapes: `strict=False`, then surrogates paired or replaced, so the caption is valid UTF-8);
    strict about content. `cut`: the engine stopped at max_tokens, which the error then says."""
    text = raw.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    def unparsable(problem: str) -> CaptionResult:
        return CaptionResult(raw, None, None, problem + (" (cut at max_new_tokens)" if cut else ""), raw)

    if start < 0 or end <= start:
        return unparsable("no JSON object in the answer")
    try:
        answer = json.loads(text[start:end + 1], strict=False)
    except json.JSONDecodeError as exc:
        return unparsable(f"invalid JSON ({exc.msg})")
    if not isinstance(answer, dict):
        return unparsable("answer is not a JSON object")
    caption = answer.get("caption")
    # what the schema allows (one character or more); surrounding whitespace goes where text remains
    has_caption = isinstance(caption, str) and bool(caption)
    caption = (caption.strip() or caption) if has_caption else caption
    problems = [] if has_caption else ["caption missing or empty"]
    scores = {}
    for name in SCORES:
        value = answer.get(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not 1 <= number <= 5:
            problems.append(f"{name} {value!r} is not a number from 1 to 5")
            number = None
        scores[name] = number
    return CaptionResult(_valid_utf8(caption) if has_caption else raw, scores["quality"],
                         scores["aesthetics"], "; ".join(problems) or None, raw)


def _valid_utf8(text: str) -> str:
    """JSON may escape UTF-16 surrogates one by one: pairs become their character, a lone one
    becomes U+FFFD (Arrow strings must be valid UTF-8)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class TransformersCaptioner:
    """Qwen3-VL through transformers (`AutoModelForImageTextToText` + `AutoProcessor`)."""

    name = "transformers"

    def __init__(self, model_path: str, *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0, frames_as: str = "images", video_fps: float = 1.0, device: Optional[str] = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from etl.models.checkpoints import local_checkpoint

        model_path = local_checkpoint(model_path)  # s3://... is copied to this node once
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"  # batched generation appends on the right
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).eval().to(self.device)
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.frames_as, self.video_fps = frames_as, video_fps
        image_processor = self.processor.image_processor
        self.frame_factor = image_processor.patch_size * image_processor.merge_size
        self.tally = AnswerTally()

    def stats(self) -> dict:
        return self.tally.as_dict()

    def caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
        import time

        started = time.perf_counter()
        results = self._caption(samples)
        self.tally.add(results, time.perf_counter() - started)
        return results

    def _caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
        import torch
        from PIL import Image
        from transformers.video_utils import VideoMetadata

        if not samples:
            return []
        texts = [prompt_of(self.processor, s, self.frames_as) for s in samples]
        images, videos, metadata = [], [], []
        for s in samples:  # the processor matches media to placeholders in order
            if goes_as_video(s, self.frames_as):
                videos.append(np.stack(s.frames))
                metadata.append(VideoMetadata(**video_metadata(s, self.video_fps)))
            else:
                images += [Image.fromarray(frame) for frame in s.frames]
        media = {"images": images or None}
        if videos:
            media.update(videos=videos, video_metadata=metadata, do_sample_frames=False)
        # Frames arrive already smart-resized by the CPU stage: do not resample them again.
        inputs = self.processor(text=texts, **media, padding=True, do_resize=False,
                                return_tensors="pt").to(self.device)
        sampling = {"do_sample": False}
        if self.temperature > 0:
            from transformers import LogitsProcessorList

            sampler = per_row_sampler([sample_seed(self.seed, s.key) for s in samples], self.temperature, self.device)
            sampling["logits_processor"] = LogitsProcessorList([sampler])
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        answers = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [parse_answer(answer) for answer in answers]
