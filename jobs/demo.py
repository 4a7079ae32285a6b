"""`make demo`: the curation job on a synthetic dataset, locally, with tiny models.

Builds a few hundred multi-frame samples with write_mds (some deliberately broken: truncated
and garbage frames, a decompression-bomb header, one truncated shard; some deliberately copied:
the same files, re-encoded, resized), runs `jobs.curate`'s pipeline with jobs/configs/local.yaml
plus the filters and the dedup pass below, and prints where the tables are, the row counts, the
quarantine reasons, each filter's pass rate, the duplicates found and throughput per stage.

    python -m jobs.demo [--samples 240] [--output demo_output]
"""

import argparse
import re
import shutil
from pathlib import Path


DUPLICATE_EVERY = 16
# What the demo adds to local.yaml: filters to show their pass rates, and a dedup pass after the
# run. Semantic duplicates stay off: the tiny random-weight CLIP embeds every image nearly alike
# (cosine > 0.97 between unrelated images), so they would mean nothing here.
DEMO_SETTINGS = {"filters.scores": {"quality": {"min": 2}, "clip_score_caption": {"min": -0.5}},
                 "filters.min_side": 64, "filters.aspect_ratio": [0.5, 2.5], "filters.max_frames": 9,
                 "dedup.after_run": True, "dedup.kinds": ["exact", "near"]}


def build_dataset(path: Path, samples: int) -> int:
    import ray.data

    import etl
    from etl import synthetic

    rows = list(synthetic.samples(samples, corrupt_every=40))  # truncated JPEG frames
    rows[7]["frames"][0] = b"this is not an image"
    rows[100]["frames"][2] = synthetic.claim_jpeg_size(rows[100]["frames"][2], 60000, 60000)
    rows = synthetic.with_duplicates(rows, every=DUPLICATE_EVERY)  # copies: exact, re-encoded, resized, in turn
    shards = etl.write_mds(ray.data.from_items(rows, override_num_blocks=4), str(path),
                           columns={"id": "int", "caption": "str", "frames": "jpeg_array"},
                           size_limit="2mb")
    victim = sorted(path.rglob("shard.*.mds"))[2]
    victim.write_bytes(victim.read_bytes()[:-100])  # storage damage: a truncated shard object
    return shards


def stage_throughput(stats: str) -> list[tuple[str, float, float]]:
    """(stage, Ray Data rows/s, single-task rows/s) from Ray's execution stats."""
    found = []
    for block in re.split(r"\n(?=Operator \d+ )", stats):
        name = re.match(r"Operator \d+ ([^:]+):", block)
        overall = re.search(r"Ray Data throughput: ([\d.]+)", block)
        single = re.search(r"Estimated single task throughput: ([\d.]+)", block)
        if name and overall and single:
            found.append((name.group(1), float(overall.group(1)), float(single.group(1))))
    return found


def print_filters_and_duplicates(summary) -> None:
    samples = summary.rows.get("samples", 0)
    print(f"filters ({samples - summary.filters.get('filtered', 0)} of {samples} samples pass every rule):")
    for name, asks in summary.filters.get("rules", {}).items():
        rejected = summary.filters.get("rejected", {}).get(name, 0)
        print(f"  {name:20} {asks:50} pass rate {1 - rejected / max(samples, 1):6.1%} ({rejected} rejected)")
    if summary.dedup_error:
        print(f"dedup pass failed: {summary.dedup_error}")
    elif summary.dedup:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.dedup["duplicates"].items())) or "none"
        print(f"duplicates (table {summary.output}/duplicates): {found}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--output", default="demo_output")
    args = parser.parse_args(argv)

    import ray.data

    from etl import pipeline, ray_settings
    from etl.config import load_config

    out = Path(args.output).resolve()
    shutil.rmtree(out, ignore_errors=True)
    ray_settings.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    shards = build_dataset(out / "input", args.samples)
    copies = len(range(0, args.samples, DUPLICATE_EVERY))
    print(f"input: {args.samples} samples and {copies} copies of some of them in {shards} MDS shards at "
          f"{out / 'input'} (one shard truncated)")

    config = load_config("jobs/configs/local.yaml", {"input": str(out / "input"), "output": str(out / "tables"),
                                                     "read.text_column": "caption", **DEMO_SETTINGS})
    summary = pipeline.run(config)
    print(f"\nrun {summary.run_id}: {summary.seconds:.1f}s in all, first commit after "
          f"{summary.first_commit_seconds:.1f}s, {args.samples / summary.seconds:.1f} samples/s end to end")
    print(f"  reads ran until {summary.last_read_seconds:.1f}s: {summary.shards_read_after_first_commit} of "
          f"{len(summary.per_shard)} shards were still being read after the first commit")
    for table in ("samples", "quarantine"):
        print(f"  {out / 'tables' / table}: {summary.rows.get(table, 0)} rows, {summary.files.get(table, 0)} "
              f"files, {summary.commits.get(table, 0)} commit(s)")
    print(f"  {out / 'tables' / 'runs'}: {len(summary.per_shard)} shards recorded")
    from jobs.curate import engine_line

    print(f"captioner: {engine_line(summary.engine)}")
    print("quarantine reasons:")
    for reason, count in sorted(summary.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {count:4d} x {reason}")
    print_filters_and_duplicates(summary)
    print("throughput per stage (rows/s: whole stage / one task or actor):")
    for stage, overall, single in stage_throughput(summary.stage_stats):
        print(f"  {stage:36} {overall:8.1f} {single:8.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
