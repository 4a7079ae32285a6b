"""`make bench`: every benchmark under benchmarks/, one at a time (this machine has 2 cores:
two at once would measure each other), then a plot per result and the headline figures.

    python benchmarks/run_all.py [--only decode memory ...] [--quick]

Each benchmark prints its own table and writes benchmarks/results/<name>.json (+ .png).
--quick runs smaller sizes (a smoke run of the harness, not figures to quote).
"""

import argparse
import json
import subprocess
import sys
import time

from common import REPO, RESULTS, bar_plot

# name -> (script, full-size args, quick args); in the order they run
BENCHMARKS = {
    "mds_read": ("bench_mds_read.py", ["--samples", "1000", "--rounds", "5"], ["--samples", "100", "--rounds", "2"]),
    "frame_decode": ("bench_frame_decode.py", ["--frames", "64", "--rounds", "5"], ["--frames", "16", "--rounds", "2"]),
    "decode": ("bench_decode.py", ["--samples", "400"], ["--samples", "40", "--rounds", "1", "--repeats", "1"]),
    "pipeline": ("bench_pipeline.py", ["--samples", "10000"], ["--samples", "1000"]),
    "caption": ("bench_caption.py", ["--samples", "384"], ["--samples", "64", "--ray-data-llm-timeout", "120"]),
    "memory": ("bench_memory.py", ["--sizes", "10000", "100000"], ["--sizes", "1000", "3000"]),
    "memory_declared": ("bench_memory_declared.py", ["--samples", "10000"], ["--samples", "1000"]),
    "resume": ("bench_resume.py", ["--samples", "1200"], ["--samples", "240"]),
    "encoders": ("bench_encoders.py", ["--frames", "256"], ["--frames", "32", "--batch-sizes", "16"]),
    "signals": ("bench_signals.py", ["--frames", "64", "--samples", "32"], ["--frames", "8", "--samples", "8",
                                                                          "--rounds", "2"]),
    "dedup": ("bench_dedup.py", ["--samples", "100000"], ["--samples", "10000"]),
}


def plot_older_results() -> None:
    """Plots for the benchmarks that only write JSON."""
    if (RESULTS / "mds_read.json").exists():
        result = json.loads((RESULTS / "mds_read.json").read_text())
        rows = [r for r in result["readers"] if r["data"] == "none"]
        bar_plot("mds_read", "MDS read, uncompressed shards (page cache)", [r["reader"] for r in rows],
                 [r["MB_per_s"] for r in rows], "MB/s")
    if (RESULTS / "frame_decode.json").exists():
        rates = json.loads((RESULTS / "frame_decode.json").read_text())["frames_per_s"]
        bar_plot("frame_decode", "one core, 1280x720 JPEG", list(rates), list(rates.values()), "frames/s")
    if (RESULTS / "resume.json").exists():
        result = json.loads((RESULTS / "resume.json").read_text())
        seconds = {k: v for k, v in result.items() if k.endswith("_s") and isinstance(v, (int, float))}
        if seconds:
            bar_plot("resume", "kill half way + --resume vs a full re-run", list(seconds), list(seconds.values()), "s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    failed = []
    for name, (script, full, quick) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(REPO / "benchmarks" / script), *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        if subprocess.run(command, cwd=REPO).returncode:
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - started:.0f} s", flush=True)
    plot_older_results()
    print(f"\nresults and plots: {RESULTS.relative_to(REPO)}/")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
