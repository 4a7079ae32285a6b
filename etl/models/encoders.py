"""GPU encoders as plain callables on a batch of frames (no Ray needed to run or benchmark them).

- `ImageEmbedder`: CLIP / SigLIP image embeddings (any model with `get_image_features`).
- `LatentEncoder`: diffusers `AutoencoderKL` latents (the distribution's mean, so repeatable).
- `FrameEncoders`: both on one upload of the frames, as the pipeline's encode stage runs them.

Each takes uint8 frames (N, H, W, 3) as the CPU stage makes them and returns float32 numpy
arrays; `encode(tensor)` works on frames already on the device and keeps results there. On
CUDA: weights in bf16 (the SD VAE overflows in fp16), frames copied once through a reused
pinned buffer and normalised on the GPU, one copy back per batch of results.
"""

from typing import Optional

import numpy as np


def _device(device: Optional[str]) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")


class FrameUpload:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) tensor on the device. On CUDA it copies
    through one pinned host buffer, grown as needed and reused (pinning fresh pages for every
    batch costs more than the copy), and asynchronously: the buffer is only rewritten after
    the previous copy out of it has finished."""

    def __init__(self, device: str):
        self.device = device
        self._pinned = None
        self._copied = None  # CUDA event: the last copy out of the pinned buffer

    def __call__(self, frames: np.ndarray):
        import torch

        _check_frames(frames)
        host = torch.from_numpy(np.ascontiguousarray(frames))
        if not self.device.startswith("cuda"):
            return host.permute(0, 3, 1, 2)
        if self._copied is not None:
            self._copied.synchronize()
        if self._pinned is None or self._pinned.numel() < host.numel():
            self._pinned = torch.empty(host.numel(), dtype=torch.uint8, pin_memory=True)
        staged = self._pinned[:host.numel()].view(host.shape)
        staged.copy_(host)
        on_device = staged.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return on_device.permute(0, 3, 1, 2)


def _embedding_dim(config: dict) -> int:
    """From a model config as a dict: CLIP projects (`projection_dim`), SigLIP pools the vision tower."""
    return int(config["projection_dim"] if "projection_dim" in config else config["vision_config"]["hidden_size"])


def _saved_config(model_path: str) -> dict:
    import json
    from pathlib import Path

    from etl.models.checkpoints import local_config

    return json.loads((Path(local_config(model_path)) / "config.json").read_text())


def embedding_dim(model_path: str) -> int:
    """Width of the embeddings a checkpoint produces, from its config alone (no weights).
    The driver reads config.json itself: transformers' AutoConfig would import the library
    (seconds of driver start-up) for two numbers that `save_pretrained` always writes."""
    try:
        return _embedding_dim(_saved_config(model_path))
    except KeyError:  # a hand-written config that relies on the class defaults
        from transformers import AutoConfig

        from etl.models.checkpoints import local_config

        return _embedding_dim(AutoConfig.from_pretrained(local_config(model_path)).to_dict())


def _latent_shape(config, height: int, width: int) -> tuple[int, int, int]:
    downscale = 2 ** (len(config["block_out_channels"]) - 1)
    return (config["latent_channels"], height // downscale, width // downscale)


def latent_shape(model_path: str, height: int, width: int) -> tuple[int, int, int]:
    """(C, H/f, W/f) of a VAE checkpoint's latents for frames of height x width, from its
    config.json (what diffusers' `load_config` returns, without importing diffusers)."""
    return _latent_shape(_saved_config(model_path), height, width)


class ImageEmbedder:
    """Frames -> L2-normalised image embeddings (N, D)."""

    def __init__(self, model_path: str, *, device: Optional[str] = None, batch_size: int = 64):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        from etl.models.checkpoints import local_checkpoint

        model_path = local_checkpoint(model_path)
        self.device = _device(device)
        self.dtype = _dtype(self.device)
        self.model = AutoModel.from_pretrained(model_path, dtype=self.dtype).eval().to(self.device)
        processor = AutoImageProcessor.from_pretrained(model_path)
        crop = getattr(processor, "crop_size", None) or processor.size
        self.size = (crop["height"], crop["width"]) if "height" in crop else (crop["shortest_edge"],) * 2
        self.mean = torch.tensor(processor.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, device=self.device).view(1, 3, 1, 1)
        self.batch_size = batch_size
        self.dim = _embedding_dim(self.model.config.to_dict())
        self.upload = FrameUpload(self.device)

    def encode(self, frames):
        """uint8 (N, 3, H, W) on the device -> float32 (N, D) on the device."""
        import torch
        import torch.nn.functional as F

        out = []
        for start in range(0, len(frames), self.batch_size):
            x = frames[start:start + self.batch_size].float().div_(255.0)
            if tuple(x.shape[-2:]) != self.size:
                x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False)
            x = ((x - self.mean) / self.std).to(self.dtype)
            with torch.inference_mode():
                features = self.model.get_image_features(pixel_values=x)
            features = getattr(features, "pooler_output", features).float()
            out.append(F.normalize(features, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, self.dim), device=self.device)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.encode(self.upload(frames)).cpu().numpy()


class LatentEncoder:
    """Frames -> VAE latents (N, C, H/f, W/f), scaled by the VAE's scaling_factor."""

    def __init__(self, model_path: str, *, device: Optional[str] = None, batch_size: int = 16):
        from diffusers import AutoencoderKL

        from etl.models.checkpoints import local_checkpoint

        model_path = local_checkpoint(model_path)
        self.device = _device(device)
        self.dtype = _dtype(self.device)
        self.vae = AutoencoderKL.from_pretrained(model_path, torch_dtype=self.dtype).eval().to(self.device)
        self.batch_size = batch_size
        self.upload = FrameUpload(self.device)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return _latent_shape(self.vae.config, height, width)

    def encode(self, frames):
        """uint8 (N, 3, H, W) on the device -> float32 latents on the device."""
        import torch

        out = []
        for start in range(0, len(frames), self.batch_size):
            x = (frames[start:start + self.batch_size].float().div_(127.5).sub_(1.0)).to(self.dtype)
            with torch.inference_mode():
                out.append((self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor).float())
        if not out:
            return torch.zeros((0, *self.latent_shape(*frames.shape[2:4])), device=self.device)
        return torch.cat(out)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.encode(self.upload(frames)).cpu().numpy()


class FrameEncoders:
    """The embedder and the VAE on one upload of the frames; results cross back to the host
    once, together."""

    def __init__(self, embedder_path: str, vae_path: str, *, device: Optional[str] = None,
                 embedder_batch_size: int = 64, vae_batch_size: int = 16):
        self.device = _device(device)
        self.embedder = ImageEmbedder(embedder_path, device=self.device, batch_size=embedder_batch_size)
        self.vae = LatentEncoder(vae_path, device=self.device, batch_size=vae_batch_size)
        self.upload = FrameUpload(self.device)

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 -> (embeddings (N, D), latents (N, C, h, w)), float32."""
        on_device = self.upload(frames)
        embeddings, latents = self.embedder.encode(on_device), self.vae.encode(on_device)
        return embeddings.cpu().numpy(), latents.cpu().numpy()


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
