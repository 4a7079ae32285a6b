"""Right-sizing: what each stage gets on a cluster, and a refusal when a config cannot fit.

The plan places, per node type: vLLM engines (or the CPU captioner), encoder actors, CPU
decode actors and room for the read/prepare/write tasks; and it groups shards into read
tasks. It checks every node's CPUs, host RAM and GPU memory, and the captioner's token budget,
and names the fix for each problem. `python -m jobs.plan` prints it for a cluster file; the
curation job plans against the live cluster at start with the same code, and the plan's
numbers are what the job asks Ray for, so Ray's placement follows the plan.

Estimates are honest upper bounds from the checkpoints (weight files, model configs) and the
input index (shard sizes), never from names or guesses:
  engine GPU memory  = weights / TP + KV cache of one max_model_len request / TP + activations
  engine host memory = weights (loaded through host RAM) + vLLM's multimodal cache + runtime
  read task memory   = the task's largest shard (the reader holds one shard) + its output blocks
"""

import json
import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence

GIB = 1 << 30
MIB = 1 << 20

# Ray's accelerator type names (ray.util.accelerators) -> memory per GPU.
ACCELERATOR_MEMORY_GIB = {
    "T4": 16, "V100": 16, "A10G": 24, "L4": 24, "L40S": 48, "A100-40G": 40, "A100-80G": 80, "A100": 80,
    "H100": 80, "H20": 96, "H200": 141, "B200": 180, "GB200": 186, "RTX-PRO-6000": 96,
}

TASK_CPUS = 0.1             # read, prepare and write tasks: light Arrow work
READ_BLOCK_BYTES = 16 * MIB  # encoded bytes per read block: small enough to pipeline
BIG_READ_TASK_BYTES = GIB    # past this, a read task is a long unsplittable unit of work
ENGINE_RUNTIME_BYTES = 3 * GIB      # per vLLM engine process: CUDA context, torch, tokenizer, scheduler
GPU_ACTIVATION_BYTES = 2 * GIB      # vLLM's profiled activations and CUDA graphs beside weights and KV
CPU_MODEL_HEADROOM_BYTES = 1 * GIB  # interpreter, torch/transformers, one batch of activations
# A vLLM engine on a CPU node, beside its weights, KV cache and multimodal cache: the actor, the
# engine-core process and the worker process each import torch and vLLM. Measured: 3.3 GiB RSS
# over the three with the tiny Qwen3-VL (1.0 + 1.1 + 1.2 GiB, after captioning).
VLLM_CPU_RUNTIME_BYTES = 4 * GIB
KV_BLOCK_TOKENS = 128               # vLLM allocates KV in blocks: a request's last one is partly empty
ENCODER_ACTIVATION_BYTES = 1 * GIB  # one encoder batch on the GPU
PROMPT_TOKENS = 160                 # system prompt + chat template + the sample's text, typical
OBJECT_STORE_SHARE = 0.3            # Ray's default object store: 30% of a node's memory


class PlanError(ValueError):
    """The config cannot run on this cluster; every problem is named with its fix."""


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    memory_bytes: int          # what Ray schedules tasks and actors against (not the object store)
    gpus: int = 0
    accelerator: Optional[str] = None
    gpu_memory_bytes: int = 0  # per GPU
    count: int = 1             # nodes of this type the run may have (the autoscaler's maximum)
    object_store_bytes: int = 0


@dataclass(frozen=True)
class ModelFootprint:
    weights_bytes: int
    kv_bytes_per_token: int = 0   # decoder models: K and V over all layers, in the serving dtype
    frame_factor: int = 32        # vision models: pixels per token side (patch x merge)
    temporal_patch: int = 1       # frames per token in video mode


@dataclass(frozen=True)
class Footprints:
    captioner: ModelFootprint
    encoders: ModelFootprint      # embedder and VAE together: one actor owns both


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

    def describe(self) -> str:
        lines = ["per node type:",
                 f"  {'node type':<16}{'nodes':>6}{'CPUs':>7}{'GPUs':>10}{'engines':>9}{'encoders':>10}"
                 f"{'decode':>8}{'tasks':>7}{'CPUs used':>11}{'memory':>22}"]
        for node in self.nodes:
            kind = node.node_type
            gpus = f"{kind.gpus}x{kind.accelerator or '?'}" if kind.gpus else "-"
            lines.append(f"  {kind.name:<16}{kind.count:>6}{kind.cpus:>7g}{gpus:>10}{node.engines:>9}"
                         f"{node.encoders:>10}{node.decode_actors:>8}{node.task_slots:>7}{node.cpus_used:>11.1f}"
                         f"{_gib(node.memory_bytes):>10} / {_gib(kind.memory_bytes):<9}")
        lines += [
            "per unit (what each asks Ray for):",
            f"  captioner ({self.backend}): {self.engines} x [{self.engine_cpus:g} CPU, {self.engine_gpus:g} GPU, "
            f"{_gib(self.engine_memory)} RAM" + (f", needs {_gib(self.engine_gpu_memory)} per GPU" if self.engine_gpus else "")
            + (f", {_gib(self.kv_cache_bytes)} of it KV cache" if self.kv_cache_bytes else "")
            + f"], requests of up to {self.request_tokens} tokens",
            f"  encoders: {self.encoders} x [{self.encoder_cpus:g} CPU, {self.encoder_gpus:g} GPU, "
            f"{_gib(self.encoder_memory)} RAM]",
            f"  decode: {self.decode_actors} x [{self.decode_cpus:g} CPU, {_gib(self.decode_memory)} RAM]",
            f"  write: {self.writers} x [{self.task_cpus:g} CPU] (actors, inside the task room)",
            f"  read: {self.shards} shards in {self.read_tasks} tasks, up to {self.shards_per_task} shard(s) and "
            f"{_gib(self.read_task_bytes)} per task; {_gib(self.read_task_memory)} RAM per task "
            f"[{self.task_cpus:g} CPU each]",
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB // 10 else f"{n / MIB:.0f} MiB"


def accelerator_memory(accelerator: Optional[str], override_gb: Optional[float]) -> int:
    if override_gb is not None:
        return int(override_gb * GIB)
    if accelerator in ACCELERATOR_MEMORY_GIB:
        return ACCELERATOR_MEMORY_GIB[accelerator] * GIB
    raise PlanError(f"GPU type {accelerator!r} is not one the planner knows ({sorted(ACCELERATOR_MEMORY_GIB)}): "
                    "set resources.gpu_memory_gb to its memory per GPU")


def request_tokens(config, footprint: ModelFootprint) -> int:
    """Tokens of the longest request: every frame at the captioner's pixel budget, the prompt,
    and the answer."""
    frames = config.frames
    per_frame = math.ceil(frames.max_pixels / footprint.frame_factor ** 2)
    temporal = footprint.temporal_patch if config.models.captioner.frames_as == "video" else 1
    return math.ceil(frames.max_frames / temporal) * per_frame + PROMPT_TOKENS + config.models.captioner.new_tokens


def plan(nodes: Sequence[NodeType], config, footprints: Footprints, shard_bytes: Sequence[int]) -> Plan:
    """Place the job's stages on `nodes`, or raise PlanError naming every problem and its fix."""
    from etl.sources.shard_selection import group_shards

    problems: list[str] = []
    notes: list[str] = []
    settings, wanted = config.models.captioner, config.resources
    nodes = [n for n in nodes if n.count > 0 and n.cpus > 0]
    if not nodes:
        raise PlanError("the cluster has no node with CPUs for the job's tasks (a head with num-cpus 0 "
                        "needs worker nodes)")
    tp = settings.tensor_parallel_size
    gpu_nodes = [n for n in nodes if n.gpus >= tp]
    use_gpus = bool(gpu_nodes)
    if settings.backend == "vllm" and not use_gpus and tp > 1:
        raise PlanError(f"models.captioner.tensor_parallel_size={tp} needs GPU nodes with {tp} GPUs; this cluster has "
                        "none: set it to 1 (vLLM on a CPU node) or add a GPU worker group")

    tokens = request_tokens(config, footprints.captioner)
    if tokens > settings.max_model_len:
        problems.append(f"a request can reach {tokens} tokens ({config.frames.max_frames} frames at "
                        f"{config.frames.max_pixels} pixels, prompt, {settings.new_tokens} new tokens) but "
                        f"models.captioner.max_model_len is {settings.max_model_len}: raise it to >= {tokens}, "
                        "or lower frames.max_frames / frames.max_pixels")

    # --- read tasks
    groups = group_shards(list(shard_bytes), config.read.shards_per_task, config.read.max_task_mb * MIB)
    read_task_bytes = max((sum(shard_bytes[i] for i in g) for g in groups), default=0)
    read_task_memory = max(shard_bytes, default=0) + 3 * READ_BLOCK_BYTES
    total_cpus = sum(n.cpus * n.count for n in nodes)
    # Few tasks are only a problem when they are big: a handful of small tasks read quickly.
    if groups and read_task_bytes > BIG_READ_TASK_BYTES and len(groups) < min(len(shard_bytes), total_cpus):
        fix = max(1, math.floor(len(shard_bytes) / total_cpus))
        problems.append(
            f"{len(shard_bytes)} shards in only {len(groups)} read tasks ({_gib(read_task_bytes)} per task) on "
            f"{total_cpus:g} CPUs: Ray Data never splits a launched read task, so reads cannot spread over the "
            f"cluster and each task declares {_gib(read_task_bytes)} to the object store; set "
            f"read.shards_per_task <= {fix} and read.max_task_mb <= 1024 for >= {min(len(shard_bytes), int(total_cpus))} tasks")

    # --- captioner and encoders, per unit
    cap, enc = footprints.captioner, footprints.encoders

    def engine_gpu_need(tensor_parallel: int) -> int:
        """Per GPU: weights and KV of one max_model_len request, split over the TP ranks, and activations."""
        return (cap.weights_bytes + cap.kv_bytes_per_token * settings.max_model_len) // tensor_parallel \
            + GPU_ACTIVATION_BYTES

    kv_cache_bytes = None
    if use_gpus:
        engine_cpus = wanted.captioner.cpus_per_engine or 4.0
        encoder_cpus = wanted.encoder.cpus_per_actor or 1.0
        engine_memory = cap.weights_bytes + int(settings.mm_cache_gb * GIB) + ENGINE_RUNTIME_BYTES
        engine_gpu_memory = engine_gpu_need(tp)
        encoder_gpu_memory = enc.weights_bytes + ENCODER_ACTIVATION_BYTES
        encoder_memory = enc.weights_bytes + CPU_MODEL_HEADROOM_BYTES
    else:
        engine_cpus, engine_memory, kv_cache_bytes = cpu_engine_needs(config, cap, tokens, nodes[0], problems)
        encoder_cpus = wanted.encoder.cpus_per_actor or 0.4
        encoder_memory = enc.weights_bytes + CPU_MODEL_HEADROOM_BYTES
        engine_gpu_memory = encoder_gpu_memory = 0
    decode_memory = wanted.decode.memory_mb * MIB
    task_slots_memory = read_task_memory  # per slot: a read task is the biggest of the three kinds

    node_plans: list[NodePlan] = []
    engine_gpus = float(tp) if use_gpus else 0.0
    encoder_gpus = 0.0
    sharing = False
    for node in nodes:
        room = max(0.5, round(0.05 * node.cpus, 1))  # CPUs kept for read/prepare/write tasks
        slots = max(1, int(room / TASK_CPUS))
        reserved_memory = slots * task_slots_memory
        engines = encoders = 0
        if use_gpus and node.gpus >= tp:
            gpu_memory = accelerator_memory(node.accelerator, wanted.gpu_memory_gb)
            given = int(settings.gpu_memory_utilization * gpu_memory)
            if engine_gpu_memory > given:
                need_tp = next((t for t in (2, 4, 8) if t > tp and engine_gpu_need(t) <= given), None)
                problems.append(
                    f"{node.name}: one engine needs {_gib(engine_gpu_memory)} per GPU (weights, KV for "
                    f"max_model_len={settings.max_model_len}, activations) but gets {settings.gpu_memory_utilization} "
                    f"x {_gib(gpu_memory)} = {_gib(given)}: "
                    + (f"set models.captioner.tensor_parallel_size={need_tp}" if need_tp and need_tp <= node.gpus
                       else "use GPUs with more memory") + " or lower max_model_len")
            by_gpus = node.gpus // tp
            by_memory = int((node.memory_bytes - reserved_memory) // max(engine_memory, 1))
            by_cpus = int((node.cpus - room) // engine_cpus)
            fit = max(0, min(by_gpus, by_memory, by_cpus))
            engines = wanted.captioner.engines_per_node or fit
            if engines > fit:
                limits = {"GPUs": by_gpus, "RAM": by_memory, "CPUs": by_cpus}
                limit = min(limits, key=limits.get)
                problems.append(
                    f"{node.name}: resources.captioner.engines_per_node={engines} does not fit; its {limit} fit "
                    f"{limits[limit]} (each engine: {tp} GPU, {engine_cpus:g} CPUs, {_gib(engine_memory)} RAM; the "
                    f"node: {node.gpus} GPUs, {node.cpus:g} CPUs, {_gib(node.memory_bytes)} RAM for tasks and "
                    f"actors): set engines_per_node to {max(fit, 1)} or use a bigger node")
                engines = fit
            if fit == 0 and not wanted.captioner.engines_per_node:
                problems.append(f"{node.name}: not one engine fits (GPUs {by_gpus}, RAM {by_memory}, CPUs "
                                f"{by_cpus}; each engine needs {_gib(engine_memory)} RAM and {engine_cpus:g} CPUs)")
            spare_gpus = node.gpus - engines * tp
            if spare_gpus >= 1:
                encoders = spare_gpus
                encoder_gpus = max(encoder_gpus, 1.0)
            elif tp == 1 and engines:
                sharing = True
                encoders = engines  # one per GPU, beside its engine
                if encoder_gpu_memory > gpu_memory - given:
                    problems.append(
                        f"{node.name}: the encoders need {_gib(encoder_gpu_memory)} beside each engine but "
                        f"{1 - settings.gpu_memory_utilization:.2f} x {_gib(gpu_memory)} is left: lower "
                        f"models.captioner.gpu_memory_utilization to <= "
                        f"{math.floor(100 * (1 - encoder_gpu_memory / gpu_memory)) / 100}")
            elif engines:
                problems.append(f"{node.name}: {engines} engine(s) of tensor_parallel_size={tp} take all {node.gpus} "
                                f"GPUs and leave none for the encoders: set resources.captioner.engines_per_node="
                                f"{engines - 1}" if engines > 1 else "use nodes with a spare GPU")
        node_plans.append(NodePlan(node, engines, encoders, 0, slots, reserved_memory, room))

    if sharing:
        engine_gpus = 1.0 - wanted.encoder.gpu_share
        encoder_gpus = wanted.encoder.gpu_share
    elif not use_gpus:
        # CPU-only: one captioner and one encoder actor, on the first node with room
        first = node_plans[0]
        node_plans[0] = replace(first, engines=1, encoders=1)

    engines_possible = sum(p.engines * p.node_type.count for p in node_plans)
    engines_total = engines_possible
    if wanted.captioner.engines is not None:
        if wanted.captioner.engines > engines_possible:
            problems.append(f"resources.captioner.engines={wanted.captioner.engines} but the cluster holds "
                            f"{engines_possible}: lower it, or add GPU nodes")
        engines_total = min(wanted.captioner.engines, engines_possible)
    encoders_possible = sum(p.encoders * p.node_type.count for p in node_plans)
    encoders_total = min(wanted.encoder.actors or encoders_possible, encoders_possible)
    if wanted.encoder.actors and wanted.encoder.actors > encoders_possible:
        problems.append(f"resources.encoder.actors={wanted.encoder.actors} but the plan has GPU room for "
                        f"{encoders_possible}: lower it")

    # --- decode actors fill what is left, node by node
    per_actor = wanted.decode.cpus_per_actor
    free = []
    for p in node_plans:
        used_cpus = p.cpus_used + p.engines * engine_cpus + p.encoders * encoder_cpus
        used_memory = p.memory_bytes + p.engines * engine_memory + p.encoders * encoder_memory
        free.append((p, p.node_type.cpus - used_cpus, p.node_type.memory_bytes - used_memory))
    if per_actor is None:
        total_free = sum(max(f, 0) * p.node_type.count for p, f, _ in free)
        per_actor = 1.0 if total_free >= 1 else max(round(total_free, 2), 0.1)
    decode_fit = [(p, max(0, min(int(round(f / per_actor, 6)), int(m // decode_memory)))) for p, f, m in free]
    decode_possible = sum(n * p.node_type.count for p, n in decode_fit)
    if wanted.decode.actors is not None:
        decode_total = wanted.decode.actors
        if decode_total > decode_possible:
            engines_asked = wanted.captioner.engines or engines_total
            demand = (decode_total * per_actor + engines_asked * engine_cpus + encoders_total * encoder_cpus
                      + sum(p.cpus_used * p.node_type.count for p in node_plans))
            problems.append(
                f"resources.decode.actors={decode_total} x {per_actor:g} CPU, with {engines_asked} engine(s) x "
                f"{engine_cpus:g} CPUs, {encoders_total} encoder(s) x {encoder_cpus:g} CPU and room for tasks, "
                f"needs {demand:g} CPUs (and {_gib(decode_total * decode_memory)} of RAM for the decode actors); the "
                f"cluster has {total_cpus:g} CPUs: set resources.decode.actors <= {decode_possible}, or leave it unset")
    else:
        decode_total = decode_possible
    if decode_total < 1:
        problems.append("no CPU is left for a decode actor after the models and tasks: lower "
                        "resources.captioner.cpus_per_engine / resources.encoder.cpus_per_actor, or add CPUs")

    placed, remaining = [], decode_total
    for p, fit in decode_fit:
        here = min(fit, math.ceil(remaining / p.node_type.count)) if remaining > 0 else 0
        remaining -= here * p.node_type.count
        placed.append(replace(p, decode_actors=here,
                              cpus_used=round(p.cpus_used + p.engines * engine_cpus + p.encoders * encoder_cpus
                                              + here * per_actor, 2),
                              memory_bytes=p.memory_bytes + p.engines * engine_memory + p.encoders * encoder_memory
                              + here * decode_memory))
    for p in placed:
        if p.memory_bytes > p.node_type.memory_bytes:
            problems.append(f"{p.node_type.name}: what is placed declares {_gib(p.memory_bytes)} of RAM, the node "
                            f"has {_gib(p.node_type.memory_bytes)} for tasks and actors: use fewer engines or "
                            "decode actors per node, or a node with more memory")

    budget = config.ray.object_store_budget_mb
    store = sum(n.object_store_bytes * n.count for n in nodes)
    if budget and store and budget * MIB > store:
        problems.append(f"ray.object_store_budget_mb={budget} exceeds the cluster's object store "
                        f"({store // MIB} MiB): lower it")
    if problems:
        raise PlanError("the config does not fit the cluster:\n" + "\n".join(f"  - {p}" for p in problems))
    if kv_cache_bytes:
        notes.append(f"KV cache {_gib(kv_cache_bytes)} per engine: {settings.max_num_seqs} requests of {tokens} tokens "
                     f"(models.captioner.max_num_seqs), on the engine's {int(engine_cpus)} core(s)")
    if use_gpus and cap.kv_bytes_per_token:
        kv_room = int(settings.gpu_memory_utilization * accelerator_memory(gpu_nodes[0].accelerator, wanted.gpu_memory_gb)) \
            * tp - cap.weights_bytes - GPU_ACTIVATION_BYTES * tp
        concurrent = kv_room // (cap.kv_bytes_per_token * tokens)
        notes.append(f"KV cache holds ~{concurrent} requests of {tokens} tokens per engine "
                     f"(models.captioner.max_num_seqs={settings.max_num_seqs})")
    return Plan(
        backend=settings.backend, engines=engines_total, engine_cpus=engine_cpus, engine_gpus=engine_gpus,
        engine_memory=engine_memory, engine_gpu_memory=engine_gpu_memory, encoders=encoders_total,
        encoder_cpus=encoder_cpus, encoder_gpus=encoder_gpus, encoder_memory=encoder_memory,
        decode_actors=decode_total, decode_cpus=per_actor, decode_memory=decode_memory,
        writers=max(1, encoders_total), task_cpus=TASK_CPUS,
        read_tasks=len(groups), shards=len(shard_bytes), shards_per_task=max((len(g) for g in groups), default=0),
        read_task_bytes=read_task_bytes, read_task_memory=read_task_memory, request_tokens=tokens,
        kv_cache_bytes=kv_cache_bytes, engine_cores=int(engine_cpus) if kv_cache_bytes else 0,
        nodes=placed, notes=notes)


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
        return asked or 0.4, footprint.weights_bytes + CPU_MODEL_HEADROOM_BYTES, None
    cpus = asked or max(1.0, float(node.cpus // 2))
    if cpus < 1 or cpus != int(cpus):
        problems.append(f"resources.captioner.cpus_per_engine={cpus:g}: a vLLM engine on a CPU node binds its "
                        "threads to whole cores; set a whole number >= 1")
    kv = cpu_kv_cache_bytes(settings, footprint, tokens)
    return cpus, footprint.weights_bytes + kv + int(settings.mm_cache_gb * GIB) + VLLM_CPU_RUNTIME_BYTES, kv


# --- Inputs: footprints from checkpoints, nodes from cluster files or the live cluster ----------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _checkpoint_files(uri: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    from etl import storage

    fs, root = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = {info.path[len(root):].lstrip("/"): info.size for info in infos if info.type == pafs.FileType.File}
    if not files:
        raise PlanError(f"no checkpoint at {uri}: the planner sizes models from their weight files and configs")
    return files


def _read_json(uri: str, name: str) -> dict:
    from etl import storage

    fs, root = storage.resolve(uri)
    with fs.open_input_stream(storage.join(root, name)) as stream:
        return json.loads(stream.read())


def captioner_footprint(uri: str) -> ModelFootprint:
    """Weights from the checkpoint's files; KV bytes per token from its text config (bf16)."""
    files = _checkpoint_files(uri)
    weights = sum(size for name, size in files.items() if name.endswith(_WEIGHT_SUFFIXES))
    config = _read_json(uri, "config.json")
    text = config.get("text_config", config)
    heads = text.get("num_key_value_heads", text.get("num_attention_heads", 1))
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv = 2 * text["num_hidden_layers"] * heads * head_dim * 2
    vision = config.get("vision_config", {})
    factor = vision.get("patch_size", 16) * vision.get("spatial_merge_size", 2)
    return ModelFootprint(weights, kv, factor, vision.get("temporal_patch_size", 1))


def encoders_footprint(*uris: str) -> ModelFootprint:
    return ModelFootprint(sum(size for uri in uris for name, size in _checkpoint_files(uri).items()
                              if name.endswith(_WEIGHT_SUFFIXES)))


def footprints_of(config) -> Footprints:
    models = config.models
    return Footprints(captioner_footprint(models.captioner.model),
                      encoders_footprint(models.embedder.model, models.vae.model))


def _memory_quantity(value) -> int:
    """Kubernetes quantities ("180Gi", "64G", "512Mi", plain bytes) -> bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10 ** 3, "K": 10 ** 3,
             "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12}
    text = str(value).strip()
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * units[suffix])
    return int(float(text))


def _cpu_quantity(value) -> float:
    text = str(value).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def nodes_from_launcher(config: dict) -> list[NodeType]:
    """Ray cluster launcher YAML: `available_node_types.*.resources` (CPU, GPU, memory in bytes:
    Ray's schedulable memory) and the `ray.io/accelerator-type` label; the autoscaler's
    `max_workers` per type (the head counts once)."""
    head = config.get("head_node_type")
    nodes = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = spec.get("resources") or {}
        if "memory" not in resources:
            raise PlanError(f"node type {name!r}: set resources.memory (bytes Ray may schedule) so the plan can "
                            "check RAM")
        count = 1 if name == head else spec.get("max_workers", spec.get("min_workers", 0))
        memory = int(resources["memory"])
        nodes.append(NodeType(name, float(resources.get("CPU", 0)), memory, int(resources.get("GPU", 0)),
                              (spec.get("labels") or {}).get("ray.io/accelerator-type"), count=count,
                              object_store_bytes=int(memory * OBJECT_STORE_SHARE / (1 - OBJECT_STORE_SHARE))))
    return nodes


_GPU_PRODUCTS = {"A10G": "A10G", "L40S": "L40S", "L4": "L4", "H100": "H100", "H200": "H200", "A100-SXM4-40GB": "A100-40G",
                 "A100-SXM4-80GB": "A100-80G", "A100-80GB": "A100-80G", "A100-40GB": "A100-40G", "T4": "T4",
                 "V100": "V100", "B200": "B200", "H20": "H20"}


def _accelerator_from_product(product: Optional[str]) -> Optional[str]:
    """GPU feature discovery's `nvidia.com/gpu.product` (e.g. NVIDIA-L40S) -> Ray's name."""
    if not product:
        return None
    for key in sorted(_GPU_PRODUCTS, key=len, reverse=True):
        if key in product:
            return _GPU_PRODUCTS[key]
    return product


def nodes_from_kuberay(manifest: dict) -> list[NodeType]:
    """KubeRay RayCluster (or RayJob's rayClusterSpec): each group's container limits, its
    rayStartParams (num-cpus / num-gpus override the limits, as Ray does) and the GPU product
    from its nodeSelector. Ray gives the object store 30% of the container's memory."""
    spec = manifest.get("spec", {})
    spec = spec.get("rayClusterSpec", spec)
    groups = [("head", spec.get("headGroupSpec", {}), 1)]
    groups += [(g.get("groupName", f"group{i}"), g, g.get("maxReplicas", g.get("replicas", 0)))
               for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    nodes = []
    for name, group, count in groups:
        pod = group.get("template", {}).get("spec", {})
        container = (pod.get("containers") or [{}])[0]
        limits = container.get("resources", {}).get("limits", {})
        params = group.get("rayStartParams", {}) or {}
        cpus = _cpu_quantity(params.get("num-cpus", limits.get("cpu", 0)))
        gpus = int(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        if "memory" not in limits:
            raise PlanError(f"group {name!r}: set resources.limits.memory so the plan can check RAM")
        ram = _memory_quantity(limits["memory"])
        accelerator = _accelerator_from_product((pod.get("nodeSelector") or {}).get("nvidia.com/gpu.product"))
        nodes.append(NodeType(name, cpus, int(ram * (1 - OBJECT_STORE_SHARE)), gpus, accelerator if gpus else None,
                              count=count, object_store_bytes=int(ram * OBJECT_STORE_SHARE)))
    return nodes


def load_cluster(path: str) -> list[NodeType]:
    import yaml

    with open(path) as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d]
    for document in documents:
        if document.get("kind") in ("RayCluster", "RayJob", "RayService"):
            return nodes_from_kuberay(document)
        if "available_node_types" in document:
            return nodes_from_launcher(document)
    raise PlanError(f"{path}: neither a Ray cluster launcher config (available_node_types) nor a KubeRay "
                    "RayCluster/RayJob manifest")


def nodes_from_ray(ray_nodes: Iterable[dict]) -> list[NodeType]:
    """The live cluster (`ray.nodes()`): alive nodes grouped by their shape."""
    shapes: dict[tuple, int] = {}
    for node in ray_nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        accelerator = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
        shape = (float(resources.get("CPU", 0)), int(resources.get("memory", 0)), int(resources.get("GPU", 0)),
                 accelerator, int(resources.get("object_store_memory", 0)))
        shapes[shape] = shapes.get(shape, 0) + 1
    return [NodeType(f"node{i}" if len(shapes) > 1 else "node", cpus, memory, gpus, accelerator, count=count,
                     object_store_bytes=store)
            for i, ((cpus, memory, gpus, accelerator, store), count) in enumerate(sorted(shapes.items(), key=str))]
