"""One bucket of `jobs.dedup`'s input. The samples table and both dedup tables are partitioned
by the same bucket (`bucket = xxh64(sample_id) % B`), so what a sample was at the last pass (its
`dedup_seen` row, whether it is in `duplicates`) sits in the same bucket as the sample: a
bucket is classified on its own, with no shuffle.

Per sample: `first_seen`, the pass that first saw this row (a row re-processed since, by a
backfill, counts as new); `judged`, whether this pass compares it (new rows, and every earlier
duplicate, since its match may have changed or gone).
"""

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import storage
from etl.dedup.compare import SLOTS
from etl.dedup.keys import KeySpec, exact_keys, near_keys, pixel_keys, semantic_keys

SAMPLE_COLUMNS = ("sample_id", "shard", "row", "run_id")
KEY_ROW_SCHEMA = pa.schema([
    ("key", pa.int64()), ("slot", pa.int32()), ("sample_id", pa.string()), ("bucket", pa.int32()), ("run_id", pa.string()),
    ("first_seen", pa.int32()), ("shard", pa.int64()), ("row", pa.int64()), ("judged", pa.bool_()),
    ("pixel_key", pa.string()), ("perceptual", pa.list_(pa.int64())), ("embedding", pa.list_(pa.float32())),
])


@dataclass
class BucketFiles:
    """The files of one bucket in each table, at the versions the pass read."""

    bucket: int
    samples: list[str] = field(default_factory=list)     # URIs
    seen: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def read_files(uris: list[str], columns: list[str]) -> pa.Table:
    """Parquet files (storage form) -> one table of `columns`; an empty one for no files."""
    tables = []
    for uri in uris:
        fs, path = storage.resolve(uri)
        tables.append(pq.read_table(path, columns=columns, filesystem=fs))
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in columns})
    return pa.concat_tables(tables, promote_options="permissive")


@dataclass(frozen=True)
class Classified:
    rows: pa.Table          # the bucket's samples with first_seen and judged
    new: int                # never seen
    reprocessed: int        # seen as another run's row
    removed: int            # seen, and no longer in the samples table


def classify(samples: pa.Table, seen: pa.Table, duplicates: pa.Table, pass_number: int,
             judge_all: bool = False) -> Classified:
    """`samples` (sample_id, run_id, ...) with first_seen and judged, against the bucket's
    `seen` (sample_id, sample_run_id, first_seen) and `duplicates` (sample_id) rows. With
    `judge_all` (the pass's settings changed) every sample is judged."""
    at = pc.index_in(samples.column("sample_id"), value_set=seen.column("sample_id").cast(pa.string()))
    known = np.asarray(at.is_valid())
    positions = at.fill_null(0).to_numpy() if len(seen) else np.zeros(len(samples), np.int64)
    same_run = known.copy()
    first_seen = np.full(len(samples), pass_number, np.int32)
    if len(seen):
        earlier_runs = seen.column("sample_run_id").take(pa.array(positions))
        same_run &= pc.equal(earlier_runs, samples.column("run_id").cast(pa.string())).fill_null(False).to_numpy(
            zero_copy_only=False)
        earlier = seen.column("first_seen").to_numpy().astype(np.int32)[positions]
        first_seen = np.where(same_run, earlier, first_seen).astype(np.int32)
    was_duplicate = np.asarray(pc.is_in(samples.column("sample_id"),
                                        value_set=duplicates.column("sample_id").cast(pa.string())))
    rows = samples.append_column("first_seen", pa.array(first_seen)).append_column(
        "judged", pa.array(~same_run | was_duplicate | judge_all))
    gone = int(len(seen) - pc.sum(pc.is_in(seen.column("sample_id").cast(pa.string()),
                                           value_set=samples.column("sample_id"))).as_py()) if len(seen) else 0
    return Classified(rows, int((~known).sum()), int((known & ~same_run).sum()), gone)


def read_bucket(files: BucketFiles, columns: tuple[str, ...], pass_number: int, judge_all: bool) -> Classified:
    samples = read_files(files.samples, list(dict.fromkeys([*SAMPLE_COLUMNS, *columns])))
    seen = read_files(files.seen, ["sample_id", "sample_run_id", "first_seen"])
    duplicates = read_files(files.duplicates, ["sample_id"])
    return classify(samples, seen, duplicates, pass_number, judge_all)


def key_rows(rows: pa.Table, bucket: int, spec: KeySpec) -> pa.Table:
    """Each sample's candidate keys (`etl.dedup.keys`), one row per key, carrying what its
    kind compares: the pixel key, the frames' pHashes or the embedding."""
    count = rows.num_rows
    if not count:  # a bucket whose samples all went (a backfill quarantined them) reads as untyped columns
        return KEY_ROW_SCHEMA.empty_table()
    parts = []
    base = {name: rows.column(name) for name in ("sample_id", "run_id", "first_seen", "shard", "row", "judged")}
    base["bucket"] = pa.array(np.full(count, bucket, np.int32))
    if spec.exact:
        pixel = pixel_keys(rows.column("frame_pixel_hashes").combine_chunks())
        parts.append({**base, "key": pa.array(exact_keys(pixel)), "pixel_key": pa.array(pixel, pa.string())})
    if spec.near_distance is not None:
        perceptual = rows.column("frame_perceptual_hashes").combine_chunks()
        first = pc.list_element(perceptual, 0).to_numpy()
        for keys in near_keys(first, spec.near_distance):
            parts.append({**base, "key": pa.array(keys), "perceptual": perceptual})
    if spec.semantic_threshold is not None:
        embedding = rows.column("embedding").combine_chunks().cast(pa.list_(pa.float32()))
        vectors = embedding.flatten().to_numpy().reshape(count, -1) if count else np.zeros((0, 1))
        for keys in semantic_keys(vectors, spec):
            parts.append({**base, "key": pa.array(keys), "embedding": embedding})
    for part in parts:
        part["slot"] = pa.array((part["key"].to_numpy().view(np.uint64) % np.uint64(SLOTS)).astype(np.int32))
    tables = [pa.table({name: part.get(name, pa.nulls(count, KEY_ROW_SCHEMA.field(name).type))
                        for name in KEY_ROW_SCHEMA.names}, schema=KEY_ROW_SCHEMA) for part in parts]
    return pa.concat_tables(tables) if tables else KEY_ROW_SCHEMA.empty_table()


def key_columns(spec: KeySpec) -> tuple[str, ...]:
    """The samples columns the keys of `spec` need."""
    return (("frame_pixel_hashes",) * spec.exact + ("frame_perceptual_hashes",) * (spec.near_distance is not None)
            + ("embedding",) * (spec.semantic_threshold is not None))
