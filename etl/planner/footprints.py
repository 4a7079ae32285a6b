"""Model footprints, from the checkpoints themselves (weight files and model configs), never
from names: what the placement counts for the captioner and for the encoders."""

import json
import math
from dataclasses import dataclass

from etl.planner.units import PlanError

PROMPT_TOKENS = 160                 # system prompt + chat template + the sample's text, typical


@dataclass(frozen=True)
class ModelFootprint:
    weights_bytes: int
    kv_bytes_per_token: int = 0   # decoder models: K and V over all layers, in the serving dtype
    frame_factor: int = 32        # vision models: pixels per token side (patch x merge)
    temporal_patch: int = 1       # frames per token in video mode


@dataclass(frozen=True)
class Footprints:
    captioner: ModelFootprint
    encoders: ModelFootprint      # embedder and VAE together: one actor owns both


def request_tokens(config, footprint: ModelFootprint) -> int:
    """Tokens of the longest request: every frame at the captioner's pixel budget, the prompt,
    and the answer."""
    frames = config.frames
    per_frame = math.ceil(frames.max_pixels / footprint.frame_factor ** 2)
    temporal = footprint.temporal_patch if config.models.captioner.frames_as == "video" else 1
    return math.ceil(frames.max_frames / temporal) * per_frame + PROMPT_TOKENS + config.models.captioner.new_tokens


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _checkpoint_files(uri: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    from etl import storage

    fs, root = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = {info.path[len(root):].lstrip("/"): info.size for info in infos if info.type == pafs.FileType.File}
    if not files:
        raise PlanError(f"no checkpoint at {uri}: the planner sizes models from their weight files and configs")
    return files


def _read_json(uri: str, name: str) -> dict:
    from etl import storage

    fs, root = storage.resolve(uri)
    with fs.open_input_stream(storage.join(root, name)) as stream:
        return json.loads(stream.read())


def captioner_footprint(uri: str) -> ModelFootprint:
    """Weights from the checkpoint's files; KV bytes per token from its text config (bf16)."""
    files = _checkpoint_files(uri)
    weights = sum(size for name, size in files.items() if name.endswith(_WEIGHT_SUFFIXES))
    config = _read_json(uri, "config.json")
    text = config.get("text_config", config)
    heads = text.get("num_key_value_heads", text.get("num_attention_heads", 1))
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv = 2 * text["num_hidden_layers"] * heads * head_dim * 2
    vision = config.get("vision_config", {})
    factor = vision.get("patch_size", 16) * vision.get("spatial_merge_size", 2)
    return ModelFootprint(weights, kv, factor, vision.get("temporal_patch_size", 1))


def encoders_footprint(*uris: str) -> ModelFootprint:
    return ModelFootprint(sum(size for uri in uris for name, size in _checkpoint_files(uri).items()
                              if name.endswith(_WEIGHT_SUFFIXES)))


def footprints_of(config) -> Footprints:
    models = config.models
    return Footprints(captioner_footprint(models.captioner.model),
                      encoders_footprint(models.embedder.model, models.vae.model))
