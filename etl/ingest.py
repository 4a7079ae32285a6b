"""Training ingestion: the `samples` table at one Delta version, as a Ray Dataset of tensors.

    snapshot = read_samples("s3://bucket/curated", min_quality=3, columns=["embedding", "latents", "quality"])
    snapshot.version   # the Delta version every epoch and every worker reads
    trainer = TorchTrainer(..., datasets={"train": snapshot.dataset})
    # in the loop: ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=64)

The version is resolved once, on the driver, to a number: the dataset's file list is that
version's, so a commit landing mid-training (a backfill, a later run) is never seen, and every
epoch re-reads the same rows. It stays readable while its files do: a VACUUM that removes
them (retention shorter than the training run) breaks it.

Reading is `ray.data.read_delta` (delta-rs resolves the version's files; Ray's Parquet reader
reads them through `etl.storage`'s pyarrow filesystem). Score filters run in the map step
right after the scan, not as a pushed-down `Dataset.filter`: delta-rs (1.6) attaches each
file's Delta stats to its fragment as a guarantee, and for a column the stats leave out (ours
carry shard, row and sample_id only) it writes `quality >= null`, so a predicate pushed into
the scan on a score silently drops every row. Per-file pruning by score would gain nothing
anyway: scores are spread evenly over the hash buckets.

Tensors are stored as plain lists (`schemas.tables`, "Storage form"); the dataset gives them
back as fixed-shape tensor columns, so `iter_torch_batches` stacks them without Python loops:

| column             | in the dataset                                                        |
|--------------------|-----------------------------------------------------------------------|
| `embedding`        | (D,) float32: the per-sample pooled embedding                          |
| `latents`          | frames="first": (C, H, W), the first frame's latent;                   |
|                    | frames=T: (T, C, H, W), the first T frames, zero after `frame_count`  |
| `frame_embeddings` | as `latents`: (D,) or (T, D)                                          |
| `caption_embedding`| (D,) float32: the caption's, from the embedder's text tower            |
| `caption_text_states` | (L, W) float32: the text encoder's hidden states of the caption    |
| `caption_text_mask`| (L,) int8: which of those L tokens are the caption's (1) or padding    |
| `frame_sizes`      | unchanged lists of (w, h): metadata, not batchable by torch           |

Strings (`sample_id`, `caption`, ...) come through as strings: select only numeric and tensor
columns for `iter_torch_batches`.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import storage

logger = logging.getLogger(__name__)

SAMPLES_TABLE = "samples"
DROP_DUPLICATES_KEY = "drop_duplicates"  # commit metadata: the run's filters.drop_duplicates
_FRAME_COLUMNS = ("latents", "frame_embeddings")  # one tensor per frame, a variable count per sample
_SCORE_COLUMNS = ("quality", "aesthetics")

Frames = Union[Literal["first"], int]


@dataclass(frozen=True)
class SamplesSnapshot:
    """The `samples` table at one Delta version, as a Ray Dataset."""

    dataset: Any                         # ray.data.Dataset, lazy: nothing is read until it is consumed
    version: int                         # the Delta version `dataset` reads, on every epoch
    latest_version: int                  # the table's latest version when it was opened
    path: str                            # the table's URI
    columns: tuple[str, ...]             # the dataset's columns, in order
    tensor_shapes: dict[str, tuple[int, ...]]  # per-row shape of each tensor column in `columns`


def read_samples(output_uri: str, *, version: Optional[int] = None, min_quality: Optional[float] = None,
                 min_aesthetics: Optional[float] = None, columns: Optional[Sequence[str]] = None,
                 frames: Frames = "first",
                 tensor_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                 apply_filters: bool = True, drop_duplicates: Optional[bool] = None) -> SamplesSnapshot:
    """The `samples` table under `output_uri` (`<output_uri>/samples`, local or s3://) as a
    Ray Dataset pinned to one Delta version.

    version: a Delta version of the table; None reads the latest, resolved now to its number
        (`SamplesSnapshot.version`, also logged), so later commits never reach the dataset.
    min_quality, min_aesthetics: keep rows whose score is >= the bound. Rows whose score is
        null (the captioner's answer could not be parsed, see `caption_parse_error`) are
        excluded whenever a bound on that score is given: they have no score to compare.
    columns: the columns to return, in this order; None returns every column. Score columns
        a filter needs are read whether or not they are returned.
    frames: what a per-frame column (`latents`, `frame_embeddings`) becomes: "first" (the
        first frame's tensor; every stored sample has at least one frame) or an int T (the
        first T frames, zero-padded; `frame_count` tells which are real).
    tensor_shapes: {"embedding": (D,), "latents": (C, H, W)} for a table written before the
        writers recorded tensor shapes in the table's schema; otherwise unused, and checked
        against what the table records.

    apply_filters: leave out the rows that fail one of the run's filters (`filtered_by` not
        empty, `etl.filters`); False returns them too, with `filtered_by` saying why.
    drop_duplicates: leave out the rows `python -m jobs.dedup` marked as duplicates (its
        `duplicates` table, latest version). A row is dropped only if the very row that pass
        judged is the one read (same sample_id and run_id): a row re-processed or added since
        that pass is kept until the next pass judges it. None: as the run that wrote the
        pinned version says (`filters.drop_duplicates`), once a dedup pass has run.

    Raises FileNotFoundError when there is no Delta table at the path, ValueError for an
    unknown column, a version the table does not have, or a bad argument.
    """
    import pyarrow.fs as pafs
    import ray.data

    frames = _check_frames(frames)
    bounds = {name: _check_bound(name, bound) for name, bound in zip(_SCORE_COLUMNS, (min_quality, min_aesthetics))
              if bound is not None}
    path = storage.join(output_uri.rstrip("/"), SAMPLES_TABLE)
    table, latest = _open_version(path, version)
    pinned = table.version()

    stored_fields = {f.name: f.metadata for f in table.schema().fields}
    allowed = list(stored_fields)
    wanted = list(allowed if columns is None else _check_columns(columns, allowed))
    shapes = _shapes(path, stored_fields, tensor_shapes, [c for c in wanted if c in _tensor_columns(stored_fields)])
    read_columns = wanted + [c for c in bounds if c not in wanted]
    if drop_duplicates is None:
        drop_duplicates = _run_drops_duplicates(table) and _has_duplicates_table(output_uri)
    duplicates = _duplicate_keys(output_uri) if drop_duplicates else None
    if duplicates is not None:
        read_columns += [c for c in ("sample_id", "run_id") if c not in read_columns]
    filtering = apply_filters and "filtered_by" in allowed
    if filtering and "filtered_by" not in read_columns:
        read_columns.append("filtered_by")

    fs, root = storage.resolve(path)
    dataset = ray.data.read_delta(path, version=pinned, storage_options=storage.delta_storage_options(path),
                                  filesystem=pafs.SubTreeFileSystem(root, fs), columns=read_columns)
    # batch_size=None: whole blocks as read (Ray fuses this step into the read tasks when it
    # does not split their output), no re-batching copy
    dataset = dataset.map_batches(_ToTensors(wanted, bounds, shapes, frames, duplicates, filtering),
                                  batch_format="pyarrow",
                                  batch_size=None, zero_copy_batch=True)
    logger.info("reading %s at Delta version %d (latest: %d)", storage.display(fs, root), pinned, latest)
    out_shapes = {name: _output_shape(name, shape, frames) for name, shape in shapes.items()}
    return SamplesSnapshot(dataset, pinned, latest, path, tuple(wanted), out_shapes)


# --- validation ----------------------------------------------------------------------------------

def _run_drops_duplicates(table) -> bool:
    """The `filters.drop_duplicates` of the run whose commit is the table's newest with one."""
    for entry in table.history(20):
        if DROP_DUPLICATES_KEY in entry:
            return bool(entry[DROP_DUPLICATES_KEY])
    return False


def _has_duplicates_table(output_uri: str) -> bool:
    from deltalake import DeltaTable

    path = storage.join(output_uri.rstrip("/"), "duplicates")
    return DeltaTable.is_deltatable(path, storage.delta_storage_options(path))


def _duplicate_keys(output_uri: str):
    """An object ref to the "sample_id run_id" keys of every row `duplicates` holds (a small
    table: only duplicates have rows), shared by every read task; FileNotFoundError before the
    first dedup pass."""
    import ray
    from deltalake import DeltaTable

    path = storage.join(output_uri.rstrip("/"), "duplicates")
    options = storage.delta_storage_options(path)
    if not DeltaTable.is_deltatable(path, options):
        raise FileNotFoundError(f"drop_duplicates=True but there is no duplicates table at {path}: run "
                                f"`python -m jobs.dedup --output {output_uri}` first")
    table = DeltaTable(path, storage_options=options)
    rows = table.to_pyarrow_table(columns=["sample_id", "sample_run_id"])
    logger.info("dropping the %d duplicates of %s (version %d)", rows.num_rows, path, table.version())
    return ray.put(pc.binary_join_element_wise(rows.column("sample_id"), rows.column("sample_run_id"), " ")
                   .combine_chunks())


def _check_frames(frames) -> Frames:
    if frames == "first":
        return frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames={frames!r}; allowed: 'first' or a positive int (frames per sample, zero-padded)")
    return frames


def _check_bound(name: str, bound) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
        raise ValueError(f"min_{name}={bound!r}; expected a number (scores run from 1 to 5)")
    return float(bound)


def _check_columns(columns: Sequence[str], allowed: list[str]) -> list[str]:
    if isinstance(columns, str) or not len(columns):
        raise ValueError(f"columns={columns!r}: pass a non-empty list of column names (or None for all)")
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; the samples table has: {', '.join(allowed)}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns {list(columns)} name a column twice")
    return list(columns)


def _open_version(path: str, version: Optional[int]):
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    options = storage.delta_storage_options(path)
    if not DeltaTable.is_deltatable(path, options):
        raise FileNotFoundError(f"no Delta table at {path} (expected its log in {path}/_delta_log): "
                                f"is this the output of a curation run with sink.format=delta?")
    table = DeltaTable(path, storage_options=options)
    latest = table.version()
    if version is None:
        return table, latest
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= latest:
        raise ValueError(f"version {version!r} does not exist: the latest version of {path} is {latest}")
    if version != latest:
        try:
            table.load_as_version(version)
        except (DeltaError, OSError) as exc:
            raise ValueError(f"version {version} of {path} can no longer be read (its log entries were cleaned "
                             f"up); the latest version is {latest}: {exc}") from None
    return table, latest


def _shapes(path: str, stored_fields: dict, given: Optional[Mapping[str, Sequence[int]]],
            needed: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-element shape of each tensor column in `needed`: what the table records, else `given`."""
    from schemas.tables import tensor_shapes as recorded_shapes

    recorded = recorded_shapes(stored_fields)
    given = {k: tuple(int(d) for d in v) for k, v in (given or {}).items()}
    if "embedding" in given:
        given.setdefault("frame_embeddings", given["embedding"])
    for name, shape in given.items():
        if name in recorded and recorded[name] != shape:
            raise ValueError(f"tensor_shapes[{name!r}]={shape} but the table records {recorded[name]}")
    shapes = {**given, **recorded}
    missing = [c for c in needed if c not in shapes]
    if missing:
        raise ValueError(f"{path} does not record the shape of {missing} (written before tensor shapes were "
                         f"kept in the schema): pass tensor_shapes={{'embedding': (D,), 'latents': (C, H, W)}}")
    return {c: shapes[c] for c in needed}


def _tensor_columns(stored_fields: dict) -> set[str]:
    """The columns read back as tensors: those whose shape the table records, and the ones a
    table written before shapes were recorded has (their shapes given by the caller)."""
    from schemas.tables import tensor_shapes as recorded_shapes

    return {"embedding", *_FRAME_COLUMNS, *recorded_shapes(stored_fields)}


def _output_shape(name: str, shape: tuple[int, ...], frames: Frames) -> tuple[int, ...]:
    if name in _FRAME_COLUMNS and frames != "first":
        return (frames, *shape)
    return shape


# --- the per-block conversion (runs in the read tasks) -------------------------------------------

class _ToTensors:
    """Stored block -> score-filtered block with fixed-shape tensor columns."""

    def __init__(self, columns: list[str], bounds: dict[str, float], shapes: dict[str, tuple[int, ...]],
                 frames: Frames, duplicates=None, filtering: bool = False):
        self.columns, self.bounds, self.shapes, self.frames = columns, bounds, shapes, frames
        self.duplicates = duplicates  # object ref: "sample_id run_id" of each duplicate row
        self.filtering = filtering    # drop rows whose filtered_by names a rule

    def __call__(self, block: pa.Table) -> pa.Table:
        keep = None
        if self.duplicates is not None:
            import ray

            keys = pc.binary_join_element_wise(block.column("sample_id"), block.column("run_id"), " ")
            keep = pc.invert(pc.is_in(keys, value_set=ray.get(self.duplicates)))
        if self.filtering:
            passes = pc.equal(pc.list_value_length(block.column("filtered_by")), 0)
            keep = passes if keep is None else pc.and_kleene(keep, passes)
        for name, bound in self.bounds.items():
            passes = pc.greater_equal(block.column(name), pa.scalar(bound, block.schema.field(name).type))
            keep = passes if keep is None else pc.and_kleene(keep, passes)
        if keep is not None:
            block = block.filter(keep, null_selection_behavior="drop")  # null score: no score, dropped
        out = {}
        for name in self.columns:
            column = block.column(name).combine_chunks()
            if name in _FRAME_COLUMNS:
                out[name] = _frame_tensor(column, self.shapes[name], self.frames, name)
            elif name in self.shapes:  # one tensor per sample: embedding, caption_embedding, text states, mask
                out[name] = _tensor_array(_per_row_values(column, self.shapes[name], name), self.shapes[name])
            else:
                out[name] = column
        return pa.table(out)


def _per_row_values(column: pa.Array, shape: tuple[int, ...], name: str) -> np.ndarray:
    """list<number> (one flat tensor per entry) -> (entries, *shape), checking every length;
    floats as float32, integers (a mask) as stored."""
    size = int(np.prod(shape))
    lengths = np.asarray(pc.list_value_length(column).fill_null(-1))
    if len(lengths) and (lengths != size).any():
        bad = int(lengths[lengths != size][0])
        raise ValueError(f"a stored {name} tensor has {bad if bad >= 0 else 'no'} values; its shape {shape} "
                         f"needs {size}")
    values = column.flatten().to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        values = values.astype(np.float32, copy=False)
    return values.reshape(len(column), *shape)


def _frame_tensor(column: pa.Array, shape: tuple[int, ...], frames: Frames, name: str) -> pa.Array:
    """list<list<float>> (frames of flat tensors) -> one fixed-shape tensor per row."""
    offsets = np.asarray(column.offsets, dtype=np.int64)
    starts, counts = offsets[:-1] - offsets[0], np.diff(offsets)
    every_frame = _per_row_values(column.flatten(), shape, name)
    if frames == "first":
        if (counts == 0).any():
            raise ValueError(f"{int((counts == 0).sum())} row(s) have no {name}; frames='first' needs one")
        return _tensor_array(every_frame[starts], shape)
    padded = np.zeros((len(column), frames, *shape), np.float32)
    taken = np.minimum(counts, frames)
    rows = np.repeat(np.arange(len(column)), taken)
    slots = np.arange(taken.sum()) - np.repeat(np.cumsum(taken) - taken, taken)  # 0..taken-1 per row
    padded[rows, slots] = every_frame[np.repeat(starts, taken) + slots]
    return _tensor_array(padded, (frames, *shape))


def _tensor_array(values: np.ndarray, shape: tuple[int, ...]) -> pa.Array:
    kind = pa.fixed_shape_tensor(pa.from_numpy_dtype(values.dtype), list(shape))
    storage_array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(np.prod(shape)))
    return pa.ExtensionArray.from_storage(kind, storage_array)
