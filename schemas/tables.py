"""Table schemas, version 1. Tensor shapes come from the models a run uses (embedding width,
latent shape), so each schema is a function of those; everything else is fixed."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLUMN = "bucket"


def samples_schema(embedding_dim: int, latent_shape: tuple[int, int, int]) -> pa.Schema:
    """One row per processed sample."""
    embedding = pa.fixed_shape_tensor(pa.float32(), [embedding_dim])
    latent = pa.fixed_shape_tensor(pa.float32(), list(latent_shape))
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.int64(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field(PARTITION_COLUMN, pa.int32(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("quality", pa.float32()),          # null when the answer was unparsable
        pa.field("aesthetics", pa.float32()),
        pa.field("caption_parse_error", pa.string()),
        pa.field("frame_count", pa.int32(), nullable=False),
        pa.field("frame_sizes", pa.list_(pa.list_(pa.int32(), 2)), nullable=False),  # (w, h) as stored
        pa.field("embedding", embedding, nullable=False),                           # pooled per sample
        pa.field("frame_embeddings", pa.list_(embedding), nullable=False),
        pa.field("latents", pa.list_(latent), nullable=False),                      # one per frame
        pa.field("captioner", pa.string(), nullable=False),
        pa.field("embedder", pa.string(), nullable=False),
        pa.field("vae", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ], metadata={"schema_version": str(SCHEMA_VERSION), "table": "samples"})


def quarantine_schema() -> pa.Schema:
    """One row per sample that could not be processed, with where and why."""
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.int64(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field(PARTITION_COLUMN, pa.int32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),        # read | decode | caption | encode
        pa.field("error_class", pa.string(), nullable=False),  # the reason's first clause
        pa.field("error", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ], metadata={"schema_version": str(SCHEMA_VERSION), "table": "quarantine"})


def runs_schema() -> pa.Schema:
    """The ledger: one row per (run, shard) completed."""
    return pa.schema([
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard", pa.int64(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("quarantined", pa.int64(), nullable=False),
        pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("config", pa.string(), nullable=False),  # the run's config as JSON
    ], metadata={"schema_version": str(SCHEMA_VERSION), "table": "runs"})
