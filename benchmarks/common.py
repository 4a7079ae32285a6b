"""What the benchmarks share: synthetic MDS inputs (cached under benchmarks/data), results and
plots under benchmarks/results, the "small" job config of the scale runs, and a sampler of the
memory a job uses (driver, Ray's daemons and workers, and the object store) while it runs."""

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The scale runs (memory flatness, 1M samples): one small frame per sample and the tiny
# models, so that 10^5..10^6 samples fit in minutes on 2 cores, while every stage still runs.
SMALL_JOB = {
    "frames.min_pixels": 64 * 64, "frames.max_pixels": 64 * 64, "frames.crop_size": 64,
    # the synthetic data's samples have one frame: the bound the memory declarations are sized by
    "frames.max_frames": 1,
    # the transformers captioner with 8 new tokens: these runs measure the plumbing, not the model
    # (benchmarks/bench_caption.py measures vLLM)
    "models.captioner.backend": "transformers", "models.captioner.max_new_tokens": 8,
    "models.captioner.batch_size": 64,
    "models.embedder.batch_size": 256, "models.vae.batch_size": 256,
    "read.shards_per_task": 1, "sink.buckets": 16, "sink.rows_per_write": 2048,
    # a commit round at least every 30 s (whichever cadence comes first), as a job people watch
    "sink.commit_every_shards": 32, "sink.commit_every_files": 512, "sink.commit_every_minutes": 0.5,
}


def synthetic_dataset(samples: int, *, frames: int = 1, width: int = 96, height: int = 64,
                      samples_per_shard: int = 2000) -> Path:
    """An MDS dataset of `etl.synthetic.samples` rows {id, caption, frames} with exactly `frames`
    JPEGs of width x height each, about `samples_per_shard` per shard. Built once, then reused
    from benchmarks/data."""
    from etl.mds import MDSWriter
    from etl.synthetic import samples as synthetic_samples

    path = DATA / f"synthetic-{samples}x{frames}x{width}x{height}-{samples_per_shard}"
    if (path / "index.json").exists():
        return path
    rows = synthetic_samples(samples, width=width, height=height, min_frames=frames, max_frames=frames)
    first = next(rows)
    per_sample = sum(len(f) + 4 for f in first["frames"]) + 64  # the frame pool's sizes barely vary
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with MDSWriter(str(partial), columns={"id": "int", "caption": "str", "frames": "jpeg_array"},
                   size_limit=int(per_sample * samples_per_shard * 1.05)) as writer:
        writer.write(first)
        for row in rows:
            writer.write(row)
    partial.rename(path)
    return path


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    result = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), **result}
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out.relative_to(REPO)}")
    return out


def committed_rows(output: Path) -> dict:
    """Rows the job committed to `samples` and `quarantine`, and how many distinct sample ids they
    hold: the two are equal only if no sample landed twice."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    # One thread: a threaded Arrow scan can still be releasing its Python filesystem after it
    # returns, and at interpreter exit that aborted a benchmark once (apache/arrow#33975, #36389).
    ids = [chunk for table in ("samples", "quarantine") if (output / table / "_delta_log").is_dir()
           for chunk in DeltaTable(str(output / table)).to_pyarrow_dataset()
           .to_table(columns=["sample_id"], use_threads=False).column("sample_id").chunks]
    column = pa.chunked_array(ids, type=pa.string())
    return {"rows": len(column), "distinct_sample_ids": pc.count_distinct(column).as_py()}


def machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version()}


def bar_plot(name: str, title: str, labels: list[str], values: list[float], unit: str,
             target: Optional[float] = None, target_label: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 0.5 * len(labels) + 1.5), dpi=100)
    axes = figure.add_subplot()
    bars = axes.barh(labels[::-1], values[::-1], color="#4c72b0")
    axes.bar_label(bars, fmt="%.0f", padding=3, fontsize="small")
    if target is not None:
        axes.axvline(target, color="#c44e52", linestyle="--", label=target_label)
        axes.legend(loc="lower right", fontsize="small")
    axes.set_xlabel(unit)
    axes.set_title(title, fontsize="medium")
    axes.set_xlim(0, max(values + [target or 0]) * 1.18)
    figure.tight_layout()
    out = RESULTS / f"{name}.png"
    figure.savefig(out)
    return out


def steady_rate(per_second: dict[int, int], total: int) -> float:
    """Rows per second between 10% and 90% of `total` rows ({unix second: rows done in it}, a
    stage's timeline from the run summary): start-up and the tail excluded."""
    done, t10, t90, rows10, rows90 = 0, None, None, 0, 0
    for second, count in sorted(per_second.items()):
        done += count
        if t10 is None and done >= 0.1 * total:
            t10, rows10 = second, done
        if t90 is None and done >= 0.9 * total:
            t90, rows90 = second, done
    return (rows90 - rows10) / max(1, t90 - t10)


def table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


class MemorySampler:
    """Peak memory of a process tree, sampled every `interval` s: the sum of PSS (proportional
    set size) over the tree, which counts pages shared between processes (Ray's object store is
    shared memory mapped by the raylet and every worker) once."""

    def __init__(self, root_pid: int, interval: float = 0.5):
        self.root_pid, self.interval = root_pid, interval
        self.peak_bytes, self.samples = 0, []  # samples: (seconds since start, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def measure(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.measure()
            self.samples.append((round(time.monotonic() - self._started, 2), used))
            self.peak_bytes = max(self.peak_bytes, used)
            self._stop.wait(self.interval)
