"""Orchestration overhead: the whole curation job's samples/s against its slowest stage run
alone, with the tiny models, on the same samples, side by side in one invocation.

    python benchmarks/bench_pipeline.py [--samples 10000]

Alone: each stage's own callable (`etl.stages`: DecodeStage, CaptionStage, EncodeStage,
WriteStage, as `etl.pipeline.STAGES` builds them) in this process, on the batches the stage before it produced, with one torch
thread (what a fractional-CPU Ray actor gets), setup excluded; timed right before and right
after the end-to-end run, and the mean of both taken (this VM's speed drifts within minutes). End to end: `etl.pipeline.run`
on a local Ray with 2 CPUs. "Steady" is the rate rows leave the encode stage (the last before
the write) between 10% and 90% of the rows (actor start-up excluded); "wall" includes start-up. The CPU bound is cores / (sum of every
stage's seconds per row): what this box could do if orchestration cost nothing, since every
stage shares the same cores here. Target: steady end to end >= 80% of the slowest stage alone.
Writes results/pipeline.json and pipeline.png.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import SMALL_JOB, bar_plot, save, steady_rate, synthetic_dataset, table


def job_config(input_path: Path, output: Path):
    from etl.config import load_config

    return load_config("jobs/configs/local.yaml", {**SMALL_JOB, "input": str(input_path), "output": str(output),
                                                   "read.text_column": "caption"})


def stages_alone(config, samples: int) -> dict[str, float]:
    """rows/s of each stage run alone, on its real input batches: built from the steps the run
    builds (`etl.pipeline.STAGES`, planned against this Ray cluster), setup excluded."""
    import pyarrow as pa
    import ray
    import torch

    import etl
    from etl import pipeline, planner, storage
    from etl.job_input import job_source
    from etl.mds import load_index
    from etl.stages.previews import PreviewRows
    from etl.stages.stage import RunContext

    torch.set_num_threads(1)
    config = pipeline.absolute_model_paths(config)
    source, image_column = job_source(config, load_index(*storage.resolve(config.input)), None)
    plan = planner.plan(planner.nodes_from_ray(ray.nodes()), config, planner.footprints_of(config), source.read_tasks)
    context = RunContext(config, plan, "alone", image_column, dict(zip(source.schema.names, source.schema.types)),
                         pipeline.table_schemas(config), PreviewRows())
    first, *steps = [stage.step(context) for stage in pipeline.STAGES]
    rows = etl.read_mds(source).take_batch(samples, batch_format="pyarrow")
    rates, batch = {}, first.stage(*first.arguments)(rows)
    for step in steps:
        stage = step.stage(*step.arguments)
        stage(batch.slice(0, min(8, batch.num_rows)))  # first-call costs out of the timing
        outputs, started = [], time.perf_counter()
        for start in range(0, batch.num_rows, step.resources.batch_rows):
            outputs.append(stage(batch.slice(start, step.resources.batch_rows)))
        rates[step.name.removesuffix("Stage").lower()] = batch.num_rows / (time.perf_counter() - started)
        batch = pa.concat_tables(outputs)
    return rates


def end_to_end(config) -> dict:
    from etl import pipeline

    summary = pipeline.run(config)
    total = sum(summary.rows.values())
    # the rows leaving the last model stage, per second: writes come in 2048-row lumps, too few
    # in a 10K run to time a rate between them
    steady = steady_rate(summary.timeline["encode"], total)
    return {"rows": total, "seconds": summary.seconds, "wall_samples_per_s": total / summary.seconds,
            "steady_samples_per_s": steady, "first_commit_s": summary.first_commit_seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args(argv)

    import ray
    import ray.data

    cores = os.cpu_count()
    path = synthetic_dataset(args.samples, samples_per_shard=1000)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        # the stages alone right before and right after the end-to-end run: this VM's speed moves
        # by a third within a minute, and the mean of both is what they could do while it ran
        before = stages_alone(job_config(path, work / "alone-before"), min(args.samples, 4096))
        e2e = end_to_end(job_config(path, work / "e2e"))
        after = stages_alone(job_config(path, work / "alone-after"), min(args.samples, 4096))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    alone = {name: (before[name] + after[name]) / 2 for name in before}
    slowest = min(alone, key=alone.get)
    cpu_bound = cores / sum(1 / rate for rate in alone.values())
    overhead = 1 - e2e["steady_samples_per_s"] / alone[slowest]
    rows = [(f"{name} alone (1 thread)", f"{rate:.0f}", f"{before[name]:.0f} before, {after[name]:.0f} after")
            for name, rate in alone.items()]
    rows += [(f"CPU bound: {cores} cores / sum of stage costs", f"{cpu_bound:.0f}", ""),
             ("end to end, steady (10%-90% of rows encoded)", f"{e2e['steady_samples_per_s']:.0f}", ""),
             ("end to end, wall (incl. start-up)", f"{e2e['wall_samples_per_s']:.0f}", "")]
    print(f"{args.samples} samples x 1 frame 96x64, tiny models, {cores} cores")
    table(rows, ("path", "samples/s", "detail"))
    print(f"  overhead vs slowest stage alone ({slowest}): {overhead:.0%} (target <= 20%); "
          f"steady / CPU bound {e2e['steady_samples_per_s'] / cpu_bound:.2f}")
    bar_plot("pipeline", f"samples/s, tiny models, {cores} cores",
             [r[0] for r in rows], [float(r[1]) for r in rows], "samples/s",
             0.8 * alone[slowest], "80% of the slowest stage alone")
    save("pipeline", {"samples": args.samples, "alone_samples_per_s": alone, "alone_before": before,
                      "alone_after": after, "slowest": slowest,
                      "cpu_bound_samples_per_s": cpu_bound, "end_to_end": e2e, "overhead": overhead,
                      "target_overhead": 0.2, "job": SMALL_JOB})


if __name__ == "__main__":
    main()
