"""MDS read throughput: raw file reads vs the reference reader vs etl.mds, measured side by side.

    python benchmarks/bench_mds_read.py [--samples 1000] [--frames 8] [--rounds 3]

Dataset: `--samples` samples of `--frames` 1280x720 JPEG frames (jpeg_array) plus an int id
and a caption, written uncompressed and zstd. Readers run in two groups of interleaved rounds
(the target comparison first, then zstd and StreamingDataset), so ratios come from the same
conditions. Round 1 is reported apart as "cold": it pays first-touch
page faults on freshly allocated buffers (2.5-10 us per 4 KiB on this VM); the steady-state
figure is the median of the later rounds, which is what a long-running Ray worker sees. Results
are printed and saved to benchmarks/results/mds_read.json.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl import storage  # noqa: E402
from etl.mds import MDSWriter, ShardReader, load_index  # noqa: E402
from etl.synthetic import jpeg_frames  # noqa: E402

DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).parent / "results"
COLUMNS = {"id": "int", "caption": "str", "frames": "jpeg_array"}


def build(path: Path, samples: int, frames_per_sample: int, compression, frames) -> Path:
    marker = path / "index.json"
    if marker.exists():
        return path
    with MDSWriter(str(path), columns=COLUMNS, compression=compression, size_limit=256 << 20) as writer:
        for i in range(samples):
            chosen = [frames[(i * 7 + k) % len(frames)] for k in range(frames_per_sample)]
            writer.write({"id": i, "caption": f"sample {i}: a short caption", "frames": chosen})
    return path


def shard_files(path: Path) -> list[Path]:
    index = json.loads((path / "index.json").read_text())
    return [path / (s["zip_data"] or s["raw_data"])["basename"] for s in index["shards"]]


def raw_bytes(path: Path) -> int:
    return sum(s["raw_data"]["bytes"] for s in json.loads((path / "index.json").read_text())["shards"])


# --- readers: each returns (seconds, samples) ---------------------------------------------------

def read_raw_reused(path: Path):
    files = shard_files(path)
    buffer = bytearray(max(f.stat().st_size for f in files))
    view = memoryview(buffer)
    start = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as handle:
            handle.readinto(view[: f.stat().st_size])
    return time.perf_counter() - start, None


def read_raw_fresh(path: Path):
    start = time.perf_counter()
    for f in shard_files(path):
        with open(f, "rb", buffering=0) as handle:
            data = handle.read()
        del data
    return time.perf_counter() - start, None


def read_reference_get_item(path: Path):
    from streaming.base.format import reader_from_json

    index = json.loads((path / "index.json").read_text())
    readers = [reader_from_json(str(path), None, shard) for shard in index["shards"]]
    count = 0
    start = time.perf_counter()
    for reader in readers:
        for i in range(reader.samples):
            sample = reader.get_item(i)
            count += 1
    del sample
    return time.perf_counter() - start, count


def read_etl_mds(path: Path):
    fs, root = storage.resolve(str(path))
    reader = ShardReader(fs, root)
    count = 0
    start = time.perf_counter()
    for entry in load_index(fs, root):
        for _, table in reader.read_blocks(entry, list(COLUMNS)):  # the read_mds task's path
            count += table.num_rows
            del table
    return time.perf_counter() - start, count


def read_streaming_dataset(path: Path, limit: int, num_workers: int = 0):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory() as cache:
        compressed = any(f.suffix != ".mds" for f in shard_files(path))
        # Compressed shards need a cache to decompress into, as users run it (remote + local).
        kwargs = {"remote": str(path), "local": cache} if compressed else {"local": str(path)}
        dataset = StreamingDataset(shuffle=False, batch_size=1, **kwargs)
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        count = 0
        start = time.perf_counter()
        for _ in loader:
            count += 1
            if count >= limit:
                break
        elapsed = time.perf_counter() - start
        del loader, dataset
    return elapsed, count


def read_with_ray(path: Path):

    import etl

    start = time.perf_counter()
    materialized = etl.read_mds(str(path)).materialize()
    put = time.perf_counter() - start
    object_store = materialized.size_bytes()
    start = time.perf_counter()
    count = 0
    for batch in materialized.iter_batches(batch_size=None, batch_format="pyarrow"):
        count += batch.num_rows
    consume = time.perf_counter() - start
    del materialized
    return put, consume, object_store, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--rounds", type=int, default=5, help="first is the cold round")
    parser.add_argument("--streaming-limit", type=int, default=200,
                        help="samples to time for StreamingDataset with workers (it is slow)")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    tag = f"{args.samples}x{args.frames}x{args.width}x{args.height}"
    frames = jpeg_frames(32, args.width, args.height)
    datasets = {c or "none": build(DATA / f"{tag}-{c or 'none'}", args.samples, args.frames, c, frames)
                for c in (None, "zstd")}
    total_raw = raw_bytes(datasets["none"])
    print(f"dataset: {args.samples} samples x {args.frames} frames {args.width}x{args.height}, "
          f"{total_raw / 1e9:.2f} GB uncompressed, mean frame {np.mean([len(f) for f in frames]) / 1e3:.0f} KB, "
          f"zstd files {sum(f.stat().st_size for f in shard_files(datasets['zstd'])) / 1e9:.2f} GB")
    for path in datasets.values():  # page cache warm-up: every reader below reads from memory
        read_raw_fresh(path)

    # Two groups, each run in interleaved rounds. The primary comparison (issue targets) runs
    # alone first: the StreamingDataset readers allocate and free GBs, which makes the allocator
    # hand pages back to the OS, so interleaving them would measure page faults, not readers.
    groups = [
        {
            ("none", "raw read(), reused buffer"): read_raw_reused,
            ("none", "raw read(), fresh bytes"): read_raw_fresh,
            ("none", "reference get_item"): read_reference_get_item,
            ("none", "etl.mds -> Arrow"): read_etl_mds,
        },
        {
            ("zstd", "raw read(), reused buffer"): read_raw_reused,
            ("zstd", "etl.mds -> Arrow"): read_etl_mds,
            ("none", "StreamingDataset"): lambda p: read_streaming_dataset(p, args.samples),
            ("zstd", "StreamingDataset (decompress to cache)"): lambda p: read_streaming_dataset(p, args.samples),
            ("none", "StreamingDataset num_workers=2"): lambda p: read_streaming_dataset(p, args.streaming_limit, 2),
        },
    ]
    readers = {key: reader for group in groups for key, reader in group.items()}
    times: dict = {key: [] for key in readers}
    counts: dict = {}
    for group in groups:
        for _ in range(args.rounds):
            for key, reader in group.items():
                elapsed, count = reader(datasets[key[0]])
                times[key].append(elapsed)
                counts[key] = count if count is not None else args.samples

    results = []
    print(f"\n{'data':5} {'reader':40} {'MB/s':>9} {'samples/s':>10} {'cold MB/s':>10}"
          f"  (median of rounds 2-{args.rounds}; cold = round 1)")
    for key in readers:
        seconds = statistics.median(times[key][1:] or times[key])
        fraction = counts[key] / args.samples
        mb_s = total_raw * fraction / seconds / 1e6
        cold = total_raw * fraction / times[key][0] / 1e6
        row = {"data": key[0], "reader": key[1], "seconds": seconds, "samples": counts[key],
               "MB_per_s": mb_s, "samples_per_s": counts[key] / seconds, "cold_MB_per_s": cold}
        results.append(row)
        print(f"{key[0]:5} {key[1]:40} {mb_s:9.0f} {row['samples_per_s']:10.0f} {cold:10.0f}")

    def speed(data, reader):
        return next(r["MB_per_s"] for r in results if r["data"] == data and r["reader"] == reader)

    ratios = {
        "etl.mds / raw reused buffer (target >= 0.5)":
            speed("none", "etl.mds -> Arrow") / speed("none", "raw read(), reused buffer"),
        "etl.mds / reference get_item (target >= 3)":
            speed("none", "etl.mds -> Arrow") / speed("none", "reference get_item"),
        "etl.mds / StreamingDataset":
            speed("none", "etl.mds -> Arrow") / speed("none", "StreamingDataset"),
        "etl.mds zstd / StreamingDataset zstd":
            speed("zstd", "etl.mds -> Arrow") / speed("zstd", "StreamingDataset (decompress to cache)"),
    }
    print()
    for name, value in ratios.items():
        print(f"{name:50} {value:6.2f}x")

    ray_figures = {}
    if not args.no_ray:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        for data in ("none", "zstd"):
            runs = [read_with_ray(datasets[data]) for _ in range(args.rounds)]
            put = statistics.median(r[0] for r in runs[1:] or runs)
            consume = statistics.median(r[1] for r in runs[1:] or runs)
            store = runs[0][2]
            ray_figures[data] = {"read_and_store_MB_per_s": total_raw / put / 1e6,
                                 "cold_read_and_store_MB_per_s": total_raw / runs[0][0] / 1e6,
                                 "consume_from_store_MB_per_s": total_raw / consume / 1e6,
                                 "object_store_bytes": store, "object_store_over_raw": store / total_raw}
            print(f"read_mds + Ray ({data}): read into object store {total_raw / put / 1e6:.0f} MB/s "
                  f"(cold {total_raw / runs[0][0] / 1e6:.0f}), "
                  f"consume from store {total_raw / consume / 1e6:.0f} MB/s, object store holds "
                  f"{store / 1e9:.2f} GB = {store / total_raw:.3f}x the raw shards")
        ray.shutdown()

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "mds_read.json"
    out.write_text(json.dumps({"args": vars(args), "raw_bytes": total_raw, "readers": results,
                               "ratios": ratios, "ray": ray_figures}, indent=2))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
