"""The curation job: MDS shards -> captions, scores, embeddings, latents -> Delta tables.

    python -m jobs.curate --input URI --output URI [--shards A:B] [--config FILE] [...]
    ray job submit --working-dir . -- python -m jobs.curate --input s3://... --output s3://...
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.curate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="MDS dataset root (local path or s3://)")
    parser.add_argument("--output", required=True, help="where the samples/quarantine/runs tables go")
    parser.add_argument("--config", help="YAML job config (e.g. jobs/configs/local.yaml)")
    parser.add_argument("--shards", help="shard range A:B of the input index")
    parser.add_argument("--image-column", help="frames column, when the index has several")
    parser.add_argument("--text-column", help="text column fed to the captioner prompt")
    parser.add_argument("--id-column", help="column holding sample ids (default: shard:row)")
    parser.add_argument("--buckets", type=int, help="hash buckets of the output tables")
    parser.add_argument("--format", choices=["delta", "parquet"], help="table format")
    parser.add_argument("--ray-address", help="Ray cluster address ('local' starts one)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from etl.config import ConfigError, load_config

    try:
        config = load_config(args.config, {
            "input": args.input, "output": args.output, "read.shards": args.shards,
            "read.image_column": args.image_column, "read.text_column": args.text_column,
            "read.id_column": args.id_column, "sink.buckets": args.buckets, "sink.format": args.format,
            "ray.address": args.ray_address})
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    import ray

    from etl import pipeline

    ray.init(address=config.ray.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    summary = pipeline.run(config)
    print(f"run {summary.run_id}: {summary.seconds:.1f}s, first commit after {summary.first_commit_seconds or 0:.1f}s")
    for table in ("samples", "quarantine"):
        print(f"  {config.output}/{table}: {summary.rows.get(table, 0)} rows in {summary.files.get(table, 0)} "
              f"files, {summary.commits.get(table, 0)} commit(s)")
    for reason, count in sorted(summary.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  quarantined {count} x {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
