"""Table health for existing outputs: compact each bucket's small files, vacuum files removed
longer ago than the retention, checkpoint the log. The curation job does the same after every
run (`sink.maintenance`); this is for tables written before, or after a run whose maintenance
failed.

    python -m jobs.maintain --output s3://bucket/curated [--config FILE] [--retention-hours 168]

Needs no Ray: delta-rs does the work in this process. Safe beside a running job (see
etl/sinks/maintenance.py).
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.maintain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the job's output: the folder holding samples/quarantine/runs")
    parser.add_argument("--config", help="YAML job config whose sink.maintenance section to use")
    parser.add_argument("--target-file-mb", type=int, help="compacted file size")
    parser.add_argument("--retention-hours", type=int, help="vacuum files removed longer ago than this")
    parser.add_argument("--checkpoint-interval", type=int, help="commits between log checkpoints")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from etl.config import ConfigError, load_config
    from jobs.curate import parse_sets, with_flags

    flags = {"sink.maintenance.target_file_mb": args.target_file_mb,
             "sink.maintenance.retention_hours": args.retention_hours,
             "sink.maintenance.checkpoint_interval": args.checkpoint_interval}
    try:
        config = load_config(args.config, with_flags(parse_sets(args.set), {**flags, "output": args.output}),
                             defaults={"input": "(not used for maintenance)"})
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.sink.format != "delta":
        print(f"nothing to maintain: sink.format is {config.sink.format!r}; maintenance is for Delta tables",
              file=sys.stderr)
        return 2
    from deltalake.exceptions import DeltaError

    from etl.sinks.maintenance import maintain_tables

    try:
        done = maintain_tables(config.output, config.sink.maintenance)
    except (OSError, DeltaError) as exc:
        print(f"maintenance failed: {exc}", file=sys.stderr)
        return 1
    for health in done:
        print(health.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
