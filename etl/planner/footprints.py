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
class EncoderFootprint:
    """The embedder and the VAE together (one actor owns both), from their checkpoints: what
    sizes the encode stage's activations and the rows it adds."""

    weights_bytes: int
    embedder_pixels: int = 0      # the embedder's input, pixels per frame (its image_size squared)
    embedding_dim: int = 0
    vae_channels: int = 0         # the VAE encoder's first block: activations per pixel at full size
    latent_channels: int = 0
    latent_downscale: int = 1     # latents are 1/f of the frame's side
    text_states: tuple[int, int] = (0, 0)  # per caption: the text encoder's hidden states (length, width)


@dataclass(frozen=True)
class Footprints:
    captioner: ModelFootprint
    encoders: EncoderFootprint


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


def _weights(uri: str) -> int:
    return sum(size for name, size in _checkpoint_files(uri).items() if name.endswith(_WEIGHT_SUFFIXES))


def encoders_footprint(embedder_uri: str, vae_uri: str) -> EncoderFootprint:
    """Weights from both checkpoints' files; the rest from their config.json files (CLIP or
    SigLIP, diffusers AutoencoderKL), which `save_pretrained` always writes."""
    weights = _weights(embedder_uri) + _weights(vae_uri)
    embedder, vae = _read_json(embedder_uri, "config.json"), _read_json(vae_uri, "config.json")
    vision = embedder.get("vision_config", embedder)
    blocks = vae.get("block_out_channels") or [0]
    return EncoderFootprint(weights, embedder_pixels=int(vision.get("image_size", 224)) ** 2,
                            embedding_dim=int(embedder.get("projection_dim") or vision.get("hidden_size", 0)),
                            vae_channels=int(blocks[0]), latent_channels=int(vae.get("latent_channels", 4)),
                            latent_downscale=2 ** (len(blocks) - 1))


def text_encoder_footprint(config, encoders: EncoderFootprint) -> EncoderFootprint:
    """`encoders` with the text encoder the config adds: its hidden states per caption, and its
    weights unless it is the embedder's own text tower (kind clip, no model of its own)."""
    from dataclasses import replace

    from etl.models.text_encoders import text_states_shape

    text = config.models.text_encoder
    if text.kind == "none":
        return encoders
    length, width = text_states_shape(text.model or config.models.embedder.model, text.kind, text.max_length)
    weights = encoders.weights_bytes + (_weights(text.model) if text.model else 0)
    return replace(encoders, weights_bytes=weights, text_states=(length, width))


def footprints_of(config) -> Footprints:
    models = config.models
    return Footprints(captioner_footprint(models.captioner.model),
                      text_encoder_footprint(config, encoders_footprint(models.embedder.model, models.vae.model)))
