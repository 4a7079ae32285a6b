"""GPU encoders as plain callables on a batch of frames (no Ray needed to run or benchmark them).

- `ImageEmbedder`: CLIP / SigLIP image embeddings (any model with `get_image_features`).
- `LatentEncoder`: diffusers `AutoencoderKL` latents (the distribution's mean, so repeatable).

Both take uint8 frames (N, H, W, 3) as the CPU stage makes them, move them to the device once,
normalise there, and return float32 numpy arrays. They use CUDA when present.
"""

from typing import Optional

import numpy as np


def _device(device: Optional[str]) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _to_tensor(frames: np.ndarray, device: str):
    import torch

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(frames))
    if device == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def _embedding_dim(config) -> int:
    return config.projection_dim if hasattr(config, "projection_dim") else config.vision_config.hidden_size


def embedding_dim(model_path: str) -> int:
    """Width of the embeddings a checkpoint produces, from its config alone (no weights)."""
    from transformers import AutoConfig

    return _embedding_dim(AutoConfig.from_pretrained(model_path))


def _latent_shape(config, height: int, width: int) -> tuple[int, int, int]:
    downscale = 2 ** (len(config["block_out_channels"]) - 1)
    return (config["latent_channels"], height // downscale, width // downscale)


def latent_shape(model_path: str, height: int, width: int) -> tuple[int, int, int]:
    """(C, H/f, W/f) of a VAE checkpoint's latents for frames of height x width, from its config."""
    from diffusers import AutoencoderKL

    return _latent_shape(AutoencoderKL.load_config(model_path), height, width)


class ImageEmbedder:
    """Frames -> L2-normalised image embeddings (N, D)."""

    def __init__(self, model_path: str, *, device: Optional[str] = None, batch_size: int = 64):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.device = _device(device)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(model_path, dtype=dtype).eval().to(self.device)
        processor = AutoImageProcessor.from_pretrained(model_path)
        crop = getattr(processor, "crop_size", None) or processor.size
        self.size = (crop["height"], crop["width"]) if "height" in crop else (crop["shortest_edge"],) * 2
        self.mean = torch.tensor(processor.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, device=self.device).view(1, 3, 1, 1)
        self.dtype, self.batch_size = dtype, batch_size
        self.dim = _embedding_dim(self.model.config)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = []
        for start in range(0, len(frames), self.batch_size):
            x = _to_tensor(frames[start:start + self.batch_size], self.device)
            if tuple(x.shape[-2:]) != self.size:
                x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False)
            x = ((x - self.mean) / self.std).to(self.dtype)
            with torch.inference_mode():
                features = self.model.get_image_features(pixel_values=x)
            features = getattr(features, "pooler_output", features).float()
            out.append(F.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class LatentEncoder:
    """Frames -> VAE latents (N, C, H/f, W/f), scaled by the VAE's scaling_factor."""

    def __init__(self, model_path: str, *, device: Optional[str] = None, batch_size: int = 16):
        import torch
        from diffusers import AutoencoderKL

        self.device = _device(device)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.vae = AutoencoderKL.from_pretrained(model_path, torch_dtype=dtype).eval().to(self.device)
        self.dtype, self.batch_size = dtype, batch_size

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return _latent_shape(self.vae.config, height, width)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(frames), self.batch_size):
            x = (_to_tensor(frames[start:start + self.batch_size], self.device) * 2 - 1).to(self.dtype)
            with torch.inference_mode():
                latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
            out.append(latents.float().cpu().numpy())
        if not out:
            return np.zeros((0, *self.latent_shape(*frames.shape[1:3])), np.float32)
        return np.concatenate(out)


def pool_per_sample(frame_embeddings: np.ndarray, frames_per_sample: np.ndarray) -> np.ndarray:
    """Mean of each sample's frame embeddings, re-normalised; zeros for samples with no frames."""
    counts = np.asarray(frames_per_sample, dtype=np.int64)
    out = np.zeros((len(counts), frame_embeddings.shape[1]), np.float32)
    has = counts > 0
    if has.any():
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
        sums = np.add.reduceat(frame_embeddings, starts, axis=0)
        means = sums / counts[has, None]
        out[has] = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return out
