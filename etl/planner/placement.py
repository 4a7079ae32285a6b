"""Placement: what each stage gets on a cluster, or a refusal naming every problem and its fix.

Per node type it places vLLM engines (or the CPU captioner), encoder actors, CPU decode actors
and room for the read, prepare and write tasks; it checks every node's CPUs, host RAM and GPU
memory, the captioner's token budget and the read tasks. The plan's numbers are what the job
asks Ray for, so Ray's placement follows the plan. `plan()` runs its phases in order:
requests -> read tasks -> what one unit of each model needs -> models per node -> totals ->
decode actors in what is left -> whole-node checks.

Estimates are honest upper bounds from the checkpoints and the input index:
  engine GPU memory  = weights / TP + KV cache of one max_model_len request / TP + activations
  engine host memory = weights (loaded through host RAM) + vLLM's multimodal cache + runtime
Host memory of every other unit (and of a vLLM engine on a CPU node) comes from `memory`'s
measured models, declared with Ray's headroom.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from etl.planner.clusters import NodeType, accelerator_memory
from etl.planner import memory
from etl.planner.footprints import Footprints, ModelFootprint, request_tokens
from etl.planner.units import GIB, MIB, PlanError, gib
from etl.sources.read_tasks import ReadTasks

TASK_CPUS = 0.1             # read, prepare and write tasks: light Arrow work
BIG_READ_TASK_BYTES = GIB    # past this, a read task is a long unsplittable unit of work
ENGINE_RUNTIME_BYTES = 3 * GIB      # per vLLM engine process: CUDA context, torch, tokenizer, scheduler
GPU_ACTIVATION_BYTES = 2 * GIB      # vLLM's profiled activations and CUDA graphs beside weights and KV
KV_BLOCK_TOKENS = 128               # vLLM allocates KV in blocks: a request's last one is partly empty
ENCODER_ACTIVATION_BYTES = 1 * GIB  # one encoder batch on the GPU (not measured: no GPU here)


@dataclass(frozen=True)
class NodePlan:
    node_type: NodeType
    engines: int
    encoders: int
    decode_actors: int
    task_slots: int
    memory_bytes: int        # declared by everything placed on one node, task slots included
    cpus_used: float


@dataclass(frozen=True)
class Plan:
    backend: str
    engines: int
    engine_cpus: float
    engine_gpus: float
    engine_memory: int
    engine_gpu_memory: int   # per GPU, what the engine needs (vLLM is given utilisation x GPU memory)
    encoders: int
    encoder_cpus: float
    encoder_gpus: float
    encoder_memory: int
    decode_actors: int
    decode_cpus: float
    decode_memory: int
    writers: int             # write actors, one per encoder actor: they take its output
    write_memory: int
    task_cpus: float
    read_tasks: int
    shards: int
    shards_per_task: int     # the most in one task
    read_task_bytes: int     # the most input one task reads
    read_task_memory: int
    request_tokens: int
    kv_cache_bytes: Optional[int] = None  # the engine's KV cache on a CPU node (vLLM's kv_cache_memory_bytes)
    engine_cores: int = 0                 # cores a CPU-node engine binds its threads to (0: on a GPU)
    nodes: list[NodePlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def read_concurrency(self) -> int:
        """Read tasks at once: the task room the plan kept on every node, less the write actors
        that live in it. Left to Ray Data, the read takes every CPU the actor pools have not got
        yet, and on a cluster of several nodes the pools wait for the whole read to end."""
        slots = sum(node.task_slots * node.node_type.count for node in self.nodes)
        return max(1, min(self.read_tasks, slots - self.writers))

    def unit_counts(self) -> dict[str, int]:
        return {"engines": self.engines, "encoders": self.encoders, "decode_actors": self.decode_actors,
                "writers": self.writers, "read_tasks_at_once": self.read_concurrency}

    def describe(self) -> str:
        lines = ["per node type:",
                 f"  {'node type':<16}{'nodes':>6}{'CPUs':>7}{'GPUs':>10}{'engines':>9}{'encoders':>10}"
                 f"{'decode':>8}{'tasks':>7}{'CPUs used':>11}{'memory':>22}"]
        for node in self.nodes:
            kind = node.node_type
            gpus = f"{kind.gpus}x{kind.accelerator or '?'}" if kind.gpus else "-"
            lines.append(f"  {kind.name:<16}{kind.count:>6}{kind.cpus:>7g}{gpus:>10}{node.engines:>9}"
                         f"{node.encoders:>10}{node.decode_actors:>8}{node.task_slots:>7}{node.cpus_used:>11.1f}"
                         f"{gib(node.memory_bytes):>10} / {gib(kind.memory_bytes):<9}")
        lines += [
            "per unit (what each asks Ray for):",
            f"  captioner ({self.backend}): {self.engines} x [{self.engine_cpus:g} CPU, {self.engine_gpus:g} GPU, "
            f"{gib(self.engine_memory)} RAM" + (f", needs {gib(self.engine_gpu_memory)} per GPU" if self.engine_gpus else "")
            + (f", {gib(self.kv_cache_bytes)} of it KV cache" if self.kv_cache_bytes else "")
            + f"], requests of up to {self.request_tokens} tokens",
            f"  encoders: {self.encoders} x [{self.encoder_cpus:g} CPU, {self.encoder_gpus:g} GPU, "
            f"{gib(self.encoder_memory)} RAM]",
            f"  decode: {self.decode_actors} x [{self.decode_cpus:g} CPU, {gib(self.decode_memory)} RAM]",
            f"  write: {self.writers} x [{self.task_cpus:g} CPU, {gib(self.write_memory)} RAM] (actors, inside the "
            "task room)",
            f"  read: {self.shards} shards in {self.read_tasks} tasks, up to {self.shards_per_task} shard(s) and "
            f"{gib(self.read_task_bytes)} per task; {gib(self.read_task_memory)} RAM per task "
            f"[{self.task_cpus:g} CPU each], {self.read_concurrency} at once",
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class UnitNeeds:
    """What one unit of each kind asks for, before any is placed."""

    engine_cpus: float
    engine_memory: int
    engine_gpu_memory: int       # per GPU; 0 on CPU-only clusters
    encoder_cpus: float
    encoder_memory: int
    encoder_gpu_memory: int
    decode_memory: int
    read_task_memory: int
    write_memory: int
    kv_cache_bytes: Optional[int]  # a CPU-node engine's KV cache
    tokens: int                    # of the longest request

    @property
    def encoder_with_writer(self) -> int:
        """An encoder actor and the write actor that takes its output (one each), counted on
        the encoder's node."""
        return self.encoder_memory + self.write_memory


@dataclass(frozen=True)
class ModelTotals:
    engines: int
    encoders: int
    engine_gpus: float           # per engine
    encoder_gpus: float          # per encoder actor


class _NoGpuHoldsAnEngine(Exception):
    def __init__(self, reasons: list[str]):
        super().__init__(reasons)
        self.reasons = reasons


def plan(nodes: Sequence[NodeType], config, footprints: Footprints, read_tasks: ReadTasks) -> Plan:
    """Place the job's stages on `nodes`, or raise PlanError naming every problem and its fix.
    GPU nodes hold the engines and encoders; where none can hold an engine and the cluster has
    CPU nodes, they run on CPU nodes as on a cluster without GPUs (said in the plan's notes), so
    a GPU node that joins never turns a plan that fits into a refusal."""
    nodes = _usable_nodes(nodes, config)
    use_gpus = any(n.gpus >= config.models.captioner.tensor_parallel_size for n in nodes)
    try:
        return _plan(nodes, config, footprints, read_tasks, use_gpus)
    except _NoGpuHoldsAnEngine as refused:
        return _plan(nodes, config, footprints, read_tasks, False,
                     [f"no GPU node holds an engine, so the captioner and encoders run on CPU nodes: {reason}"
                      for reason in refused.reasons])


def _plan(nodes: list[NodeType], config, footprints: Footprints, read_tasks: ReadTasks, use_gpus: bool,
          gpu_notes: Sequence[str] = ()) -> Plan:
    problems: list[str] = []
    tokens = request_tokens(config, footprints.captioner)
    _check_request_length(config, tokens, problems)
    total_cpus = sum(n.cpus * n.count for n in nodes)
    _check_read_tasks(read_tasks, total_cpus, problems)
    if not use_gpus:  # the one captioner and encoder go on one node, whatever order the nodes come in
        nodes = _cpu_model_host_first(nodes, config, footprints, tokens, read_tasks)
    needs = unit_needs(config, footprints, tokens, nodes[0], use_gpus, read_tasks, problems)
    node_plans, sharing, misses = [], False, {"engines": [], "encoders": []}
    for node in nodes:
        placed, shares = _models_on_node(node, config, footprints.captioner, needs, use_gpus, problems, misses)
        node_plans.append(placed)
        sharing = sharing or shares
    if use_gpus and not any(p.engines for p in node_plans) and any(n.gpus == 0 for n in nodes):
        raise _NoGpuHoldsAnEngine(misses["engines"])
    for kind, reasons in misses.items():  # a node type without engines (encoders) matters only when none has any
        if use_gpus and not any(getattr(p, kind) for p in node_plans):
            problems.extend(reasons)
    if not use_gpus:  # CPU-only: one captioner and one encoder actor, on the host node
        node_plans[0] = replace(node_plans[0], engines=1, encoders=1)
    totals = _model_totals(node_plans, config, use_gpus, sharing, problems)
    placed, per_actor, decode_total = _place_decode(node_plans, config, needs, totals, total_cpus, problems)
    _check_whole_nodes(placed, nodes, config, problems)
    if problems:
        raise PlanError("the config does not fit the cluster:\n" + "\n".join(f"  - {p}" for p in problems))
    return Plan(
        backend=config.models.captioner.backend, engines=totals.engines, engine_cpus=needs.engine_cpus,
        engine_gpus=totals.engine_gpus, engine_memory=needs.engine_memory, engine_gpu_memory=needs.engine_gpu_memory,
        encoders=totals.encoders, encoder_cpus=needs.encoder_cpus, encoder_gpus=totals.encoder_gpus,
        encoder_memory=needs.encoder_memory, decode_actors=decode_total, decode_cpus=per_actor,
        decode_memory=needs.decode_memory, writers=max(1, totals.encoders), write_memory=needs.write_memory,
        task_cpus=TASK_CPUS,
        read_tasks=len(read_tasks), shards=len(read_tasks.shards), shards_per_task=read_tasks.most_shards_per_task,
        read_task_bytes=read_tasks.largest_task_bytes, read_task_memory=needs.read_task_memory, request_tokens=tokens,
        kv_cache_bytes=needs.kv_cache_bytes, engine_cores=int(needs.engine_cpus) if needs.kv_cache_bytes else 0,
        nodes=placed, notes=[*gpu_notes, *_notes(config, footprints.captioner, needs, nodes, use_gpus),
                             *misses["engines"], *misses["encoders"]])


def _usable_nodes(nodes: Sequence[NodeType], config) -> list[NodeType]:
    nodes = [n for n in nodes if n.count > 0 and n.cpus > 0]
    if not nodes:
        raise PlanError("the cluster has no node with CPUs for the job's tasks (a head with num-cpus 0 "
                        "needs worker nodes)")
    settings = config.models.captioner
    tp = settings.tensor_parallel_size
    if settings.backend == "vllm" and tp > 1 and not any(n.gpus >= tp for n in nodes):
        raise PlanError(f"models.captioner.tensor_parallel_size={tp} needs GPU nodes with {tp} GPUs; this cluster has "
                        "none: set it to 1 (vLLM on a CPU node) or add a GPU worker group")
    return nodes


def _check_request_length(config, tokens: int, problems: list[str]) -> None:
    settings = config.models.captioner
    if tokens > settings.max_model_len:
        problems.append(f"a request can reach {tokens} tokens ({config.frames.max_frames} frames at "
                        f"{config.frames.max_pixels} pixels, prompt, {settings.new_tokens} new tokens) but "
                        f"models.captioner.max_model_len is {settings.max_model_len}: raise it to >= {tokens}, "
                        "or lower frames.max_frames / frames.max_pixels")


def _check_read_tasks(read_tasks: ReadTasks, total_cpus: float, problems: list[str]) -> None:
    """Few tasks are only a problem when they are big: a handful of small tasks read quickly."""
    shards, count, biggest = len(read_tasks.shards), len(read_tasks), read_tasks.largest_task_bytes
    if count and biggest > BIG_READ_TASK_BYTES and count < min(shards, total_cpus):
        fix = max(1, math.floor(shards / total_cpus))
        problems.append(
            f"{shards} shards in only {count} read tasks ({gib(biggest)} per task) on "
            f"{total_cpus:g} CPUs: Ray Data never splits a launched read task, so reads cannot spread over the "
            f"cluster and each task declares {gib(biggest)} to the object store; set "
            f"read.shards_per_task <= {fix} and read.max_task_mb <= 1024 for >= {min(shards, int(total_cpus))} tasks")


def engine_gpu_need(config, footprint: ModelFootprint, tensor_parallel: int) -> int:
    """Per GPU: weights and KV of one max_model_len request, split over the TP ranks, and activations."""
    settings = config.models.captioner
    return (footprint.weights_bytes + footprint.kv_bytes_per_token * settings.max_model_len) // tensor_parallel \
        + GPU_ACTIVATION_BYTES


def unit_needs(config, footprints: Footprints, tokens: int, first_node: NodeType, use_gpus: bool,
               read_tasks: ReadTasks, problems: list[str]) -> UnitNeeds:
    settings, wanted = config.models.captioner, config.resources
    cap, enc = footprints.captioner, footprints.encoders
    data = {"encoder_memory": memory.declared(memory.encoder_peak(config, enc, on_gpu=use_gpus)),
            "decode_memory": (wanted.decode.memory_mb * MIB if wanted.decode.memory_mb
                              else memory.declared(memory.decode_peak(config))),
            "read_task_memory": memory.declared(memory.read_task_peak(read_tasks.largest_shard_bytes)),
            "write_memory": memory.declared(memory.write_peak(config, enc)), "tokens": tokens}
    if use_gpus:
        return UnitNeeds(
            engine_cpus=wanted.captioner.cpus_per_engine or 4.0,
            engine_memory=cap.weights_bytes + int(settings.mm_cache_gb * GIB) + ENGINE_RUNTIME_BYTES,
            engine_gpu_memory=engine_gpu_need(config, cap, settings.tensor_parallel_size),
            encoder_cpus=wanted.encoder.cpus_per_actor or 1.0,
            encoder_gpu_memory=enc.weights_bytes + ENCODER_ACTIVATION_BYTES, kv_cache_bytes=None, **data)
    engine_cpus, engine_memory, kv_cache_bytes = cpu_engine_needs(config, cap, tokens, first_node, problems)
    return UnitNeeds(engine_cpus=engine_cpus, engine_memory=engine_memory, engine_gpu_memory=0,
                     encoder_cpus=wanted.encoder.cpus_per_actor or 0.4, encoder_gpu_memory=0,
                     kv_cache_bytes=kv_cache_bytes, **data)


def task_room(node: NodeType, read_task_memory: int) -> tuple[float, int]:
    """(CPUs a node keeps for read, prepare and write tasks, the read tasks that fit in them and
    in its RAM: a node short of RAM runs fewer, or none, rather than refusing the plan)."""
    room = max(0.5, round(0.05 * node.cpus, 1))
    return room, min(max(1, int(room / TASK_CPUS)), node.memory_bytes // max(read_task_memory, 1))


def _cpu_model_host_first(nodes: list[NodeType], config, footprints: Footprints, tokens: int,
                          read_tasks: ReadTasks) -> list[NodeType]:
    """The nodes with the one that hosts a CPU-only cluster's captioner and encoder first, as a
    type of its own (count 1): the node where both fit best beside its task room (RAM first,
    then CPUs), the one with the most CPUs (then RAM, then name) among equals. The choice does
    not depend on the order the cluster lists its nodes, and a node added can only offer a
    better host: a plan that fits keeps fitting as nodes join."""
    def misfit(node: NodeType) -> tuple[bool, bool]:
        """(the models' RAM does not fit beside the task room, their CPUs do not)."""
        needs = unit_needs(config, footprints, tokens, node, False, read_tasks, [])
        room, slots = task_room(node, needs.read_task_memory)
        memory = needs.engine_memory + needs.encoder_with_writer + slots * needs.read_task_memory
        return memory > node.memory_bytes, needs.engine_cpus + needs.encoder_cpus + room > node.cpus

    host = min(nodes, key=lambda n: (*misfit(n), -n.cpus, -n.memory_bytes, n.name))
    rest = [n for n in nodes if n is not host]
    if host.count > 1:
        rest.insert(0, replace(host, count=host.count - 1))
    return [replace(host, count=1), *rest]


def _models_on_node(node: NodeType, config, footprint: ModelFootprint, needs: UnitNeeds, use_gpus: bool,
                    problems: list[str], misses: dict[str, list[str]]) -> tuple[NodePlan, bool]:
    """(the node with its task room, engines and encoders; whether its encoders share the engines' GPUs).
    Why a GPU node holds no engine or no encoder goes to `misses`: other nodes may hold them."""
    room, slots = task_room(node, needs.read_task_memory)
    # per slot: a read task fused with prepare (the writers are counted beside their encoders)
    reserved_memory = slots * needs.read_task_memory
    tp = config.models.captioner.tensor_parallel_size
    engines = encoders = 0
    sharing = False
    if use_gpus and node.gpus >= tp:
        engines = _engines_on_gpu_node(node, config, footprint, needs, room, reserved_memory, problems,
                                       misses["engines"])
        memory_left = node.memory_bytes - reserved_memory - engines * needs.engine_memory
        encoders, sharing = _encoders_beside_engines(node, config, needs, engines, memory_left, misses["encoders"])
    return NodePlan(node, engines, encoders, 0, slots, reserved_memory, room), sharing


def _engines_on_gpu_node(node: NodeType, config, footprint: ModelFootprint, needs: UnitNeeds, room: float,
                         reserved_memory: int, problems: list[str], misses: list[str]) -> int:
    settings, wanted = config.models.captioner, config.resources
    tp = settings.tensor_parallel_size
    gpu_memory = accelerator_memory(node.accelerator, wanted.gpu_memory_gb)
    given = int(settings.gpu_memory_utilization * gpu_memory)
    if needs.engine_gpu_memory > given:
        need_tp = next((t for t in (2, 4, 8) if t > tp and engine_gpu_need(config, footprint, t) <= given), None)
        (problems if wanted.captioner.engines_per_node else misses).append(
            f"{node.name}: one engine needs {gib(needs.engine_gpu_memory)} per GPU (weights, KV for "
            f"max_model_len={settings.max_model_len}, activations) but gets {settings.gpu_memory_utilization} "
            f"x {gib(gpu_memory)} = {gib(given)}: "
            + (f"set models.captioner.tensor_parallel_size={need_tp}" if need_tp and need_tp <= node.gpus
               else "use GPUs with more memory") + " or lower max_model_len")
        if not wanted.captioner.engines_per_node:
            return 0
    limits = {"GPUs": node.gpus // tp, "RAM": int((node.memory_bytes - reserved_memory) // max(needs.engine_memory, 1)),
              "CPUs": int((node.cpus - room) // needs.engine_cpus)}
    fit = max(0, min(limits.values()))
    while fit and not _engines_with_sharers_fit(node, needs, fit, tp, reserved_memory):
        fit -= 1
    engines = wanted.captioner.engines_per_node or fit
    if engines > fit:
        limit = min(limits, key=limits.get)
        problems.append(
            f"{node.name}: resources.captioner.engines_per_node={engines} does not fit; its {limit} fit "
            f"{limits[limit]} (each engine: {tp} GPU, {needs.engine_cpus:g} CPUs, {gib(needs.engine_memory)} RAM; the "
            f"node: {node.gpus} GPUs, {node.cpus:g} CPUs, {gib(node.memory_bytes)} RAM for tasks and "
            f"actors): set engines_per_node to {max(fit, 1)} or use a bigger node")
        engines = fit
    if fit == 0 and not wanted.captioner.engines_per_node:
        misses.append(f"{node.name}: not one engine fits (GPUs {limits['GPUs']}, RAM {limits['RAM']}, CPUs "
                        f"{limits['CPUs']}; each engine needs {gib(needs.engine_memory)} RAM and "
                        f"{needs.engine_cpus:g} CPUs)")
    return engines


def _engines_with_sharers_fit(node: NodeType, needs: UnitNeeds, engines: int, tp: int, reserved_memory: int) -> bool:
    """Whether `engines` fit the node's RAM with the encoders (and their writers) that go with
    them: one sharing each engine's GPU when no GPU is spare, else one on a spare GPU. A node
    whose engines leave no room for an encoder would need encoders from elsewhere."""
    spare = node.gpus - engines * tp
    encoders = 1 if spare >= 1 else engines if tp == 1 else 0
    return engines * needs.engine_memory + encoders * needs.encoder_with_writer <= node.memory_bytes - reserved_memory


def _encoders_beside_engines(node: NodeType, config, needs: UnitNeeds, engines: int, memory_left: int,
                             misses: list[str]) -> tuple[int, bool]:
    """(encoder actors on the node, whether they share the engines' GPUs): spare GPUs each get
    one, as far as the RAM the engines leave holds them; with none spare, one shares each
    single-GPU engine's GPU."""
    settings = config.models.captioner
    tp = settings.tensor_parallel_size
    spare_gpus = node.gpus - engines * tp
    if spare_gpus >= 1:
        encoders = min(spare_gpus, max(0, memory_left // needs.encoder_with_writer))
        if not encoders:
            misses.append(f"{node.name}: no encoder fits beside its engines ({gib(max(memory_left, 0))} RAM left, "
                          f"each encoder with its writer needs {gib(needs.encoder_with_writer)})")
        return encoders, False
    if tp == 1 and engines:
        gpu_memory = accelerator_memory(node.accelerator, config.resources.gpu_memory_gb)
        if needs.encoder_gpu_memory > gpu_memory - int(settings.gpu_memory_utilization * gpu_memory):
            misses.append(
                f"{node.name}: the encoders need {gib(needs.encoder_gpu_memory)} beside each engine but "
                f"{1 - settings.gpu_memory_utilization:.2f} x {gib(gpu_memory)} is left: lower "
                f"models.captioner.gpu_memory_utilization to <= "
                f"{math.floor(100 * (1 - needs.encoder_gpu_memory / gpu_memory)) / 100}")
            return 0, False
        return engines, True
    if engines:
        misses.append(f"{node.name}: {engines} engine(s) of tensor_parallel_size={tp} take all {node.gpus} "
                        f"GPUs and leave none for the encoders: set resources.captioner.engines_per_node="
                        f"{engines - 1}" if engines > 1 else "use nodes with a spare GPU")
    return 0, False


def _model_totals(node_plans: list[NodePlan], config, use_gpus: bool, sharing: bool,
                  problems: list[str]) -> ModelTotals:
    wanted = config.resources
    engines_possible = sum(p.engines * p.node_type.count for p in node_plans)
    engines = engines_possible
    if wanted.captioner.engines is not None:
        if wanted.captioner.engines > engines_possible:
            problems.append(f"resources.captioner.engines={wanted.captioner.engines} but the cluster holds "
                            f"{engines_possible}: lower it, or add GPU nodes")
        engines = min(wanted.captioner.engines, engines_possible)
    encoders_possible = sum(p.encoders * p.node_type.count for p in node_plans)
    if wanted.encoder.actors and wanted.encoder.actors > encoders_possible:
        problems.append(f"resources.encoder.actors={wanted.encoder.actors} but the plan has GPU room for "
                        f"{encoders_possible}: lower it")
    encoders = min(wanted.encoder.actors or encoders_possible, encoders_possible)
    if sharing:
        return ModelTotals(engines, encoders, 1.0 - wanted.encoder.gpu_share, wanted.encoder.gpu_share)
    spare = use_gpus and any(p.encoders and p.engines * config.models.captioner.tensor_parallel_size < p.node_type.gpus
                             for p in node_plans)
    return ModelTotals(engines, encoders, float(config.models.captioner.tensor_parallel_size) if use_gpus else 0.0,
                       1.0 if spare else 0.0)


def _place_decode(node_plans: list[NodePlan], config, needs: UnitNeeds, totals: ModelTotals, total_cpus: float,
                  problems: list[str]) -> tuple[list[NodePlan], float, int]:
    """(every node with its decode actors, CPUs per decode actor, decode actors in all): they
    fill what the models and tasks leave, node by node."""
    wanted = config.resources.decode
    free = []
    for p in node_plans:
        used_cpus = p.cpus_used + p.engines * needs.engine_cpus + p.encoders * needs.encoder_cpus
        used_memory = p.memory_bytes + p.engines * needs.engine_memory + p.encoders * needs.encoder_with_writer
        free.append((p, p.node_type.cpus - used_cpus, p.node_type.memory_bytes - used_memory))
    per_actor = wanted.cpus_per_actor
    if per_actor is None:
        # a whole CPU where some node has one free, else the most any one node has: a node that
        # joins can only raise it, and an actor of that size fits somewhere either way
        roomy = [f for p, f, m in free if m >= needs.decode_memory]
        most = max(roomy, default=0.0)
        per_actor = 1.0 if most >= 1 else max(math.floor(most * 100) / 100, 0.1)
    fits = [(p, max(0, min(int(round(f / per_actor, 6)), int(m // needs.decode_memory)))) for p, f, m in free]
    possible = sum(n * p.node_type.count for p, n in fits)
    total = possible if wanted.actors is None else wanted.actors
    if total > possible:
        engines_asked = config.resources.captioner.engines or totals.engines
        demand = (total * per_actor + engines_asked * needs.engine_cpus + totals.encoders * needs.encoder_cpus
                  + sum(p.cpus_used * p.node_type.count for p in node_plans))
        problems.append(
            f"resources.decode.actors={total} x {per_actor:g} CPU, with {engines_asked} engine(s) x "
            f"{needs.engine_cpus:g} CPUs, {totals.encoders} encoder(s) x {needs.encoder_cpus:g} CPU and room for "
            f"tasks, needs {demand:g} CPUs (and {gib(total * needs.decode_memory)} of RAM for the decode actors); "
            f"the cluster has {total_cpus:g} CPUs: set resources.decode.actors <= {possible}, or leave it unset")
    if total < 1:
        problems.append("no CPU is left for a decode actor after the models and tasks: lower "
                        "resources.captioner.cpus_per_engine / resources.encoder.cpus_per_actor, or add CPUs")
    placed, remaining = [], total
    for p, fit in fits:
        here = min(fit, math.ceil(remaining / p.node_type.count)) if remaining > 0 else 0
        remaining -= here * p.node_type.count
        placed.append(replace(p, decode_actors=here,
                              cpus_used=round(p.cpus_used + p.engines * needs.engine_cpus
                                              + p.encoders * needs.encoder_cpus + here * per_actor, 2),
                              memory_bytes=p.memory_bytes + p.engines * needs.engine_memory
                              + p.encoders * needs.encoder_with_writer + here * needs.decode_memory))
    return placed, per_actor, total


def _check_whole_nodes(placed: list[NodePlan], nodes: list[NodeType], config, problems: list[str]) -> None:
    for p in placed:
        if p.memory_bytes > p.node_type.memory_bytes:
            problems.append(f"{p.node_type.name}: what is placed declares {gib(p.memory_bytes)} of RAM, the node "
                            f"has {gib(p.node_type.memory_bytes)} for tasks and actors: use fewer engines or "
                            "decode actors per node, or a node with more memory")
    budget = config.ray.object_store_budget_mb
    store = sum(n.object_store_bytes * n.count for n in nodes)
    if budget and store and budget * MIB > store:
        problems.append(f"ray.object_store_budget_mb={budget} exceeds the cluster's object store "
                        f"({store // MIB} MiB): lower it")


def _notes(config, footprint: ModelFootprint, needs: UnitNeeds, nodes: list[NodeType], use_gpus: bool) -> list[str]:
    settings = config.models.captioner
    tp, tokens = settings.tensor_parallel_size, needs.tokens
    notes = []
    if needs.kv_cache_bytes:
        notes.append(f"KV cache {gib(needs.kv_cache_bytes)} per engine: {settings.max_num_seqs} requests of {tokens} "
                     f"tokens (models.captioner.max_num_seqs), on the engine's {int(needs.engine_cpus)} core(s)")
    if use_gpus and footprint.kv_bytes_per_token:
        gpu_node = next(n for n in nodes if n.gpus >= tp)
        kv_room = int(settings.gpu_memory_utilization
                      * accelerator_memory(gpu_node.accelerator, config.resources.gpu_memory_gb)) * tp \
            - footprint.weights_bytes - GPU_ACTIVATION_BYTES * tp
        notes.append(f"KV cache holds ~{kv_room // (footprint.kv_bytes_per_token * tokens)} requests of {tokens} "
                     f"tokens per engine (models.captioner.max_num_seqs={settings.max_num_seqs})")
    return notes


def cpu_kv_cache_bytes(settings, footprint: ModelFootprint, tokens: int) -> int:
    """KV cache for `max_num_seqs` requests of `tokens` tokens (vLLM also needs one request of
    max_model_len), in whole blocks per request."""
    per_request = -(-tokens // KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    return footprint.kv_bytes_per_token * max(settings.max_model_len + KV_BLOCK_TOKENS,
                                              settings.max_num_seqs * per_request)


def cpu_engine_needs(config, footprint: ModelFootprint, tokens: int, node: NodeType,
                     problems: list[str]) -> tuple[float, int, Optional[int]]:
    """(CPUs, RAM, KV cache bytes) of the captioner on a CPU node. vLLM binds its threads to whole
    cores (None: half the node's); the transformers backend shares what it is given."""
    settings, asked = config.models.captioner, config.resources.captioner.cpus_per_engine
    if settings.backend != "vllm":
        return asked or 0.4, memory.declared(memory.transformers_captioner_peak(config, footprint, tokens)), None
    cpus = asked or max(1.0, float(node.cpus // 2))
    if cpus < 1 or cpus != int(cpus):
        problems.append(f"resources.captioner.cpus_per_engine={cpus:g}: a vLLM engine on a CPU node binds its "
                        "threads to whole cores; set a whole number >= 1")
    kv = cpu_kv_cache_bytes(settings, footprint, tokens)
    return cpus, memory.declared(memory.vllm_cpu_peak(config, footprint, kv)), kv
