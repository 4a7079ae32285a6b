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
CAPTION_SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        **{name: {"type": "integer", "minimum": 1, "maximum": 5} for name in SCORES},
    },
    "required": ["caption", *SCORES],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class CaptionSample:
    frames: Sequence[np.ndarray]  # (H, W, 3) uint8 each, sides multiples of the model's factor
    context: Optional[str] = None  # optional text that came with the sample
    key: str = ""                  # the sample's id: with the run's seed, it fixes the sampling


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


def video_metadata(frame_count: int, height: int, width: int, fps: float) -> dict:
    """What Qwen3-VL needs to place its timestamps: the frames are already sampled, in order,
    `fps` per second (frame sampling off)."""
    return {"total_num_frames": frame_count, "fps": fps, "width": width, "height": height,
            "duration": frame_count / fps, "video_backend": "frames", "frames_indices": list(range(frame_count))}


def prompt_of(processor, sample: CaptionSample, frames_as: str) -> str:
    return processor.apply_chat_template(
        build_messages(len(sample.frames), sample.context, goes_as_video(sample, frames_as)),
        add_generation_prompt=True, tokenize=False)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_answer(raw: str) -> CaptionResult:
    text = raw.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return CaptionResult(raw, None, None, "no JSON object in the answer", raw)
    try:
        answer = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        return CaptionResult(raw, None, None, f"invalid JSON ({exc.msg})", raw)
    if not isinstance(answer, dict):
        return CaptionResult(raw, None, None, "answer is not a JSON object", raw)
    caption = answer.get("caption")
    has_caption = isinstance(caption, str) and bool(caption.strip())
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
    return CaptionResult(caption.strip() if has_caption else raw, scores["quality"], scores["aesthetics"],
                         "; ".join(problems) or None, raw)


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

    def caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
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
                metadata.append(VideoMetadata(**video_metadata(len(s.frames), *s.frames[0].shape[:2], self.video_fps)))
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


# --- vLLM (production) -----------------------------------------------------------------------
# An actor owning `vllm.LLM` rather than `ray.data.llm`: ray.data.llm builds its own stages
# (preprocess, engine, postprocess) with their own actor pools and batch-size knobs, and its
# processor config would duplicate ours. Owning the engine keeps one `Captioner` interface for
# both backends (CaptionStage calls `caption(samples)` on either, the transformers one runs in
# every test), lets the planner size engines with the same numbers as the other stages, and
# keeps the sampling seed per sample. Everything that does not need a GPU (prompts, requests,
# engine and sampling parameters, parsing) is plain code tested on CPU.


def vllm_engine_kwargs(model_path: str, *, max_model_len: int, max_frames: int, frames_as: str = "images",
                       tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85, max_num_seqs: int = 64,
                       mm_cache_gb: float = 4.0, seed: int = 0) -> dict:
    """Keyword arguments of `vllm.LLM`: prefix caching on (every request starts with the same
    system prompt), at most `max_frames` images or one video per request, and, with tensor
    parallelism, worker processes inside this actor (its GPUs are the ones Ray gave it)."""
    kwargs = {"model": model_path, "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
              "seed": seed, "enable_prefix_caching": True, "gpu_memory_utilization": gpu_memory_utilization,
              "tensor_parallel_size": tensor_parallel_size, "mm_processor_cache_gb": mm_cache_gb,
              "limit_mm_per_prompt": {"image": max_frames, "video": 1 if frames_as == "video" else 0}}
    if tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def vllm_requests(processor, samples: Sequence[CaptionSample], frames_as: str = "images",
                  video_fps: float = 1.0) -> list[dict]:
    """vLLM offline requests: the chat-templated prompt (system prompt first, so every request
    shares a cacheable prefix) and the sample's frames, as images in order or as one video with
    its metadata (frames already sampled: sampling off)."""
    from PIL import Image

    requests = []
    for s in samples:
        request = {"prompt": prompt_of(processor, s, frames_as)}
        if goes_as_video(s, frames_as):
            height, width = s.frames[0].shape[:2]
            request["multi_modal_data"] = {"video": [(np.stack(s.frames), video_metadata(len(s.frames), height, width,
                                                                                         video_fps))]}
            request["mm_processor_kwargs"] = {"do_sample_frames": False}
        else:
            request["multi_modal_data"] = {"image": [Image.fromarray(frame) for frame in s.frames]}
        requests.append(request)
    return requests


def vllm_sampling_kwargs(max_new_tokens: int, temperature: float, seed: int) -> dict:
    """Keyword arguments of one request's `vllm.SamplingParams` (`seed`: the sample's own, from
    `sample_seed`); the answer is constrained to CAPTION_SCHEMA."""
    return {"max_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
            "structured_outputs": {"json": CAPTION_SCHEMA}}


class VLLMCaptioner:
    """Qwen3-VL through an in-process `vllm.LLM` (one engine per actor; the actor holds the
    GPUs the planner gave it)."""

    name = "vllm"

    def __init__(self, model_path: str, *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0, frames_as: str = "images", video_fps: float = 1.0, max_model_len: int = 8192,
                 max_frames: int = 10, **engine):
        from transformers import AutoProcessor
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        from etl.models.checkpoints import local_checkpoint

        model_path = local_checkpoint(model_path)  # s3://... is copied to this node once
        self.processor = AutoProcessor.from_pretrained(model_path)
        image_processor = self.processor.image_processor
        self.frame_factor = image_processor.patch_size * image_processor.merge_size
        self.llm = LLM(**vllm_engine_kwargs(model_path, max_model_len=max_model_len, max_frames=max_frames,
                                            frames_as=frames_as, seed=seed, **engine))
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.frames_as, self.video_fps = frames_as, video_fps
        self._params = lambda kwargs: SamplingParams(**{
            **kwargs, "structured_outputs": StructuredOutputsParams(**kwargs["structured_outputs"])})

    def caption(self, samples: Sequence[CaptionSample]) -> list[CaptionResult]:
        if not samples:
            return []
        sampling = [self._params(vllm_sampling_kwargs(self.max_new_tokens, self.temperature,
                                                      sample_seed(self.seed, s.key))) for s in samples]
        requests = vllm_requests(self.processor, samples, self.frames_as, self.video_fps)
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [parse_answer(output.outputs[0].text) for output in outputs]


CAPTIONERS = {"transformers": TransformersCaptioner, "vllm": VLLMCaptioner}


def captioner_from_config(config) -> "Captioner":
    """The captioner a job config names (`models.captioner`, `frames.max_frames`), as the
    pipeline's CaptionStage and `jobs.smoke_gpu` run it."""
    settings = config.models.captioner
    engine = dict(max_model_len=settings.max_model_len, max_frames=config.frames.max_frames,
                  tensor_parallel_size=settings.tensor_parallel_size, max_num_seqs=settings.max_num_seqs,
                  gpu_memory_utilization=settings.gpu_memory_utilization, mm_cache_gb=settings.mm_cache_gb)
    return CAPTIONERS[settings.backend](
        settings.model, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, seed=settings.seed,
        frames_as=settings.frames_as, video_fps=settings.video_fps, **(engine if settings.backend == "vllm" else {}))
