"""Tiny random-weight checkpoints with the production classes, saved with `save_pretrained`.

Tests, the demo and CI load them through the same `from_pretrained(path)` code as real
checkpoints; nothing is downloaded. `python -m etl.models.tiny DIR` builds them all.
"""

import sys
from pathlib import Path

SEED = 0


def build_clip(path: Path) -> Path:
    """`CLIPModel` (the class of openai/clip-vit-*) with 2-layer towers and 16-d projections."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(SEED)
    config = CLIPConfig(
        text_config=dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    return path


def build_vae(path: Path) -> Path:
    """diffusers `AutoencoderKL` with Stable Diffusion's layout (4 blocks: 1/8 scale, 4 latent
    channels) and tiny widths."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    blocks = 4
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 8, 16, 16), sample_size=224,
    ).eval().save_pretrained(path)
    return path


BUILDERS = {"clip": build_clip, "vae": build_vae}


def ensure_tiny_models(root) -> dict[str, Path]:
    """Build any tiny checkpoint missing under `root`; return {name: path}."""
    root = Path(root)
    paths = {}
    for name, build in BUILDERS.items():
        path = root / name
        if not (path / "config.json").exists():
            build(path)
        paths[name] = path
    return paths


if __name__ == "__main__":
    for name, path in ensure_tiny_models(sys.argv[1] if len(sys.argv) > 1 else "models/tiny").items():
        print(f"{name}: {path}")
