"""What `--resume` saves: a run SIGKILLed once about half its shards are finished, then resumed,
against a full re-run of the same input. All three are `python -m jobs.curate` processes on
jobs/configs/local.yaml (tiny models, local Ray), side by side in one invocation.

    python benchmarks/bench_resume.py [--samples 1200] [--kill-at 0.5] [--work benchmarks/data/resume]

Writes benchmarks/results/resume.json.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, committed_rows


def curate(input_dir: Path, output: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.curate", "--config", "jobs/configs/local.yaml", "--input",
                             str(input_dir), "--output", str(output), "--text-column", "caption",
                             "--max-error-fraction", "0.2", "--ray-address", "local", *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finished(process: subprocess.Popen) -> float:
    started = time.monotonic()
    log, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"run failed:\n{log[-3000:]}")
    return time.monotonic() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of shards finished before SIGKILL")
    parser.add_argument("--work", default=str(REPO / "benchmarks/data/resume"))
    args = parser.parse_args(argv)

    import ray.data

    import etl
    from etl import ledger, synthetic

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = list(synthetic.samples(args.samples, corrupt_every=40))
    shards = etl.write_mds(ray.data.from_items(rows, override_num_blocks=4), str(work / "input"),
                           columns={"id": "int", "caption": "str", "frames": "jpeg_array"}, size_limit="2mb")
    ray.shutdown()

    output = work / "resumed"
    started = time.monotonic()
    job = curate(work / "input", output)
    done = {}
    while len(done) < args.kill_at * shards:
        if job.poll() is not None:
            raise SystemExit("the run finished before it could be killed:\n" + job.stdout.read()[-3000:])
        time.sleep(0.5)
        done = ledger.finished_shards(str(output), "delta", str(work / "input"))
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    killed_after = time.monotonic() - started
    subprocess.run(["pkill", "-9", "-f", str(output)], check=False)  # nothing of the killed run lingers
    done = ledger.finished_shards(str(output), "delta", str(work / "input"))
    resume_seconds = finished(curate(work / "input", output, "--resume"))
    full_seconds = finished(curate(work / "input", work / "full"))

    committed = committed_rows(output)
    if not committed["rows"] == committed["distinct_sample_ids"] == args.samples:
        raise SystemExit(f"after --resume the tables hold {committed} for {args.samples} input samples")
    result = {"samples": args.samples, "shards": shards, "killed_after_s": round(killed_after, 1),
              "shards_finished_at_kill": len(done), "resume_s": round(resume_seconds, 1),
              "full_rerun_s": round(full_seconds, 1), "saved_s": round(full_seconds - resume_seconds, 1),
              "rows_after_resume": committed["rows"],
              "distinct_sample_ids_after_resume": committed["distinct_sample_ids"]}
    print(f"{args.samples} samples in {shards} shards; SIGKILL after {killed_after:.1f}s with {len(done)} shards "
          f"finished\n  --resume: {resume_seconds:.1f}s   full re-run: {full_seconds:.1f}s   saved: "
          f"{full_seconds - resume_seconds:.1f}s ({1 - resume_seconds / full_seconds:.0%})\n"
          f"  rows after resume: {committed['rows']}, distinct sample ids {committed['distinct_sample_ids']} "
          f"(input {args.samples})")
    out = REPO / "benchmarks/results/resume.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
