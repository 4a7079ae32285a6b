"""Find duplicates in a curation output: exact (the same pixels), near (perceptual hashes a few
bits apart: re-encoded or resized copies) and semantic (embeddings at a high cosine), within a
run and across runs. Writes `duplicates` (one row per duplicate sample, with the copy it
duplicates) and `dedup_seen` (its ledger) next to `samples`; `etl.ingest.read_samples(...,
drop_duplicates=True)` leaves the duplicates out.

    python -m jobs.dedup --output s3://bucket/curated [--config FILE] [--kinds exact,near] [--near-distance 6]
        [--semantic-threshold 0.97] [--set dedup.partitions=64]

Incremental: a pass compares only what is new since the last one (new rows, rows re-processed
by a backfill, and earlier duplicates) against everything there. Runs on the Ray cluster it is
submitted to (`ray job submit -- python -m jobs.dedup ...`), or a local one.
"""

import argparse
import json
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.dedup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the curation job's output: the folder holding samples/")
    parser.add_argument("--config", help="YAML job config whose dedup section to use")
    parser.add_argument("--kinds", help="comma-separated: exact,near,semantic (default: all three)")
    parser.add_argument("--near-distance", type=int, help="pHash bits apart, at most, for a near duplicate")
    parser.add_argument("--semantic-threshold", type=float, help="embedding cosine, at least, for a semantic duplicate")
    parser.add_argument("--samples-version", type=int, help="the samples table version to judge (default: latest)")
    parser.add_argument("--summary-json", help="write the pass's figures here as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from etl.config import ConfigError, load_config
    from jobs.curate import parse_sets, with_flags

    flags = {"dedup.near_distance": args.near_distance, "dedup.semantic_threshold": args.semantic_threshold,
             "dedup.kinds": args.kinds.split(",") if args.kinds else None, "output": args.output}
    try:
        config = load_config(args.config, with_flags(parse_sets(args.set), flags),
                             defaults={"input": "(not used by dedup)"})
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from dataclasses import asdict

    import ray

    from etl import ray_settings
    from etl.dedup.run import run_dedup
    from etl.sinks.delta_commits import TableMoved
    from jobs.curate import storage_settings

    if not ray.is_initialized():  # a caller in this process may have started it
        ray_settings.init(address=config.ray.address, include_dashboard=False, log_to_driver=False,
                          logging_level="ERROR", runtime_env={"env_vars": storage_settings()})
    try:
        summary = run_dedup(config.output, config.dedup, args.samples_version)
    except (FileNotFoundError, TableMoved) as exc:
        print(f"dedup failed: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    if args.summary_json:
        with open(args.summary_json, "w") as out:
            json.dump(asdict(summary), out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
