"""The curation job: MDS shards -> captions, scores, embeddings, latents -> Delta tables.

    python -m jobs.curate --input URI --output URI [--shards A:B] [--config FILE] [...]
    ray job submit --working-dir . -- python -m jobs.curate --input s3://... --output s3://...
"""

import argparse
import sys
import traceback


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
    parser.add_argument("--max-error-fraction", type=float,
                        help="fail the run when more than this fraction of samples is quarantined")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set sink.commit_every_shards=4 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="skip shards the output's ledger records as finished; redo the rest")
    parser.add_argument("--summary-json", metavar="PATH",
                        help="also write the run's summary (rows, commits, timings, report) as JSON here")
    return parser.parse_args(argv)


# Where storage is and how hard to retry follow the driver to its workers. Credentials do not:
# runtime envs are visible in the cluster's job table, so workers use the cluster's own
# credentials (environment, profile or instance role).
_STORAGE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_REGION", "AWS_DEFAULT_REGION")


def storage_settings() -> dict[str, str]:
    import os

    return {name: os.environ[name] for name in _STORAGE_SETTINGS if name in os.environ}


def parse_sets(items: list[str]) -> dict:
    """`--set a.b=value` pairs -> dotted overrides; values are YAML scalars (8, 0.5, true, null)."""
    import yaml

    from etl.config import ConfigError

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sink.buckets=64")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def with_flags(sets: dict, flags: dict) -> dict:
    """`--set` overrides, then the flags that were given: a flag left out (None) leaves the
    `--set` value of its key in place."""
    return {**sets, **{key: value for key, value in flags.items() if value is not None}}


def job_config(args: argparse.Namespace):
    """The validated config: the file, then `--set`, then the flags given."""
    from etl.config import load_config

    return load_config(args.config, with_flags(parse_sets(args.set), {
        "input": args.input, "output": args.output, "read.shards": args.shards,
        "read.image_column": args.image_column, "read.text_column": args.text_column,
        "read.id_column": args.id_column, "sink.buckets": args.buckets, "sink.format": args.format,
        "ray.address": args.ray_address, "max_error_fraction": args.max_error_fraction}))


def write_summary_json(summary, path: str) -> None:
    import json
    from pathlib import Path

    from etl.cluster_watch import placement_by_node

    figures = {key: getattr(summary, key) for key in (
        "run_id", "output", "mode", "seconds", "first_commit_seconds", "last_read_seconds",
        "shards_read_after_first_commit", "rows", "commits", "files", "reasons", "engine", "report",
        "operator_memory", "maintenance", "maintenance_error", "cluster", "planned", "started_at")}
    figures.update(shards=len(summary.shards), skipped_shards=len(summary.skipped_shards),
                   commit_seconds=[round(t - summary.started_at, 3) for t in summary.commit_times],
                   # where the time to the first commit goes: when each stage finished its first row
                   # (whole seconds, as the timeline counts them)
                   first_rows_seconds={stage: round(min(seconds) - summary.started_at, 1)
                                       for stage, seconds in summary.timeline.items() if seconds},
                   last_rows_seconds={stage: round(max(seconds) - summary.started_at, 1)
                                      for stage, seconds in summary.timeline.items() if seconds})
    figures["placement"] = placement_by_node(summary.placement)  # stage -> node -> actors or tasks, rows
    Path(path).write_text(json.dumps(figures, indent=2))


def main(argv=None) -> int:
    args = parse_args(argv)
    from etl.config import ConfigError

    try:
        config = job_config(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from etl import pipeline, ray_settings
    from etl.committer import ErrorBudgetExceeded, RowAccountingError

    ray_settings.init(address=config.ray.address, include_dashboard=False, log_to_driver=False,
                      logging_level="ERROR", runtime_env={"env_vars": storage_settings()})
    try:
        summary = pipeline.run(config, resume=args.resume)
    except Exception as exc:  # noqa: BLE001 - sorted below; anything unknown is raised again
        cause = carried_error(exc)
        if isinstance(cause, (ErrorBudgetExceeded, RowAccountingError, ValueError)):
            print(f"run failed: {cause}", file=sys.stderr)
            return 1
        if not isinstance(cause, OSError):
            raise
        # storage still failing after the bounded retries: where it failed, then the one line
        traceback.print_exception(exc, file=sys.stderr)
        print(f"run failed: storage error: {without_ray_retry_note(str(cause))}", file=sys.stderr)
        return 1
    if args.summary_json:
        write_summary_json(summary, args.summary_json)
    if summary.skipped_shards:
        print(f"resume: {len(summary.skipped_shards)} shard(s) already finished, skipped")
    if summary.mode == "nothing to do":
        print("nothing to do: every selected shard is finished")
        return 0
    print(f"run {summary.run_id} ({summary.mode}, {len(summary.shards)} shards): {summary.seconds:.1f}s, "
          f"first commit after {summary.first_commit_seconds or 0:.1f}s, last read at {summary.last_read_seconds:.1f}s")
    for table in ("samples", "quarantine"):
        print(f"  {config.output}/{table}: {summary.rows.get(table, 0)} rows in {summary.files.get(table, 0)} "
              f"files, {summary.commits.get(table, 0)} commit(s)")
    for reason, count in sorted(summary.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  quarantined {count} x {reason}")
    print(f"  captioner: {engine_line(summary.engine)}")
    print_maintenance(summary, config.output)
    return 0


def print_maintenance(summary, output: str) -> None:
    from etl.sinks.maintenance import TableHealth

    for health in summary.maintenance:
        print(f"  maintenance: {TableHealth(**health).line()}")
    if summary.maintenance_error:
        print(f"  maintenance failed (every row is committed; rerun it with python -m jobs.maintain --output "
              f"{output}): {summary.maintenance_error}", file=sys.stderr)


def carried_error(exc: BaseException) -> BaseException:
    """The error a Ray task or actor raised, inside the `RayTaskError` that carried it to the
    driver (`.cause`); `exc` itself otherwise. A stage's error arrives as itself because the job
    sets `raise_original_map_exception` (`pipeline.configure_execution`)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException) and exc.cause is not exc:
        exc = exc.cause
    return exc


def without_ray_retry_note(message: str) -> str:
    """Ray Data appends "Failed to <step> after N/M attempts ... if you believe this to be
    transient" to a stage's error; the job's own retry bound already spoke."""
    return message.split("\nFailed to ", 1)[0].strip()


def _share(engine: dict, key: str) -> str:
    return "n/a" if engine.get(key) is None else f"{engine[key]:.0%}"


def engine_line(engine: dict) -> str:
    """One line of the run's captioner figures (`captioner.engine_summary`)."""
    if not engine.get("answers"):
        return "no sample reached it"
    line = f"{engine['parsed']}/{engine['answers']} answers parsed ({_share(engine, 'parsed_share')})"
    if engine.get("prompt_tokens_per_s") is not None:
        line += (f", prefix-cache hits {_share(engine, 'prefix_cache_hit_rate')}, "
                 f"{engine['prompt_tokens_per_s']:,.0f} prompt + {engine['generation_tokens_per_s']:,.0f} "
                 f"generated tokens/s")
    return line + f", engine busy {_share(engine, 'busy_share')}"


if __name__ == "__main__":
    sys.exit(main())
