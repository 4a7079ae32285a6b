"""GPU encoders as plain callables on a batch of frames (no Ray needed to run or benchmark them).

- `ImageEmbedder`: CLIP / SigLIP image embeddings (any model with `get_image_features`).
- `LatentEncoder`: diffusers `AutoencoderKL` latents (the distribution's mean, so repeatable).
- `FrameEncoders`: both on one upload of the frames, as the pipeline's encode stage runs them;
  `encode_views` takes the CPU stage's captioner views (any sizes) and cuts the square crops
  the encoders read on the device (`centre_crops`), so the CPU stage resizes each frame once.

Each takes uint8 frames (N, H, W, 3) and returns float32 numpy arrays; `encode(tensor)` works on
frames already on the device and keeps results there. On CUDA: weights in bf16 (the SD VAE
overflows in fp16), frames copied once through a reused pinned buffer, cropped, resized and
normalised on the GPU, one copy back per batch of results.
"""

import warnings
from typing import Optional, Sequence

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
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) tensor on the device; `views` moves frames
    of different sizes in one copy. On CUDA it copies through one pinned host buffer, grown as
    needed and reused (pinning fresh pages for every batch costs more than the copy), and
    asynchronously: the buffer is only rewritten after the previous copy out of it has finished."""

    def __init__(self, device: str):
        self.device = device
        self._pinned = None
        self._copied = None  # CUDA event: the last copy out of the pinned buffer

    def __call__(self, frames: np.ndarray):
        _check_frames(frames)
        return self.views([frames])[0].permute(0, 3, 1, 2)

    def views(self, arrays: Sequence[np.ndarray]) -> list:
        """uint8 numpy arrays of any shapes (read-only Arrow memory is fine: it is only read)
        -> tensors of the same shapes on the device."""
        import torch

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            hosts = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        if not self.device.startswith("cuda"):
            return hosts
        total = sum(h.numel() for h in hosts)
        if self._copied is not None:
            self._copied.synchronize()
        if self._pinned is None or self._pinned.numel() < total:
            self._pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        ends = np.cumsum([h.numel() for h in hosts])
        for host, end in zip(hosts, ends):
            self._pinned[end - host.numel():end].view(host.shape).copy_(host)
        on_device = self._pinned[:total].to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return [on_device[end - h.numel():end].view(h.shape) for h, end in zip(hosts, ends)]


CROP_CHUNK_FRAMES = 64  # bounds the float copies a resize makes: 64 x 448 x 448 x 3 x 4 B = 154 MB


def centre_crops(frames: Sequence, size: int):
    """uint8 (H, W, 3) tensors of any sizes, on one device -> uint8 (N, 3, size, size) there:
    each frame's centre square resized to size x size, bicubic and antialiased as Pillow
    resizes (a frame already that size is left as it is). Frames of one shape (a video's, a
    dataset's) are resized together."""
    import torch
    import torch.nn.functional as F

    device = frames[0].device if len(frames) else "cpu"
    out = torch.empty((len(frames), 3, size, size), dtype=torch.uint8, device=device)
    by_shape: dict[tuple, list[int]] = {}
    for i, frame in enumerate(frames):
        if frame.dim() != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
            raise ValueError(f"frame {i}: need uint8 (H, W, 3), got {frame.dtype} {tuple(frame.shape)}")
        by_shape.setdefault(tuple(frame.shape), []).append(i)
    for (h, w, _), members in by_shape.items():
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        for start in range(0, len(members), CROP_CHUNK_FRAMES):
            chunk = members[start:start + CROP_CHUNK_FRAMES]
            square = torch.stack([frames[i][top:top + side, left:left + side] for i in chunk]).permute(0, 3, 1, 2)
            if side != size:
                square = F.interpolate(square.float(), size=(size, size), mode="bicubic", antialias=True,
                                       align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            out[torch.tensor(chunk, device=device)] = square
    return out


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
        return self._encode(self.upload(frames))

    def encode_views(self, views: Sequence[np.ndarray], crop_size: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) frames of any sizes -> the results for their crop_size centre crops,
        cut on the device (`centre_crops`) after one copy of all of them."""
        return self._encode(centre_crops(self.upload.views(views), crop_size))

    def _encode(self, on_device) -> tuple[np.ndarray, np.ndarray]:
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
