"""Table health: the tables a real run leaves, before and after `python -m jobs.maintain`.

    python benchmarks/bench_maintenance.py [--samples 100000] [--scans 3]

1. `python -m jobs.curate` on N synthetic samples with the scale runs' job (benchmarks/common.py
   SMALL_JOB: 16 buckets, a commit round at least every 30 s) and `sink.maintenance.enabled=false`,
   so its tables are what every run left before maintenance existed.
2. `python -m jobs.maintain --output` in its own process: its wall time and peak RSS.
3. Per table: active files, rows per file, log bytes and log entries past the last checkpoint,
   before and after.
4. The full `etl.ingest.read_samples` scan of `samples` (every column, tensors built), at the
   version pinned before maintenance and at the one after, alternated `--scans` times in one
   Ray session: the ratio is measured side by side. The pinned scan is also the check that a
   version inside the retention still reads; both must give N distinct sample ids.
Writes results/maintenance.json.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_memory import curate
from common import REPO, committed_rows, save, synthetic_dataset, table

TABLES = ("samples", "quarantine", "runs")


def shape(output: Path) -> dict:
    from deltalake import DeltaTable

    from etl.sinks.maintenance import log_shape

    shapes = {}
    for name in TABLES:
        delta = DeltaTable(str(output / name))
        log, replay = log_shape(str(output / name))
        rows = sum(delta.get_add_actions(flatten=True).column("num_records").to_pylist())
        files = len(delta.file_uris())
        shapes[name] = {"version": delta.version(), "files": files, "rows": rows,
                        "rows_per_file": rows / files if files else 0, "log_kib": log / 1024, "log_replay": replay}
    return shapes


def maintain(output: Path) -> dict:
    started = time.perf_counter()
    job = subprocess.run([sys.executable, "-m", "jobs.maintain", "--output", str(output)], cwd=REPO,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if job.returncode:
        raise SystemExit(f"jobs.maintain failed:\n{job.stderr[-3000:]}")
    print(job.stdout, end="")
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def scan(output: Path, version: int) -> tuple[float, int]:
    """Seconds to read every row of `samples` at `version` through etl.ingest; distinct ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from etl.ingest import read_samples

    started = time.perf_counter()
    snapshot = read_samples(str(output), version=version)
    ids = [batch.column("sample_id") for batch in snapshot.dataset.iter_batches(batch_format="pyarrow",
                                                                                 batch_size=None)]
    seconds = time.perf_counter() - started
    return seconds, pc.count_distinct(pa.chunked_array(ids)).as_py()


def scans(output: Path, before: int, after: int, count: int, samples: int) -> dict:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    times = {"before": [], "after": []}
    for _ in range(count):
        for label, version in (("before", before), ("after", after)):
            seconds, distinct = scan(output, version)
            if distinct != samples:
                raise SystemExit(f"the {label} scan (version {version}) read {distinct} distinct ids of {samples}")
            times[label].append(seconds)
    ray.shutdown()
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--scans", type=int, default=3, help="alternated scans of each version")
    args = parser.parse_args(argv)

    path = synthetic_dataset(args.samples, samples_per_shard=1000)
    with tempfile.TemporaryDirectory(prefix="bench-maintenance-") as work:
        output = Path(work) / "out"
        process = curate(path, output, Path(work) / "summary.json", {"sink.maintenance.enabled": "false"})
        log, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"the run failed:\n{log[-4000:]}")
        if committed_rows(output)["distinct_sample_ids"] != args.samples:
            raise SystemExit(f"the run committed {committed_rows(output)}")
        before = shape(output)
        maintenance = maintain(output)
        after = shape(output)
        times = scans(output, before["samples"]["version"], after["samples"]["version"], args.scans, args.samples)

    rows = [(name, before[name]["files"], after[name]["files"], f"{before[name]['rows_per_file']:.0f}",
             f"{after[name]['rows_per_file']:.0f}", f"{before[name]['log_kib']:.0f}", f"{after[name]['log_kib']:.0f}",
             before[name]["log_replay"], after[name]["log_replay"]) for name in TABLES]
    print(f"{args.samples} samples; jobs.maintain took {maintenance['seconds']:.1f} s, peak RSS "
          f"{maintenance['peak_rss_mib']:.0f} MiB")
    table(rows, ("table", "files", "after", "rows/file", "after", "log KiB", "after", "replay", "after"))
    best = {label: min(values) for label, values in times.items()}
    print(f"full etl.ingest scan of samples, alternated {args.scans}x: before {times['before']} s, "
          f"after {times['after']} s; best {best['before']:.2f} -> {best['after']:.2f} s "
          f"({best['before'] / best['after']:.2f}x)")
    save("maintenance", {"samples": args.samples, "before": before, "after": after, "maintenance": maintenance,
                         "scan_seconds": times, "scan_speedup_best": best["before"] / best["after"]})


if __name__ == "__main__":
    main()
