"""Synthetic multi-frame samples for the demo, tests and benchmarks (no downloads)."""

import io
from typing import Iterator

import numpy as np


def jpeg_frames(count: int, width: int, height: int, seed: int = 0, quality: int = 85) -> list[bytes]:
    """Photo-like JPEG frames: smooth colour structure plus mild noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (max(height // 24, 2), max(width // 24, 2), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
        noisy = np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(noisy).save(out, format="JPEG", quality=quality)
        frames.append(out.getvalue())
    return frames


def samples(count: int, *, width: int = 320, height: int = 180, min_frames: int = 5,
            max_frames: int = 10, corrupt_every: int = 0, seed: int = 0) -> Iterator[dict]:
    """Rows of {id, caption, frames}. With `corrupt_every=k`, every k-th sample carries a frame
    that is not a decodable JPEG (what the frame decoder must quarantine)."""
    rng = np.random.default_rng(seed)
    pool = jpeg_frames(16, width, height, seed)
    for i in range(count):
        frames = [pool[int(j)] for j in rng.integers(0, len(pool), int(rng.integers(min_frames, max_frames + 1)))]
        if corrupt_every and i % corrupt_every == corrupt_every - 1:
            frames[0] = frames[0][: len(frames[0]) // 3]  # truncated JPEG
        yield {"id": i, "caption": f"synthetic clip {i}", "frames": frames}


def claim_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame header of a baseline JPEG to claim another size: a decompression
    bomb's header on a small file."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 9:]
