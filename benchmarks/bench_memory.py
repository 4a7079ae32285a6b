"""Memory flatness: the whole curation job on 10K and on 100K samples of the same shape, peak
memory of everything it runs (driver, Ray's daemons, workers, object store) and the time to the
first commit, side by side in one invocation.

    python benchmarks/bench_memory.py [--sizes 10000 100000] [--name memory]

The 1M-sample run (docs/scale-1m.md) is the same measurement at one size:
`python benchmarks/bench_memory.py --sizes 1000000 --name scale-1m --keep-reports`.

Each run is `python -m jobs.curate` with its own local Ray (2 CPUs here), the tiny models and
one 96x64 JPEG per sample (benchmarks/common.py SMALL_JOB), sampled every 0.5 s: the sum of PSS
over the job's process tree (shared pages such as the object store counted once).
Targets: the largest run's peak <= 1.25x the smallest run's; time to first commit flat (<= 1.25x;
each stage's first finished row is printed beside it, to show where that time goes).
Each run's tables are read back afterwards: rows, distinct sample ids and input samples must be
equal (nothing lost, nothing twice), or the benchmark fails.
Writes results/<name>.json and <name>.png (memory over time per run).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, RESULTS, SMALL_JOB, MemorySampler, committed_rows, save, synthetic_dataset, table

from etl.report import STAGES  # after common: it puts the repository on sys.path

GIB = 2**30
# "does not grow", allowing for this shared VM's noise: run to run at one size it moves ~15%
FLAT_COMMIT_RATIO = 1.25


def curate(input_path: Path, output: Path, summary_path: Path, extra_sets: dict, small: bool = True) -> subprocess.Popen:
    """`python -m jobs.curate` on jobs/configs/local.yaml, with SMALL_JOB's settings unless not `small`."""
    sets = [arg for key, value in {**(SMALL_JOB if small else {}), **extra_sets}.items() for arg in ("--set", f"{key}={value}")]
    return subprocess.Popen([sys.executable, "-m", "jobs.curate", "--config", "jobs/configs/local.yaml",
                             "--input", str(input_path), "--output", str(output), "--text-column", "caption",
                             "--ray-address", "local", "--summary-json", str(summary_path), *sets],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def worker_crashes(driver_pid: int) -> int:
    """Ray workers of the run that died of a system error (segfault, OOM kill, lost
    connection), as its GCS logged them; the session directory ends with the driver's pid."""
    import re

    sessions = sorted(Path("/tmp/ray").glob(f"session_*_{driver_pid}"))
    if not sessions:
        return -1  # unknown: no session directory found
    log = (sessions[-1] / "logs" / "gcs_server.out").read_text(errors="replace")
    return len(re.findall(r"gcs_worker_manager.*exit_type = SYSTEM_ERROR", log))


def measured_run(samples: int, work: Path, extra_sets: dict, keep_report: Path | None = None) -> dict:
    path = synthetic_dataset(samples, samples_per_shard=1000)
    output, summary_path = work / f"out-{samples}", work / f"summary-{samples}.json"
    process = curate(path, output, summary_path, extra_sets)
    with MemorySampler(process.pid) as sampler:
        log, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"the {samples}-sample run failed:\n{log[-4000:]}")
    summary = json.loads(summary_path.read_text())
    if keep_report:
        shutil.copyfile(output / "report.html", keep_report)
    committed = committed_rows(output)
    if not committed["rows"] == committed["distinct_sample_ids"] == samples:
        raise SystemExit(f"the {samples}-sample run committed {committed}")
    return {"samples": samples, "peak_gib": sampler.peak_bytes / GIB, "seconds": summary["seconds"],
            "samples_per_s": samples / summary["seconds"], "first_commit_s": summary["first_commit_seconds"],
            "commits": summary["commits"].get("samples", 0), "shards": summary["shards"],
            "rows": summary["rows"], "distinct_sample_ids": committed["distinct_sample_ids"],
            "files": summary["files"], "last_read_s": summary["last_read_seconds"],
            "shards_read_after_first_commit": summary["shards_read_after_first_commit"],
            "commit_seconds": summary["commit_seconds"], "first_rows_s": summary["first_rows_seconds"],
            "worker_crashes": worker_crashes(process.pid),
            "memory_over_time": [(t, round(b / GIB, 3)) for t, b in sampler.samples]}


def plot(runs: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.6), dpi=100)
    axes = figure.add_subplot()
    for run in runs:
        t, gib = zip(*run["memory_over_time"])
        axes.plot(t, gib, label=f"{run['samples']:,} samples ({run['seconds']:.0f} s)")
    axes.set_xscale("log")
    axes.set_xlabel("seconds since the job process started (log scale)")
    axes.set_ylabel("GiB (PSS, whole job)")
    axes.set_ylim(0, None)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title("memory of the whole job over the run", fontsize="medium")
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--name", default="memory", help="results/<name>.json and .png")
    parser.add_argument("--keep-reports", action="store_true",
                        help="copy each run's report.html to results/<name>-<samples>-report.html")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra job config")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.set)

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        runs = [measured_run(samples, work, extra, RESULTS / f"{args.name}-{samples}-report.html"
                             if args.keep_reports else None) for samples in args.sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = runs[0], runs[-1]
    ratio = large["peak_gib"] / small["peak_gib"]
    table([(f"{r['samples']:,}", f"{r['peak_gib']:.2f}", f"{r['first_commit_s']:.1f}", f"{r['seconds']:.0f}",
            f"{r['samples_per_s']:.0f}", r["commits"], r["worker_crashes"]) for r in runs],
          ("samples", "peak GiB", "first commit s", "total s", "samples/s", "commits", "worker crashes"))
    # where the time to the first commit goes: each stage's first finished row
    table([(f"{r['samples']:,}", *(f"{r['first_rows_s'].get(stage, float('nan')):.1f}" for stage in STAGES),
            f"{r['first_commit_s']:.1f}") for r in runs],
          ("samples", *(f"first {stage} s" for stage in STAGES), "first commit s"))
    commit_ratio = large["first_commit_s"] / small["first_commit_s"]
    if len(runs) > 1:
        print(f"  peak {large['samples']:,} / {small['samples']:,}: {ratio:.2f}x (target <= 1.25); first commit "
              f"{small['first_commit_s']:.1f} s -> {large['first_commit_s']:.1f} s, {commit_ratio:.2f}x "
              f"(target: flat, <= {FLAT_COMMIT_RATIO})")
    plot(runs, args.name)
    save(args.name, {"runs": runs, "peak_ratio": ratio, "target_peak_ratio": 1.25, "first_commit_ratio": commit_ratio,
                     "target_first_commit_ratio": FLAT_COMMIT_RATIO, "job": SMALL_JOB, "extra": extra})


if __name__ == "__main__":
    main()
