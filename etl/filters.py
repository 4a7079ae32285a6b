"""The config's declarative filters (`filters:`, `etl.config.FiltersConfig`) applied to the rows
the write stage puts in `samples`: each row gets `filtered_by`, the names of the rules it fails
(empty: it passes all), so every rule's pass rate is its own, whatever the others reject.

Filtered rows stay in `samples`, complete, rather than moving to a `filtered` table: their
captions and tensors were paid for, a rule loosened later takes them back without re-processing,
a table per verdict would repeat the samples schema, and `samples + quarantine == input` holds
unchanged. Readers leave them out (`etl.ingest.read_samples(apply_filters=True)`, the default).

Applied in the write actors, not as a stage of their own: a task operator after the actor pools
gets no CPU budget from Ray Data until the read is done (see etl/stages/write.py), and a pool of
its own would add a process per writer for a few comparisons per row.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import FiltersConfig

FILTERED_BY = "filtered_by"
FILTERED_BY_TYPE = pa.list_(pa.string())
NULL_PASSES = ("clip_score_text",)  # null: the sample has no text, so nothing to hold to a bound


def _score_fails(column: pa.ChunkedArray, name: str, low, high) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become nan
    fails = np.zeros(len(values), bool)
    if low is not None:
        fails |= ~(values >= low)
    if high is not None:
        fails |= ~(values <= high)
    if name in NULL_PASSES:
        fails &= ~np.isnan(values)
    return fails


def _frame_sides(sizes: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(widths, heights, which row each frame is of) of every frame, flat."""
    frames = sizes.combine_chunks()
    pairs = frames.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, 2).astype(np.float64)
    owners = np.repeat(np.arange(len(frames)), np.diff(np.asarray(frames.offsets)))
    return pairs[:, 0], pairs[:, 1], owners


def _any_frame(bad: np.ndarray, owners: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros(rows, bool)
    np.logical_or.at(out, owners, bad)
    return out


def failures(rows: pa.Table, filters: FiltersConfig) -> dict[str, np.ndarray]:
    """{rule name: which rows fail it}, for every rule the config sets."""
    count = rows.num_rows
    found = {}
    for name, bound in filters.scores.items():
        if name in filters.rules():
            found[name] = _score_fails(rows.column(name), name, bound.min, bound.max)
    if filters.min_side is not None or filters.aspect_ratio is not None:
        widths, heights, owners = _frame_sides(rows.column("frame_sizes"))
        if filters.min_side is not None:
            found["min_side"] = _any_frame(np.minimum(widths, heights) < filters.min_side, owners, count)
        if filters.aspect_ratio is not None:
            ratio = widths / np.maximum(heights, 1)
            low, high = filters.aspect_ratio
            found["aspect_ratio"] = _any_frame((ratio < low) | (ratio > high), owners, count)
    if filters.max_frames is not None:
        found["max_frames"] = rows.column("frame_count").to_numpy() > filters.max_frames
    return found


def filtered_by(failed: dict[str, np.ndarray], count: int) -> pa.Array:
    """Per row, the names of the rules it fails, in the config's order."""
    names = list(failed)
    matrix = np.stack([failed[n] for n in names], axis=1) if names else np.zeros((count, 0), bool)
    return pa.array([[names[j] for j in np.flatnonzero(row)] for row in matrix], FILTERED_BY_TYPE)


def columns_read(filters: FiltersConfig) -> tuple[str, ...]:
    """The samples columns the rules look at."""
    frames = ("frame_sizes",) * (filters.min_side is not None or filters.aspect_ratio is not None)
    return (*filters.scores, *frames, *("frame_count",) * (filters.max_frames is not None))


def passing(rows: pa.Table) -> pa.Array:
    """Which rows of a samples table fail no rule."""
    return pc.equal(pc.list_value_length(rows.column(FILTERED_BY)), 0)
