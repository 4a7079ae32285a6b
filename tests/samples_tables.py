"""Small `samples` tables built the way the curation job builds them: rows of the versioned
schema, written per bucket by `write_bucket_files`, committed by `commit_files`."""

import uuid

import numpy as np
import pyarrow as pa

from etl.sinks.delta_commits import commit_files
from etl.sinks.partitioning import buckets_of, derived_sample_ids
from etl.sinks.bucket_files import write_bucket_files
from schemas.tables import samples_schema

EMBEDDING_DIM = 8
LATENT_SHAPE = (4, 2, 2)
SCHEMA = samples_schema(EMBEDDING_DIM, LATENT_SHAPE)
BUCKETS = 3


def quality_of(row: int):
    """Scores 1..5 in turn; every 4th sample's answer was unparsable (null)."""
    return None if row % 4 == 3 else float(row % 5 + 1)


def aesthetics_of(row: int):
    return None if row % 6 == 5 else float((row * 2) % 5 + 1)


def frames_of(row: int) -> int:
    return 1 + row % 3


def sample_rows(shard: int, count: int, run_id: str = "run-test") -> pa.Table:
    """`count` rows of one shard, with logical (tensor) types, deterministic in (shard, row)."""
    rng = np.random.default_rng(shard)
    rows = np.arange(count)
    ids = derived_sample_ids(pa.array(np.full(count, shard)), pa.array(rows))
    frames = [frames_of(r) for r in rows]
    embedding_type = SCHEMA.field("embedding").type
    latent_type = SCHEMA.field("latents").type.value_type

    def per_frame(kind, shape):
        values = rng.standard_normal((sum(frames), *shape)).astype(np.float32)
        tensors = pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1)), int(np.prod(shape))))
        return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(frames)]).astype(np.int32)), tensors)

    quality = [quality_of(r) for r in rows]
    return pa.table({
        "sample_id": ids, "shard": pa.array(np.full(count, shard, np.int64)), "row": pa.array(rows.astype(np.int64)),
        "bucket": buckets_of(ids, BUCKETS), "caption": [f"sample {shard}:{r}" for r in rows],
        "quality": pa.array(quality, pa.float32()),
        "aesthetics": pa.array([aesthetics_of(r) for r in rows], pa.float32()),
        "caption_parse_error": [None if q is not None else "quality None is not a number from 1 to 5"
                                for q in quality],
        "frame_count": pa.array(frames, pa.int32()), "frame_sizes": [[[32, 24]] * f for f in frames],
        "embedding": pa.ExtensionArray.from_storage(embedding_type, pa.FixedSizeListArray.from_arrays(
            pa.array(rng.standard_normal(count * EMBEDDING_DIM).astype(np.float32)), EMBEDDING_DIM)),
        "frame_embeddings": per_frame(embedding_type, (EMBEDDING_DIM,)),
        "latents": per_frame(latent_type, LATENT_SHAPE),
        "captioner": ["tiny-qwen3-vl"] * count, "embedder": ["tiny-clip"] * count, "vae": ["tiny-vae"] * count,
        "run_id": [run_id] * count,
    }, schema=SCHEMA)


def commit_samples(output_uri: str, rows: pa.Table) -> int:
    """One Delta commit of `rows` into `<output_uri>/samples`; returns the new version."""
    uri = f"{output_uri.rstrip('/')}/samples"
    files = write_bucket_files(rows, SCHEMA, uri, f"test-{uuid.uuid4().hex[:8]}")
    return commit_files(uri, SCHEMA, files, {"run_id": rows.column("run_id")[0].as_py()})
