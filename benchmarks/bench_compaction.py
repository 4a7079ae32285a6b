"""Compaction: `etl.sinks.compaction` (one transaction on the version it was planned on) against
delta-rs's OPTIMIZE (which it replaced: two OPTIMIZEs on one snapshot doubled every row), on
copies of one `samples` table, side by side.

    python benchmarks/bench_compaction.py [--commits 120] [--rows 32] [--buckets 16] [--repeats 2]

The table has `--commits` commits of `--rows` samples each, written the way the job writes them
(`write_bucket_files` + `commit_files`): every commit adds a small file to each bucket. Samples
hold 1-3 frames of 4x56x56 float32 latents and 768-d embeddings (a 448 px frame through the
production encoders). Each compaction runs in its own process (its wall time and peak RSS),
alternating the two, `--repeats` times, each on a fresh copy. Both must keep every row.
Writes results/compaction.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from common import REPO, save, table

EMBEDDING_DIM, LATENT_SHAPE = 768, (4, 56, 56)
TARGET_BYTES = 128 << 20

# Run in a child process: compact the table at argv[1] with argv[2] ("ours" or "delta-rs").
CHILD = """
import json, os, resource, sys, time
import pyarrow as pa
from etl.sinks.compaction import compact
from etl.sinks.delta_commits import open_table
uri, how, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = open_table(uri)
files = len(table.file_uris())
started = time.perf_counter()
if how == "ours":
    compact(uri, table, target)
else:
    table.optimize.compact(target_size=target)
seconds = time.perf_counter() - started
after = open_table(uri)
ids = after.to_pyarrow_table(columns=["sample_id"]).column("sample_id")
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "files_before": files, "files_after": len(after.file_uris()),
                  "mib_after": sum(pa.table(after.get_add_actions()).column("size_bytes").to_pylist()) / 2**20,
                  "rows": len(ids), "distinct_ids": len(set(ids.to_pylist()))}), flush=True)
os._exit(0)  # delta-rs's runtime threads abort ("terminate called") at interpreter exit after -c
"""


def rows_of(commit: int, count: int, buckets: int) -> pa.Table:
    from etl.sinks.partitioning import buckets_of, derived_sample_ids
    from schemas.tables import samples_schema

    schema = samples_schema(EMBEDDING_DIM, LATENT_SHAPE, text_tower=False)
    rng = np.random.default_rng(commit)
    ids = derived_sample_ids(pa.array(np.full(count, commit)), pa.array(np.arange(count)))
    frames = rng.integers(1, 4, count)
    offsets = pa.array(np.concatenate([[0], np.cumsum(frames)]).astype(np.int32))

    def tensors(field: str, shape, n):
        kind = schema.field(field).type
        kind = kind.value_type if pa.types.is_list(kind) else kind
        values = pa.array(rng.standard_normal(n * int(np.prod(shape))).astype(np.float32))
        return pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(values, int(np.prod(shape))))

    total = int(frames.sum())
    return pa.table({
        "sample_id": ids, "shard": pa.array(np.full(count, commit)), "row": pa.array(np.arange(count)),
        "bucket": buckets_of(ids, buckets), "caption": [f"a caption of sample {commit}:{r}" for r in range(count)],
        "quality": pa.array(rng.uniform(1, 5, count).astype(np.float32)),
        "aesthetics": pa.array(rng.uniform(1, 5, count).astype(np.float32)),
        "caption_parse_error": pa.nulls(count, pa.string()), "frame_count": pa.array(frames.astype(np.int32)),
        "frame_sizes": [[[448, 448]] * int(f) for f in frames],
        "frame_pixel_hashes": [[f"{commit:08x}{r:08x}{k:016x}" for k in range(int(f))] for r, f in enumerate(frames)],
        "frame_perceptual_hashes": pa.array([rng.integers(-2**62, 2**62, int(f)).tolist() for f in frames],
                                            pa.list_(pa.int64())),
        "filtered_by": [[]] * count,
        "embedding": tensors("embedding", (EMBEDDING_DIM,), count),
        "frame_embeddings": pa.ListArray.from_arrays(offsets, tensors("frame_embeddings", (EMBEDDING_DIM,), total)),
        "latents": pa.ListArray.from_arrays(offsets, tensors("latents", LATENT_SHAPE, total)),
        "captioner": ["qwen3-vl"] * count, "embedder": ["clip"] * count, "vae": ["vae"] * count,
        "run_id": ["bench"] * count,
    }, schema=schema)


def build(path: Path, commits: int, count: int, buckets: int) -> None:
    from etl.sinks.bucket_files import write_bucket_files
    from etl.sinks.delta_commits import commit_files
    from schemas.tables import samples_schema

    schema, uri = samples_schema(EMBEDDING_DIM, LATENT_SHAPE, text_tower=False), str(path)
    for commit in range(commits):
        files = write_bucket_files(rows_of(commit, count, buckets), schema, uri, f"c{commit}")
        commit_files(uri, schema, files, {"run_id": "bench"})


def run_one(source: Path, work: Path, how: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    done = subprocess.run([sys.executable, "-c", CHILD, str(work), how, str(TARGET_BYTES)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise SystemExit(f"{how} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=120)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as folder:
        source = Path(folder) / "samples"
        build(source, args.commits, args.rows, args.buckets)
        table_mib = sum(f.stat().st_size for f in source.rglob("*.parquet")) / 2**20
        runs = {"ours": [], "delta-rs": []}
        for _ in range(args.repeats):
            for how in runs:
                runs[how].append(run_one(source, Path(folder) / "work", how))
    expected = args.commits * args.rows
    for how, results in runs.items():
        for result in results:
            if (result["rows"], result["distinct_ids"]) != (expected, expected):
                raise SystemExit(f"{how} lost or duplicated rows: {result}")
    best = {how: min(r["seconds"] for r in results) for how, results in runs.items()}
    peak = {how: max(r["peak_rss_mib"] for r in results) for how, results in runs.items()}
    print(f"samples table: {expected} rows, {table_mib:.0f} MiB of Parquet, "
          f"{runs['ours'][0]['files_before']} files")
    table([(how, f"{best[how]:.2f}", f"{peak[how]:.0f}", runs[how][0]["files_after"], f"{runs[how][0]['mib_after']:.0f}")
           for how in runs], ("compaction", "best s", "peak RSS MiB", "files after", "MiB after"))
    print(f"ours / delta-rs: {best['ours'] / best['delta-rs']:.2f}x the time, "
          f"{peak['ours'] / peak['delta-rs']:.2f}x the peak RSS")
    save("compaction", {"commits": args.commits, "rows_per_commit": args.rows, "buckets": args.buckets,
                        "table_mib": table_mib, "target_bytes": TARGET_BYTES, "runs": runs,
                        "best_seconds": best, "peak_rss_mib": peak})


if __name__ == "__main__":
    main()
