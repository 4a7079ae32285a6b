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


def copies_of(jpeg: bytes, seed: int) -> dict[str, bytes]:
    """The three kinds of copy a dataset collects: the same file, the same image re-encoded at
    another JPEG quality, and a resized copy (40-80% of each side), each from `jpeg`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    reencoded, resized = io.BytesIO(), io.BytesIO()
    image.save(reencoded, format="JPEG", quality=int(rng.integers(30, 71)))
    scale = float(rng.uniform(0.4, 0.8))
    image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))), Image.LANCZOS).save(
        resized, format="JPEG", quality=int(rng.integers(75, 96)))
    return {"exact": jpeg, "reencoded": reencoded.getvalue(), "resized": resized.getvalue()}


def with_duplicates(rows: list[dict], every: int, seed: int = 0) -> list[dict]:
    """`rows` ({id, caption, frames}) and, for every `every`-th, one copy (the kinds of
    `copies_of` in turn, every frame copied) appended under a new id: the duplicates a demo or
    test input should hold. A copy's caption names its original."""
    out = list(rows)
    kinds = ("exact", "reencoded", "resized")
    next_id = max((int(r["id"]) for r in rows), default=-1) + 1
    for n, row in enumerate(rows[::every]):
        kind = kinds[n % len(kinds)]
        try:
            frames = [copies_of(frame, seed + n * 31 + k)[kind] for k, frame in enumerate(row["frames"])]
        except OSError:  # a broken frame (the input's quarantine cases) has no copy to make
            continue
        out.append({**row, "id": next_id, "caption": f"{kind} copy of sample {row['id']}", "frames": frames})
        next_id += 1
    return out
