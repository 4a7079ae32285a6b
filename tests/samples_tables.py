"""Small `samples` tables built the way the curation job builds them: rows of the versioned
schema, written per bucket by `write_bucket_files`, committed by `commit_files`."""

import uuid
from typing import Optional

import numpy as np
import pyarrow as pa

from etl.sinks.delta_commits import commit_files
from etl.sinks.partitioning import buckets_of, derived_sample_ids
from etl.sinks.bucket_files import write_bucket_files
from schemas.tables import samples_schema

EMBEDDING_DIM = 8
LATENT_SHAPE = (4, 2, 2)
SCHEMA = samples_schema(EMBEDDING_DIM, LATENT_SHAPE)
TEXT_STATES = (6, 4)  # tokens per caption, width
WITH_TEXT_STATES = samples_schema(EMBEDDING_DIM, LATENT_SHAPE, text_states=TEXT_STATES)
BUCKETS = 3


def quality_of(row: int):
    """Scores 1..5 in turn; every 4th sample's answer was unparsable (null)."""
    return None if row % 4 == 3 else float(row % 5 + 1)


def aesthetics_of(row: int):
    return None if row % 6 == 5 else float((row * 2) % 5 + 1)


def frames_of(row: int) -> int:
    return 1 + row % 3


def _unit_rows(rng, count: int, dim: int = EMBEDDING_DIM) -> np.ndarray:
    values = rng.standard_normal((count, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def text_states_of(shard: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The caption text states and masks of a shard's rows: a mask of 1 + row % 6 tokens."""
    states = np.random.default_rng(1000 + shard).standard_normal((count, *TEXT_STATES)).astype(np.float32)
    masks = (np.arange(TEXT_STATES[0])[None, :] <= (np.arange(count) % TEXT_STATES[0])[:, None]).astype(np.int8)
    return states, masks


def _text_state_columns(schema: pa.Schema, shard: int, count: int) -> dict:
    if "caption_text_states" not in schema.names:
        return {}
    states, masks = text_states_of(shard, count)
    return {name: pa.ExtensionArray.from_storage(schema.field(name).type, pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), int(np.prod(values.shape[1:])))) for name, values in
        (("caption_text_states", states), ("caption_text_mask", masks))}


def sample_rows(shard: int, count: int, run_id: str = "run-test", schema: pa.Schema = SCHEMA, *,
                frames: Optional[list[int]] = None, hashes: Optional[tuple[list, list]] = None,
                embeddings: Optional[np.ndarray] = None, filtered_by: Optional[list[list[str]]] = None) -> pa.Table:
    """`count` rows of one shard, with logical (tensor) types, deterministic in (shard, row);
    `frames` (per row), `hashes` (pixel, perceptual: per row, per frame) and `embeddings` (the
    pooled ones, in the schema's width) replace the made-up ones; `filtered_by` names the rules
    each row fails (none by default)."""
    rng = np.random.default_rng(shard)
    rows = np.arange(count)
    ids = derived_sample_ids(pa.array(np.full(count, shard)), pa.array(rows))
    frames = frames or [frames_of(r) for r in rows]
    embedding_type = schema.field("embedding").type
    latent_type = schema.field("latents").type.value_type
    dim = embedding_type.shape[0]
    pixel_hashes, perceptual_hashes = hashes or (
        [[f"{shard:08x}{r:08x}{k:016x}" for k in range(f)] for r, f in zip(rows, frames)],
        [list(rng.integers(-2**63, 2**63 - 1, f)) for f in frames])

    def per_frame(kind, shape):
        values = rng.standard_normal((sum(frames), *shape)).astype(np.float32)
        tensors = pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1)), int(np.prod(shape))))
        return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(frames)]).astype(np.int32)), tensors)

    quality = [quality_of(r) for r in rows]
    caption_embeddings = _unit_rows(rng, count, dim)
    embeddings = _unit_rows(rng, count, dim) if embeddings is None else np.asarray(embeddings, np.float32)
    return pa.table({
        "sample_id": ids, "shard": pa.array(np.full(count, shard, np.int64)), "row": pa.array(rows.astype(np.int64)),
        "bucket": buckets_of(ids, BUCKETS), "caption": [f"sample {shard}:{r}" for r in rows],
        "quality": pa.array(quality, pa.float32()),
        "aesthetics": pa.array([aesthetics_of(r) for r in rows], pa.float32()),
        "caption_parse_error": [None if q is not None else "quality None is not a number from 1 to 5"
                                for q in quality],
        "frame_count": pa.array(frames, pa.int32()), "frame_sizes": [[[32, 24]] * f for f in frames],
        "frame_pixel_hashes": pixel_hashes,
        "frame_perceptual_hashes": pa.array(perceptual_hashes, pa.list_(pa.int64())),
        "embedding": pa.ExtensionArray.from_storage(embedding_type, pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.reshape(-1)), dim)),
        "frame_embeddings": per_frame(embedding_type, (dim,)),
        "latents": per_frame(latent_type, LATENT_SHAPE),
        "caption_embedding": pa.ExtensionArray.from_storage(embedding_type, pa.FixedSizeListArray.from_arrays(
            pa.array(caption_embeddings.reshape(-1)), dim)),
        "clip_score_caption": pa.array(np.sum(embeddings * caption_embeddings, axis=1), pa.float32()),
        "clip_score_text": pa.array([None] * count, pa.float32()),
        **_text_state_columns(schema, shard, count),
        "filtered_by": pa.array(filtered_by or [[]] * count, pa.list_(pa.string())),
        "captioner": ["tiny-qwen3-vl"] * count, "embedder": ["tiny-clip"] * count, "vae": ["tiny-vae"] * count,
        "run_id": [run_id] * count,
    }, schema=schema)


def commit_samples(output_uri: str, rows: pa.Table) -> int:
    """One Delta commit of `rows` into `<output_uri>/samples`; returns the new version."""
    uri = f"{output_uri.rstrip('/')}/samples"
    files = write_bucket_files(rows, rows.schema, uri, f"test-{uuid.uuid4().hex[:8]}")
    return commit_files(uri, rows.schema, files, {"run_id": rows.column("run_id")[0].as_py()})
