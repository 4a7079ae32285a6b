"""What a curation job gets on a cluster, checked before launch.

    python -m jobs.plan --cluster cluster/aws.yaml --config jobs/configs/production.yaml
    python -m jobs.plan --cluster cluster/kuberay/raycluster.yaml --config ... --assume-shards 966x266MB

Prints, per node type, the engines, encoders, decode actors and task slots, and what each unit
asks Ray for; exits 1 naming the fix when the config oversubscribes CPUs, GPU memory or RAM.
Model sizes come from the checkpoints the config names; shard sizes from the input's index, or
from --assume-shards when the input is not written yet. `jobs.curate` runs the same check.
"""

import argparse
import re
import sys

_SIZE = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)(B|KB|MB|GB|KiB|MiB|GiB)$")
_UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_assumed_shards(text: str) -> list[int]:
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"--assume-shards {text!r}: expected COUNTxSIZE, e.g. 966x266MB (units {list(_UNITS)})")
    count, size, unit = match.groups()
    return [int(float(size) * _UNITS[unit])] * int(count)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", required=True, help="Ray cluster launcher YAML or KubeRay RayCluster/RayJob")
    parser.add_argument("--config", required=True, help="the job's YAML config")
    parser.add_argument("--input", help="MDS dataset root (default: the config's input)")
    parser.add_argument("--shards", help="shard range A:B of the input index")
    parser.add_argument("--assume-shards", help="plan for COUNTxSIZE shards (e.g. 966x266MB) instead of reading the index")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)

    from etl import planner
    from etl.config import ConfigError, load_config
    from etl.job_input import assumed_read_tasks
    from jobs.curate import parse_sets, with_flags

    try:
        # planning needs neither an output nor, with --assume-shards, an input
        unused = "(not used for planning)"
        config = load_config(args.config, with_flags(parse_sets(args.set), {"input": args.input,
                                                                             "read.shards": args.shards}),
                             defaults={"output": unused, "input": unused if args.assume_shards else None})
    except (ConfigError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        nodes = planner.load_cluster(args.cluster)
        read_tasks = (assumed_read_tasks(config, parse_assumed_shards(args.assume_shards)) if args.assume_shards
                      else _read_tasks(config))
        plan = planner.plan(nodes, config, planner.footprints_of(config), read_tasks)
    except (planner.PlanError, ValueError, OSError) as exc:
        print(f"plan refused: {exc}", file=sys.stderr)
        return 1
    print(f"cluster {args.cluster}, config {args.config}:")
    print(plan.describe())
    return 0


def _read_tasks(config):
    """The read tasks the job would run: the same index, columns and grouping (`etl.job_input`)."""
    from etl import storage
    from etl.job_input import job_source
    from etl.mds import load_index

    source, _ = job_source(config, load_index(*storage.resolve(config.input)), config.read.shards)
    return source.read_tasks


if __name__ == "__main__":
    sys.exit(main())
