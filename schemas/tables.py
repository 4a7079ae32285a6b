"""Table schemas, version 2. Tensor shapes come from the models a run uses (embedding width,
latent shape, text states), and the text columns from whether it runs them, so each schema is
a function of those; everything else is fixed."""

import json
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 2
PARTITION_COLUMN = "bucket"


def samples_schema(embedding_dim: int, latent_shape: tuple[int, int, int], *, text_tower: bool = True,
                   text_states: Optional[tuple[int, int]] = None) -> pa.Schema:
    """One row per processed sample. `text_tower`: the embedder's text tower runs (the caption's
    embedding and the two alignment scores); `text_states`: (sequence length, width) of the text
    encoder's hidden states per caption, None when none runs."""
    embedding = pa.fixed_shape_tensor(pa.float32(), [embedding_dim])
    latent = pa.fixed_shape_tensor(pa.float32(), list(latent_shape))
    alignment = [
        pa.field("caption_embedding", embedding, nullable=False),  # the text tower's, L2-normalised
        pa.field("clip_score_caption", pa.float32()),   # cosine(embedding, caption_embedding)
        pa.field("clip_score_text", pa.float32()),      # the same for the sample's own text; null without one
    ] if text_tower else []
    states = [
        pa.field("caption_text_states", pa.fixed_shape_tensor(pa.float32(), list(text_states)), nullable=False),
        pa.field("caption_text_mask", pa.fixed_shape_tensor(pa.int8(), [text_states[0]]), nullable=False),
    ] if text_states else []
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
        pa.field("frame_pixel_hashes", pa.list_(pa.string()), nullable=False),     # etl.transforms.hashes
        pa.field("frame_perceptual_hashes", pa.list_(pa.int64()), nullable=False),  # pHash bits as int64
        pa.field("embedding", embedding, nullable=False),                           # pooled per sample
        pa.field("frame_embeddings", pa.list_(embedding), nullable=False),
        pa.field("latents", pa.list_(latent), nullable=False),                      # one per frame
        *alignment,
        *states,
        pa.field("filtered_by", pa.list_(pa.string()), nullable=False),  # the config's rules it fails (etl.filters)
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


def duplicates_schema() -> pa.Schema:
    """`jobs.dedup`: one row per sample judged a duplicate, against the samples table at one
    version. `sample_run_id` is the run whose row was judged: a row re-processed since then is
    not covered until the next pass."""
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field(PARTITION_COLUMN, pa.int32(), nullable=False),    # the sample's bucket in `samples`
        pa.field("kind", pa.string(), nullable=False),              # exact | near | semantic
        pa.field("duplicate_of", pa.string(), nullable=False),      # the first-ranked sample it matches
        pa.field("hamming", pa.int32()),                            # exact, near: largest frame pHash distance
        pa.field("cosine", pa.float32()),                           # semantic: of the pooled embeddings
        pa.field("sample_run_id", pa.string(), nullable=False),
        pa.field("samples_version", pa.int64(), nullable=False),    # the samples table version judged
        pa.field("dedup_run_id", pa.string(), nullable=False),
    ], metadata={"schema_version": str(SCHEMA_VERSION), "table": "duplicates"})


def dedup_seen_schema() -> pa.Schema:
    """`jobs.dedup`'s ledger: every sample a pass compared, the run whose row it was, and the
    pass that first saw it (the first part of its rank: earlier copies are the ones kept)."""
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field(PARTITION_COLUMN, pa.int32(), nullable=False),
        pa.field("sample_run_id", pa.string(), nullable=False),
        pa.field("first_seen", pa.int32(), nullable=False),
        pa.field("dedup_run_id", pa.string(), nullable=False),
    ], metadata={"schema_version": str(SCHEMA_VERSION), "table": "dedup_seen"})


# --- Storage form ------------------------------------------------------------------------------
# Delta has no tensor or fixed-size list type, so tables are stored with plain lists (row-major
# values) and readers restore the logical types above with `restore`. A tensor column's shape
# (per element, for a list of tensors) goes into its field metadata under TENSOR_SHAPE_KEY; Delta
# keeps field metadata in the table's schema, so a reader learns the shapes from the table itself.

TENSOR_SHAPE_KEY = "tensor_shape"


def _tensor_shape(logical: pa.DataType):
    if isinstance(logical, pa.FixedShapeTensorType):
        return list(logical.shape)
    if pa.types.is_list(logical) or pa.types.is_large_list(logical):
        return _tensor_shape(logical.value_type)
    return None


def _storage_type(logical: pa.DataType) -> pa.DataType:
    if isinstance(logical, pa.BaseExtensionType):
        return _storage_type(logical.storage_type)
    if pa.types.is_fixed_size_list(logical) or pa.types.is_list(logical) or pa.types.is_large_list(logical):
        return pa.list_(_storage_type(logical.value_type))
    return logical


def storage_schema(schema: pa.Schema) -> pa.Schema:
    def field(f: pa.Field) -> pa.Field:
        shape = _tensor_shape(f.type)
        metadata = {TENSOR_SHAPE_KEY: json.dumps(shape)} if shape is not None else None
        return pa.field(f.name, _storage_type(f.type), f.nullable, metadata=metadata)

    return pa.schema([field(f) for f in schema], metadata=schema.metadata)


def tensor_shapes(field_metadata: dict) -> dict[str, tuple[int, ...]]:
    """{column: shape} of the tensor columns a stored schema records, from {column: field
    metadata} (str or bytes keys, as pyarrow or deltalake give them)."""
    shapes = {}
    for name, metadata in field_metadata.items():
        decoded = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                   for k, v in (metadata or {}).items()}
        if TENSOR_SHAPE_KEY in decoded:
            shapes[name] = tuple(int(d) for d in json.loads(decoded[TENSOR_SHAPE_KEY]))
    return shapes


def _to_storage(array: pa.Array) -> pa.Array:
    kind = array.type
    if isinstance(kind, pa.BaseExtensionType):
        return _to_storage(array.storage)
    if pa.types.is_fixed_size_list(kind):
        offsets = pa.array((np.arange(len(array) + 1) * kind.list_size).astype(np.int32))
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        raw = np.asarray(array.offsets, dtype=np.int64)
        offsets = pa.array((raw - raw[0]).astype(np.int32))
    else:
        return array
    mask = array.is_null() if array.null_count else None
    return pa.ListArray.from_arrays(offsets, _to_storage(array.flatten()), mask=mask)


def _restore(array: pa.Array, logical: pa.DataType) -> pa.Array:
    if isinstance(logical, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(logical, _restore(array, logical.storage_type))
    if pa.types.is_fixed_size_list(logical):
        lengths = np.asarray(pc.list_value_length(array).fill_null(logical.list_size))
        if (lengths != logical.list_size).any():
            raise ValueError(f"a stored list has {int(lengths[lengths != logical.list_size][0])} values, "
                             f"the schema's fixed size is {logical.list_size}")
        return pa.FixedSizeListArray.from_arrays(_restore(array.flatten(), logical.value_type), logical.list_size)
    if pa.types.is_list(logical):
        raw = np.asarray(array.offsets, dtype=np.int64)
        mask = array.is_null() if array.null_count else None
        return pa.ListArray.from_arrays(pa.array((raw - raw[0]).astype(np.int32)),
                                        _restore(array.flatten(), logical.value_type), mask=mask)
    return array.cast(logical)


def to_storage(table: pa.Table) -> pa.Table:
    """A table of logical types -> the plain-list form that is written."""
    return pa.table({name: _to_storage(table.column(name).combine_chunks()) for name in table.schema.names},
                    schema=storage_schema(table.schema))


def restore(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A stored table -> the logical types of `schema` (tensors back with their shapes)."""
    return pa.table({f.name: _restore(table.column(f.name).combine_chunks(), f.type) for f in schema
                     if f.name in table.schema.names},
                    schema=pa.schema([f for f in schema if f.name in table.schema.names], metadata=schema.metadata))
