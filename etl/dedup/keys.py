"""Candidate keys: each sample's rows for the group shuffle of `jobs.dedup`. Two samples can
only be judged duplicates if they share a key, so every kind's keys are built so that no true
pair is missed (exact, near) or few are (semantic):

- exact: the sample's pixel key (`pixel_key`: its frames' pixel hashes, in order, hashed once
  more). One key per sample.
- near: the first frame's 64-bit pHash cut into `near_distance + 1` bands. Two hashes at most
  k bits apart agree on at least one of k + 1 bands (pigeonhole), so banding finds every pair
  within k; the whole sample is checked after (`etl.dedup.compare`).
- semantic: random-hyperplane LSH of the embedding (SimHash): `bands` keys of `bits` signs each.
  Two embeddings at angle theta agree on a sign with probability 1 - theta/pi, so a pair at
  cosine 0.97 shares at least one of 12 bands of 14 bits with probability 0.99; a pair at 0.3,
  a band with probability 0.0007.

A key is one int64: the kind in the top 2 bits, the band in the next 6, the band's value in the
low 56, so grouping is on a number.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

EXACT, NEAR, SEMANTIC = 0, 1, 2
KINDS = {EXACT: "exact", NEAR: "near", SEMANTIC: "semantic"}
HYPERPLANE_SEED = 20261204  # fixed: every pass hashes every sample with the same planes
_VALUE_BITS = 56


@dataclass(frozen=True)
class KeySpec:
    exact: bool = True
    near_distance: Optional[int] = 6          # None: no near duplicates
    semantic_threshold: Optional[float] = 0.97  # None: no semantic duplicates
    semantic_bands: int = 12
    semantic_bits: int = 14

    def __post_init__(self):
        if self.near_distance is not None and not 0 <= self.near_distance <= 15:
            raise ValueError(f"near_distance={self.near_distance}: allowed 0..15 (bits of a 64-bit pHash)")
        if not 1 <= self.semantic_bands <= 63 or not 1 <= self.semantic_bits <= _VALUE_BITS:
            raise ValueError(f"semantic_bands={self.semantic_bands}, semantic_bits={self.semantic_bits}: allowed "
                             f"1..63 bands of 1..{_VALUE_BITS} bits")


def pixel_keys(frame_pixel_hashes: pa.Array) -> list[str]:
    """Per sample: xxh3-128 of its frames' pixel hashes in order; equal keys, equal frames."""
    import xxhash

    return [xxhash.xxh3_128_hexdigest("|".join(hashes).encode()) for hashes in frame_pixel_hashes.to_pylist()]


def _key(kind: int, band: int, values: np.ndarray) -> np.ndarray:
    low = np.asarray(values, np.uint64) & np.uint64((1 << _VALUE_BITS) - 1)
    return ((np.uint64(kind) << np.uint64(62)) | (np.uint64(band) << np.uint64(_VALUE_BITS)) | low).view(np.int64)


def band_edges(bands: int, bits: int = 64) -> list[tuple[int, int]]:
    """`bands` contiguous bit ranges covering `bits`, sizes differing by at most one."""
    cuts = np.linspace(0, bits, bands + 1).round().astype(int)
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))


def near_keys(first_frame_phashes: np.ndarray, distance: int) -> list[np.ndarray]:
    """One key array per band of the pHashes (int64)."""
    hashes = np.asarray(first_frame_phashes, np.int64).view(np.uint64)
    keys = []
    for band, (start, stop) in enumerate(band_edges(distance + 1)):
        values = (hashes >> np.uint64(64 - stop)) & np.uint64((1 << (stop - start)) - 1)
        keys.append(_key(NEAR, band, values))
    return keys


def hyperplanes(dim: int, spec: KeySpec) -> np.ndarray:
    """(bands * bits, dim) fixed random normals: the same for every pass and every worker."""
    return np.random.default_rng(HYPERPLANE_SEED).standard_normal((spec.semantic_bands * spec.semantic_bits, dim))


def semantic_keys(embeddings: np.ndarray, spec: KeySpec) -> list[np.ndarray]:
    """One key array per band: the signs of the embeddings against the band's hyperplanes."""
    signs = (np.asarray(embeddings, np.float64) @ hyperplanes(embeddings.shape[1], spec).T) > 0
    weights = np.uint64(1) << np.arange(spec.semantic_bits, dtype=np.uint64)
    keys = []
    for band in range(spec.semantic_bands):
        bits = signs[:, band * spec.semantic_bits:(band + 1) * spec.semantic_bits]
        keys.append(_key(SEMANTIC, band, (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)))
    return keys


def exact_keys(keys: list[str]) -> np.ndarray:
    """The pixel keys' first 56 bits as the exact kind's group key (`pixel_key` decides)."""
    return _key(EXACT, 0, np.array([int(k[:14], 16) for k in keys], np.uint64))


def kind_of(keys: np.ndarray) -> np.ndarray:
    return (np.asarray(keys, np.int64).view(np.uint64) >> np.uint64(62)).astype(np.int8)
