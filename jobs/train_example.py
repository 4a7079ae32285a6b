"""Example training job: a Ray Train `TorchTrainer` fed from the `samples` table at a pinned
Delta version. A tiny MLP learns the captioner's quality score from the pooled embedding and
the first frame's VAE latent (MSE). It shows the ingestion path, not a useful model.

    python -m jobs.train_example --output <tables uri> [--version N] [--min-quality X] [--steps N]
    ray job submit --working-dir . -- python -m jobs.train_example --output s3://.../curated

Each of the --workers Train workers gets an equal share of the rows (Ray Train splits with
`streaming_split(equal=True)`: up to workers-1 rows of an epoch are left out so that every
worker runs the same number of steps, as DDP needs).
"""

import argparse
import json
import math
import sys
from typing import Any, Optional

FEATURE_COLUMNS = ("embedding", "latents")
TARGET = "quality"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_example", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="the curation job's output (holds the samples table)")
    parser.add_argument("--version", type=int, help="Delta version of samples to train on (default: the latest)")
    parser.add_argument("--min-quality", type=float, default=1.0,
                        help="keep rows with quality >= this (default 1: every row the captioner scored; "
                             "rows without a parsed score are always left out, they have no target)")
    parser.add_argument("--min-aesthetics", type=float, help="keep rows with aesthetics >= this")
    parser.add_argument("--steps", type=int, help="stop after this many optimizer steps (default: run the epochs)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per step per worker")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2)
    # Half a CPU each: two workers hold one CPU of a 2-CPU machine and the read tasks that feed
    # them get the other. Whole CPUs per worker would starve the reads and hang.
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--storage-path", help="where Ray Train keeps the run and its checkpoints (default: a new "
                                               "temp dir; local paths suit one-node clusters only)")
    parser.add_argument("--ray-address", help="Ray cluster address (default: the job's cluster, or a local one)")
    args = parser.parse_args(argv)
    for name in ("steps", "epochs", "batch_size", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.cpus_per_worker <= 0:
        parser.error(f"--cpus-per-worker must be > 0, got {args.cpus_per_worker}")
    return args


def train_loop_per_worker(config: dict) -> list[dict[str, Any]]:
    """Runs on every Train worker: its shard of the dataset, as torch batches. Returns the
    per-epoch metrics of all workers (Ray Train hands rank 0's return value to the driver)."""
    import os
    import tempfile

    import torch
    import torch.distributed as dist

    import ray.train
    import ray.train.torch

    shard = ray.train.get_dataset_shard("train")
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights; seeding keeps reruns comparable
    model = ray.train.torch.prepare_model(torch.nn.Sequential(
        torch.nn.Linear(config["in_features"], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    steps, history = 0, []
    for epoch in range(config["epochs"]):
        rows, loss_sum = 0, 0.0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], dtypes=torch.float32):
            if config["steps"] is not None and steps >= config["steps"]:
                break  # every worker stops at the same step: their shards hold the same number of rows
            features = torch.cat([batch[c].flatten(start_dim=1) for c in FEATURE_COLUMNS], dim=1)
            loss = torch.nn.functional.mse_loss(model(features).squeeze(1), batch[TARGET])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            rows += len(features)
            loss_sum += loss.item() * len(features)
        # rank 0's report and return value speak for the run: every worker's counts go into them
        mine = torch.tensor([rows, loss_sum], dtype=torch.float64)
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())] if dist.is_initialized() else [mine]
        if dist.is_initialized():
            dist.all_gather(everyone, mine)
        seen = [int(t[0]) for t in everyone]
        loss = sum(float(t[1]) for t in everyone) / sum(seen) if sum(seen) else math.nan
        metrics = {"epoch": epoch, "steps": steps, "rows_per_worker": seen, "loss": loss}
        history.append(metrics)
        # rank 0 checkpoints the weights; every rank calls report (it is a barrier)
        with tempfile.TemporaryDirectory() as scratch:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                torch.save(getattr(model, "module", model).state_dict(), os.path.join(scratch, "model.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(scratch)
            ray.train.report(metrics, checkpoint=checkpoint)
        if config["steps"] is not None and steps >= config["steps"]:
            break
    return history


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Read the snapshot, train, and return what the run saw: version, loss, rows per worker."""
    import tempfile
    import uuid

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from etl.ingest import read_samples

    snapshot = read_samples(args.output, version=args.version, min_quality=args.min_quality,
                            min_aesthetics=args.min_aesthetics, columns=[*FEATURE_COLUMNS, TARGET], frames="first")
    print(f"samples: {snapshot.path} at Delta version {snapshot.version} (latest {snapshot.latest_version}); "
          f"features {', '.join(f'{c} {snapshot.tensor_shapes[c]}' for c in FEATURE_COLUMNS)}")
    in_features = sum(math.prod(snapshot.tensor_shapes[c]) for c in FEATURE_COLUMNS)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"in_features": in_features, "lr": args.lr, "batch_size": args.batch_size,
                           "epochs": args.epochs, "steps": args.steps},
        scaling_config=ray.train.ScalingConfig(num_workers=args.workers, use_gpu=False,
                                               resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"train-example-{uuid.uuid4().hex[:8]}",
                                       storage_path=args.storage_path or tempfile.mkdtemp(prefix="train-example-"),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
        datasets={"train": snapshot.dataset},
    )
    result = trainer.fit()
    history = result.return_value
    if not sum(history[0]["rows_per_worker"]):
        raise ValueError(f"no rows of {snapshot.path} at version {snapshot.version} pass the filters "
                         f"(min_quality={args.min_quality}, min_aesthetics={args.min_aesthetics})")
    return {"version": snapshot.version, "loss": history[-1]["loss"], "steps": history[-1]["steps"],
            "epochs": history, "checkpoint": result.checkpoint.path}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import ray

    from jobs.curate import storage_settings

    if not ray.is_initialized():
        ray.init(address=args.ray_address, runtime_env={"env_vars": storage_settings()})
    try:
        summary = run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"cannot train: {exc}", file=sys.stderr)
        return 2
    for epoch in summary["epochs"]:
        print(f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, rows seen per worker {epoch['rows_per_worker']}")
    print(f"final loss {summary['loss']:.4f} after {summary['steps']} step(s); weights: {summary['checkpoint']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
