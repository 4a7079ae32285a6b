"""Declared memory against observed, per operator: the whole curation job on N samples (10K by
default), with what each operator declared to Ray beside two observations of what its workers
used:
- Ray Data's own: the largest per-task USS sample of the operator's workers (`max_uss_bytes`,
  what its high-memory detector compares with the declaration), from the run's summary;
- this benchmark's: every 0.5 s, between tasks too, each Ray worker's USS as Ray estimates it
  (RSS less shared pages: the object store, accounted apart, left out) and its RSS, with its
  children's (vLLM's engine core and workers run as children of the caption actor) added to
  it, grouped by the operator named in the worker's process title.

    python benchmarks/bench_memory_declared.py [--samples 10000] [--set KEY=VALUE ...]
    python benchmarks/bench_memory_declared.py --job demo --samples 300   # vLLM, 10 frames a sample

Target: declared / observed in [1.0, 1.5] for every operator, where observed is the larger of
Ray's figure and the sampled USS; and declared >= 1.25 x Ray's figure, below which Ray's issue
detector warns at the end of the run. `python -m jobs.plan` prints the same declared figures.
Writes results/memory_declared.json (memory_declared-demo.json for --job demo).
"""

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from bench_memory import curate
from common import SMALL_JOB, MemorySampler, save, synthetic_dataset, table

from etl.planner import RAY_HEADROOM  # after common: it puts the repository on sys.path

MIB = 2**20
TARGET = (1.0, 1.5)


def operator_of(cmdline: list[str]):
    """The operator a Ray worker runs, from its process title: "ray::MapWorker(MapBatches(X))"
    (".submit" or ".__init__" after it while a method runs) for an actor,
    "ray::ReadMDS->MapBatches(Prepare)" for a task running; None otherwise."""
    title = " ".join(cmdline)
    if not title.startswith("ray::"):
        return None
    name = title[len("ray::"):].split(" ", 1)[0]
    # an actor's title names the method it runs: "MapWorker(MapBatches(X)).submit" in a batch
    actor = re.fullmatch(r"MapWorker\((.+)\)(\.\w+)?", name)
    if actor:
        name = actor.group(1)
    return name if "MapBatches(" in name or name.startswith("Read") else None


class WorkerSampler(MemorySampler):
    """Peak USS and RSS per operator over the Ray workers under `root_pid`, each worker's
    children counted with it (MemorySampler's thread, another measure)."""

    def __init__(self, root_pid: int, interval: float = 0.5):
        super().__init__(root_pid, interval)
        self.peaks: dict[str, dict[str, int]] = {}

    def measure(self) -> int:
        import psutil

        try:
            processes = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        for process in processes:
            try:
                operator = operator_of(process.cmdline())
                if operator is None:
                    continue
                tree = [process, *process.children(recursive=True)]
                infos = [p.memory_info() for p in tree]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            peak = self.peaks.setdefault(operator, {"uss": 0, "rss": 0})
            # Ray's own estimate of USS (RSS less shared pages): the object store's shared memory,
            # which Ray accounts as object_store_memory and not as `memory`, left out
            peak["uss"] = max(peak["uss"], sum(info.rss - info.shared for info in infos))
            peak["rss"] = max(peak["rss"], sum(info.rss for info in infos))
        return sum(peak["uss"] for peak in self.peaks.values())


def sampled_for(operator: str, peaks: dict[str, dict[str, int]]) -> dict[str, int]:
    """The sampled peaks of the workers whose title names `operator` (or its last stage)."""
    last = operator.split("->")[-1]
    found = [peak for title, peak in peaks.items() if title == operator or title == last]
    return {key: max((peak[key] for peak in found), default=0) for key in ("uss", "rss")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--job", choices=["small", "demo"], default="small",
                        help="small: the scale runs' job (SMALL_JOB); demo: jobs/configs/local.yaml as make demo runs it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra job config")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.set)

    # the demo's samples: 320x180 frames, 10 per sample (make demo: 5 to 10)
    path = (synthetic_dataset(args.samples, samples_per_shard=1000) if args.job == "small" else
            synthetic_dataset(args.samples, frames=10, width=320, height=180, samples_per_shard=100))
    with tempfile.TemporaryDirectory(prefix="bench-memory-declared-") as work:
        summary_path = Path(work) / "summary.json"
        process = curate(path, Path(work) / "out", summary_path, extra, small=args.job == "small")
        with WorkerSampler(process.pid) as sampler:
            log, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"the run failed:\n{log[-4000:]}")
        summary = json.loads(summary_path.read_text())

    rows, results = [], []
    for op in summary["operator_memory"]:
        sampled = sampled_for(op["operator"], sampler.peaks)
        observed = max(op["observed_max"] or 0, sampled["uss"])
        declared = op["declared"] or 0
        ratio = declared / observed if observed else None
        ok = ratio is not None and TARGET[0] <= ratio <= TARGET[1] and declared >= RAY_HEADROOM * (op["observed_max"] or 0)
        results.append({**op, "sampled_uss": sampled["uss"], "sampled_rss": sampled["rss"], "observed": observed,
                        "ratio_to_observed": ratio, "in_target": ok})
        rows.append((op["operator"], f"{declared / MIB:.0f}", f"{(op['observed_max'] or 0) / MIB:.0f}",
                     f"{sampled['uss'] / MIB:.0f}", f"{sampled['rss'] / MIB:.0f}",
                     f"{ratio:.2f}" if ratio else "n/a", "yes" if ok else "NO"))
    print(f"{args.samples} samples, {summary['seconds']:.0f} s; MiB per worker:")
    table(rows, ("operator", "declared", "Ray max USS", "sampled USS", "sampled RSS", "declared/obs", "in target"))
    warned = re.findall(r"Operator '([^']+)' used up to", log)
    print(f"Ray's high-memory warnings in the job's log: {warned or 'none'}")
    # one results file per job: the scale runs' job and the demo's are both kept
    save("memory_declared" if args.job == "small" else f"memory_declared-{args.job}", {"samples": args.samples, "job": args.job, "sets": {**(SMALL_JOB if args.job == "small" else {}), **extra}, "operators": results,
                             "ray_warnings": warned, "target": TARGET})


if __name__ == "__main__":
    main()
