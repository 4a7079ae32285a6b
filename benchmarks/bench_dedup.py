"""`jobs.dedup` at scale: rows/s of a first pass over 100K samples (every row new), then of an
incremental pass after 10% more arrive, on the local Ray (2 CPUs here), with all three kinds.

The samples table is written here with the real schema: one frame per sample, a 512-wide
embedding (CLIP ViT-B/32's), random pixel and perceptual hashes and unit embeddings, and 5% of
the rows copies of another row per kind: the same pixel hashes (exact), a pHash 1-3 bits away
(near), an embedding at cosine ~0.99 (semantic). The figures printed are the pass's wall time
over the samples it read, and the duplicates it found per kind against those injected.

    python benchmarks/bench_dedup.py [--samples 100000] [--dim 512] [--partitions 8] [--kinds exact,near]
"""

import argparse
import json
import time
import uuid

import numpy as np
import pyarrow as pa

from common import DATA, RESULTS

from etl.sinks.partitioning import buckets_of, derived_sample_ids
from schemas.tables import samples_schema

BUCKETS, SHARD_ROWS = 16, 10_000


def _tensors(kind, values: np.ndarray) -> pa.Array:
    return pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), int(np.prod(values.shape[1:]))))


def shard_rows(schema: pa.Schema, shard: int, count: int, dim: int, base: dict, rng) -> tuple[pa.Table, dict]:
    """`count` rows of `shard`; 5% per kind copy an earlier row of `base` (pixel, phash, embedding)."""
    ids = derived_sample_ids(pa.array(np.full(count, shard)), pa.array(np.arange(count)))
    pixel = [uuid.UUID(int=int(v)).hex for v in rng.integers(0, 2**62, count)]
    phash = rng.integers(-2**63, 2**63 - 1, count, dtype=np.int64)
    embedding = rng.standard_normal((count, dim)).astype(np.float32)
    injected = {"exact": 0, "near": 0, "semantic": 0}
    if base["pixel"]:
        for kind, rows in zip(injected, np.array_split(rng.permutation(count)[:int(0.15 * count)], 3)):
            source = rng.integers(0, len(base["pixel"]), len(rows))
            injected[kind] = len(rows)
            for i, j in zip(rows, source):
                if kind == "exact":
                    pixel[i], phash[i], embedding[i] = base["pixel"][j], base["phash"][j], base["embedding"][j]
                elif kind == "near":
                    flips = rng.choice(64, size=int(rng.integers(1, 4)), replace=False)
                    mask = np.uint64(sum(1 << int(b) for b in flips))
                    phash[i] = (np.array([base["phash"][j]]).view(np.uint64) ^ mask).view(np.int64)[0]
                else:
                    embedding[i] = base["embedding"][j] + 0.08 * rng.standard_normal(dim) / np.sqrt(dim) * np.linalg.norm(
                        base["embedding"][j])
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    one = np.ones(count, np.int32)
    latent = schema.field("latents").type.value_type
    table = pa.table({
        "sample_id": ids, "shard": pa.array(np.full(count, shard, np.int64)), "row": pa.array(np.arange(count)),
        "bucket": buckets_of(ids, BUCKETS), "caption": [""] * count, "quality": pa.nulls(count, pa.float32()),
        "aesthetics": pa.nulls(count, pa.float32()), "caption_parse_error": pa.nulls(count, pa.string()),
        "frame_count": pa.array(one), "frame_sizes": [[[320, 240]]] * count,
        "frame_pixel_hashes": [[p] for p in pixel], "frame_perceptual_hashes": pa.array([[int(h)] for h in phash]),
        "embedding": _tensors(schema.field("embedding").type, embedding),
        "frame_embeddings": pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32)),
                                                     _tensors(schema.field("embedding").type, embedding)),
        "latents": pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32)),
                                            _tensors(latent, np.zeros((count, *latent.shape), np.float32))),
        "caption_embedding": _tensors(schema.field("embedding").type, embedding),
        "clip_score_caption": pa.array(np.ones(count, np.float32)), "clip_score_text": pa.nulls(count, pa.float32()),
        "filtered_by": [[]] * count, "captioner": ["bench"] * count, "embedder": ["bench"] * count,
        "vae": ["bench"] * count, "run_id": ["bench-run"] * count}, schema=schema)
    base["pixel"] += pixel
    base["phash"] = np.concatenate([base["phash"], phash])
    base["embedding"] = np.concatenate([base["embedding"], embedding])
    return table, injected


def write_shards(output: str, shards: range, dim: int, base: dict, rng) -> dict:
    from etl.sinks.bucket_files import write_bucket_files
    from etl.sinks.delta_commits import commit_files

    schema = samples_schema(dim, (4, 1, 1))
    injected = {"exact": 0, "near": 0, "semantic": 0}
    for shard in shards:
        table, made = shard_rows(schema, shard, SHARD_ROWS, dim, base, rng)
        uri = f"{output}/samples"
        commit_files(uri, schema, write_bucket_files(table, schema, uri, f"bench-{shard}"), {"run_id": "bench-run"})
        injected = {k: injected[k] + made[k] for k in injected}
    return injected


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--kinds", default="exact,near,semantic")
    args = parser.parse_args(argv)

    import shutil

    import ray

    from etl.config import DedupConfig
    from etl.dedup.run import run_dedup

    output = DATA / f"dedup-{args.samples}"
    shutil.rmtree(output, ignore_errors=True)
    rng = np.random.default_rng(0)
    base = {"pixel": [], "phash": np.zeros(0, np.int64), "embedding": np.zeros((0, args.dim), np.float32)}
    first_shards = args.samples // SHARD_ROWS
    started = time.perf_counter()
    injected = write_shards(str(output), range(first_shards), args.dim, base, rng)
    written = time.perf_counter() - started
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = DedupConfig(partitions=args.partitions, kinds=args.kinds.split(","))
    first = run_dedup(str(output), config)
    more = write_shards(str(output), range(first_shards, first_shards + max(1, first_shards // 10)), args.dim, base, rng)
    second = run_dedup(str(output), config)
    result = {
        "samples": args.samples, "embedding_dim": args.dim, "partitions": args.partitions,
        "cpus": ray.cluster_resources().get("CPU"), "table_written_s": written,
        "first_pass": {"samples": first.samples, "seconds": first.seconds, "rows_per_s": first.samples / first.seconds,
                       "found": first.duplicates, "injected": injected, "phases": first.phases},
        "incremental_pass": {"samples": second.samples, "new": second.new, "judged": second.judged,
                             "seconds": second.seconds, "rows_per_s": second.samples / second.seconds,
                             "found": second.duplicates, "phases": second.phases,
                             "injected": {k: injected[k] + more[k] for k in injected}},
    }
    ray.shutdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result["kinds"] = args.kinds
    name = "dedup" if args.kinds == "exact,near,semantic" else f"dedup-{args.kinds.replace(',', '-')}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    for name in ("first_pass", "incremental_pass"):
        r = result[name]
        print(f"{name}: {r['samples']} samples in {r['seconds']:.1f} s = {r['rows_per_s']:,.0f} rows/s; "
              f"found {r['found']} (injected {r['injected']}); phases (s) {r['phases']}")


if __name__ == "__main__":
    main()
