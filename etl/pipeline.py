"""The curation job's Ray Data plan, built from its stages, and the run around it.

    read_mds -> Prepare -> DecodeStage (CPU actors) -> CaptionStage (VLM actor)
      -> EncodeStage (embedder + VAE actor) -> WriteStage (bucket files) ==> driver commits

Each stage (`etl/stages/`) declares what it reads and adds and what it asks Ray for; this module
only chains them. No repartition or other all-to-all: the driver consumes the write stage's
file messages as they stream out and commits in rounds (`etl.committer`), so the first rows are
committed while later shards are still being read. Rows carry `error` from the read onwards; a
stage skips rows that already have one, and the write stage routes them to `quarantine`.
"""

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pyarrow as pa

from etl import storage
from etl.config import JobConfig
from etl.stages import rows
from etl.stages.caption import CaptionStage
from etl.stages.decode import DecodeStage
from etl.stages.encode import EncodeStage
from etl.stages.prepare import Prepare
from etl.stages.stage import RunContext, Step, check_contract
from etl.stages.write import WriteStage

logger = logging.getLogger(__name__)

# The plan, in data-flow order. Adding a stage: a module under etl/stages/ and one entry here.
STAGES = (Prepare, DecodeStage, CaptionStage, EncodeStage, WriteStage)


def table_schemas(config: JobConfig) -> dict[str, pa.Schema]:
    """The run's table schemas; tensor shapes come from the checkpoints' configs (no weights)."""
    from etl.models.encoders import embedding_dim, latent_shape
    from etl.models.text_encoders import text_states_shape
    from schemas.tables import quarantine_schema, runs_schema, samples_schema

    crop, models = config.frames.crop_size, config.models
    text = models.text_encoder
    states = (text_states_shape(text.model or models.embedder.model, text.kind, text.max_length)
              if text.kind != "none" else None)
    return {"samples": samples_schema(embedding_dim(models.embedder.model),
                                      latent_shape(models.vae.model, crop, crop),
                                      text_tower=models.embedder.text_tower, text_states=states),
            "quarantine": quarantine_schema(), "runs": runs_schema()}


def retry_bounds(config: JobConfig) -> tuple[dict, dict]:
    """(remote args for task stages, for actor stages) bounding what a dying worker costs.

    A task is retried `ray.max_retries` times. An actor restarts `ray.max_retries` times, and its
    batches retry without bound: each attempt made while the actor restarts elsewhere (its node
    lost) fails at once as "actor unavailable", so any bound on them ran out long before the
    actor was back. A batch that kills its actor every time still fails the job, once the
    actor's restarts are spent."""
    retries = config.ray.max_retries
    return {"max_retries": retries}, {"max_restarts": retries, "max_task_retries": -1}


def _absolute_path(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def absolute_model_paths(config: JobConfig) -> JobConfig:
    """Workers do not share the driver's working directory: ship absolute local paths."""
    models = config.models
    return config.model_copy(update={"models": models.model_copy(update={
        name: getattr(models, name).model_copy(update={"model": _absolute_path(getattr(models, name).model)})
        for name in ("captioner", "embedder", "vae", "text_encoder") if getattr(models, name).model})})


def stage_dataset(dataset, step: Step, retries: tuple[dict, dict], strategies: Optional[dict] = None):
    """`dataset` with `step`'s stage applied as its resources say: Ray tasks (fused into the
    read when their remote args match) or an actor pool, placed as it asks (`strategies`: the
    scheduling strategy of each reserved pool, from etl.reservations)."""
    from ray.data import ActorPoolStrategy

    resources = step.resources
    args = {"batch_format": "pyarrow", "num_cpus": resources.cpus}
    args.update({key: value for key, value in (("num_gpus", resources.gpus), ("memory", resources.memory),
                                               ("batch_size", resources.batch_rows),
                                               ("concurrency", resources.max_tasks)) if value})
    if resources.placement == "reserved" and step.name in (strategies or {}):
        args["scheduling_strategy"] = strategies[step.name]
    if resources.actors is None:
        return dataset.map_batches(step.stage(*step.arguments), **args, **retries[0])
    concurrency = ({"max_concurrent_calls_per_actor": resources.concurrent_batches, "enable_true_multi_threading": True}
                   if resources.concurrent_batches > 1 else {})
    return dataset.map_batches(step.stage, fn_constructor_args=step.arguments,
                               compute=ActorPoolStrategy(size=resources.actors, **concurrency), **args, **retries[1])


@dataclass
class RunSummary:
    run_id: str
    output: str
    mode: str = "incremental"            # incremental | replace (backfill) | nothing to do
    shards: list[int] = field(default_factory=list)            # what this run processed
    skipped_shards: list[int] = field(default_factory=list)    # finished earlier (--resume)
    rows: dict[str, int] = field(default_factory=dict)
    commits: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    per_shard: dict[int, tuple[int, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    # the config's filters: {"rules": {name: what it asks}, "rejected": {name: samples}, "filtered": samples}
    filters: dict = field(default_factory=dict)
    seconds: float = 0.0
    first_commit_seconds: Optional[float] = None
    last_read_seconds: float = 0.0       # when the last row left a read task
    shards_read_after_first_commit: int = 0
    commit_times: list[float] = field(default_factory=list)   # unix seconds of each commit round
    stage_stats: str = ""
    plan: str = ""                       # what each stage got on this cluster (planner.Plan.describe)
    planned: dict = field(default_factory=dict)  # the plan's unit counts, to set beside `placement`
    started_at: float = 0.0              # unix seconds
    timeline: dict[str, dict[int, int]] = field(default_factory=dict)  # stage -> unix second -> rows done
    previews: list[dict] = field(default_factory=list)        # the report's contact sheet
    engine: dict = field(default_factory=dict)               # captioner figures (captioner.engine_summary)
    error: Optional[str] = None          # why the run failed, when it did
    operator_memory: list[dict] = field(default_factory=list)  # declared vs used, per operator
    placement: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> "<node>/<worker>" -> rows
    cluster: dict = field(default_factory=dict)  # nodes lost and joined, work retried (cluster_watch)
    maintenance: list[dict] = field(default_factory=list)     # per table (maintenance.TableHealth)
    maintenance_error: Optional[str] = None  # the run's rows are committed; `jobs.maintain` redoes it
    dedup: dict = field(default_factory=dict)  # the dedup pass after the run (dedup.after_run): DedupSummary
    dedup_error: Optional[str] = None        # the run's rows are committed; `jobs.dedup` redoes it
    report: Optional[str] = None         # URI of report.html


def _summarize(summary: RunSummary, progress, started: float, started_wall: float) -> None:
    from etl.models.captioner import engine_summary

    summary.rows, summary.commits, summary.files = progress.rows, progress.commits, progress.files
    summary.reasons = progress.reasons
    summary.filters = {"rules": summary.filters.get("rules", {}), "rejected": dict(progress.filters),
                       "filtered": progress.filtered}
    summary.per_shard = {s: tuple(v) for s, v in progress.per_shard.items()}
    summary.seconds = time.perf_counter() - started
    if progress.read_times:
        summary.last_read_seconds = max(progress.read_times.values()) - started_wall
    summary.commit_times = list(progress.commit_times)
    summary.timeline = {stage: dict(seconds) for stage, seconds in progress.timeline.items()}
    summary.placement = {stage: dict(places) for stage, places in progress.placement.items()}
    summary.previews = list(progress.previews)
    summary.engine = engine_summary(progress.engine)
    if progress.commit_times:
        summary.first_commit_seconds = progress.commit_times[0] - started_wall
        summary.shards_read_after_first_commit = sum(t > progress.commit_times[0]
                                                     for t in progress.read_times.values())


def _ensure_tiny_models(config: JobConfig) -> None:
    from etl.models.tiny import ensure_tiny_models

    # the tiny checkpoints live where the config points: models/tiny/<name>
    models = config.models
    for root in {str(Path(m.model).parent) for m in (models.captioner, models.embedder, models.vae,
                                                      models.text_encoder) if m.model}:
        ensure_tiny_models(root)


def run(config: JobConfig, resume: bool = False) -> RunSummary:
    """Run the curation job described by `config` on the current Ray cluster. With `resume`,
    shards the ledger records as finished (for the same input) are skipped."""
    from etl import planner
    from etl.cluster_watch import ClusterWatch
    from etl.dedup.run import dedup_after_run
    from etl.sinks.maintenance import maintain_after_run
    from etl.commit_mode import shard_work
    from etl.committer import remove_unfinished_rows
    from etl.job_input import job_source
    from etl.mds import load_index
    from etl.operator_memory import operator_memory
    from etl.planner.live import plan_when_ready
    from etl.reservations import reserved
    from etl.stages.previews import CONTACT_SHEET_SAMPLES, preview_rows

    started, started_wall = time.perf_counter(), time.time()
    config = absolute_model_paths(config)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if config.models.build_tiny_if_missing:
        _ensure_tiny_models(config)
    footprints = planner.footprints_of(config)  # a model path with no checkpoint is refused by name here
    storage.check_output_root(config.output)
    index = load_index(*storage.resolve(config.input))  # the one read of index.json
    schemas = table_schemas(config)
    work = shard_work(config, len(index), resume)
    if not work.todo:
        return RunSummary(run_id, config.output, mode="nothing to do", skipped_shards=work.skipped,
                          seconds=time.perf_counter() - started)
    source, image_column = job_source(config, index, work.todo)
    watch = ClusterWatch()
    # The same plan `python -m jobs.plan` prints, against the live cluster once it has the nodes
    # the job waits for: refused before any work
    plan = plan_when_ready(config, footprints, source.read_tasks)
    if resume and config.sink.format == "delta":
        remove_unfinished_rows(config.output, schemas, run_id, work.todo)
    context = RunContext(config, plan, run_id, image_column, dict(zip(source.schema.names, source.schema.types)),
                         schemas, preview_rows(work.todo, {s: index[s].samples for s in work.todo},
                                               CONTACT_SHEET_SAMPLES))
    summary = RunSummary(run_id, config.output, mode=work.mode, shards=work.todo, skipped_shards=work.skipped,
                         plan=plan.describe(), planned=plan.unit_counts(), started_at=started_wall,
                         filters={"rules": config.filters.rules()})
    committer = _committer(config, schemas, run_id, {s: index[s].samples for s in work.todo}, work.mode)
    try:
        steps = [stage.step(context) for stage in STAGES]
        with reserved(steps, run_id, config.ray.wait_for_nodes_s) as strategies:
            dataset = build_dataset(source, context, steps, strategies)
            _commit_as_written(dataset, committer)
        summary.stage_stats = dataset.stats()
        summary.operator_memory = [memory.as_dict() for memory in operator_memory(
            dataset, {"ReadMDS": plan.read_task_memory, **{step.name: step.resources.memory for step in steps}})]
        summary.maintenance, summary.maintenance_error = maintain_after_run(config)
        summary.dedup, summary.dedup_error = dedup_after_run(config)  # etl.dedup.run
    except BaseException as exc:
        summary.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary.cluster = watch.events().as_dict()
        _summarize(summary, committer.progress, started, started_wall)
        _write_report(summary, config)
    return summary


def build_dataset(source, context: RunContext, steps: list[Step], strategies: Optional[dict] = None):
    """The whole Ray Data plan: the read, then every stage (`steps`, in STAGES order), their
    contract checked first; `strategies` places the reserved pools (etl.reservations)."""
    from etl.sources.read import read_mds

    check_contract(steps, context.input_types)
    plan, retries = context.plan, retry_bounds(context.config)
    # Ray 2.60 names every remote option the job sets except the retry bounds (retry_bounds);
    # those still go through ray_remote_args, deprecated for 2.64 with no named replacement yet
    dataset = read_mds(source, num_cpus=plan.task_cpus, memory=plan.read_task_memory,
                       concurrency=plan.read_concurrency, ray_remote_args=retries[0])
    for step in steps:
        dataset = stage_dataset(dataset, step, retries, strategies)
    return configure_execution(dataset, context.config)


def configure_execution(dataset, config: JobConfig):
    """The dataset's own context (it copied the global one when it was built): the object-store
    budget, and a stage's error raised as itself, so the job can say which file failed."""
    budget = config.ray.object_store_budget_mb
    if budget:
        options = dataset.context.execution_options
        options.resource_limits = options.resource_limits.copy(object_store_memory=budget << 20)
    # without it Ray Data raises UserCodeException, whose cause does not cross to the driver
    dataset.context.raise_original_map_exception = True
    return dataset


def _committer(config: JobConfig, schemas: dict, run_id: str, expected: dict[int, int], mode: str):
    from etl.committer import CommitCadence, RunCommitter
    from etl.ingest import DROP_DUPLICATES_KEY
    from etl.sinks.maintenance import table_properties

    sink = config.sink
    return RunCommitter(config.output, schemas, run_id, config.model_dump_json(), expected, format=sink.format,
                        mode=mode, max_error_fraction=config.max_error_fraction,
                        table_properties=table_properties(sink.maintenance),
                        commit_metadata={DROP_DUPLICATES_KEY: config.filters.drop_duplicates},
                        cadence=CommitCadence(sink.commit_every_shards, sink.commit_every_minutes,
                                              sink.commit_every_files))


def _commit_as_written(dataset, committer) -> None:
    """Hand every write-stage message to the committer as it streams out, then finish."""
    # No prefetch: with it, Ray hands over each write output only once the next one exists,
    # so a run whose read outlasts the early writes held its first commit until after the read
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
        for kind, table, payload in zip(*(batch.column(name).to_pylist() for name in rows.MESSAGE_SCHEMA.names)):
            if kind == rows.COUNTS:
                committer.receive_counts(json.loads(payload))
            else:
                committer.receive_file(table, json.loads(payload))
    committer.finish()


def _write_report(summary: RunSummary, config: JobConfig) -> None:
    """The report of a failed run matters most: writing it never hides the run's own error."""
    from etl.report import write_report

    try:
        summary.report = write_report(summary, config)
    except Exception:  # noqa: BLE001 - a report is not worth failing (or masking) a run for
        logger.exception("could not write the run report under %s", config.output)
