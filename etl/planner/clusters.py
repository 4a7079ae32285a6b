"""Cluster descriptions: the node types a run may get, from a Ray cluster launcher YAML, a
KubeRay manifest (RayCluster, RayJob, RayService) or the live cluster (`ray.nodes()`)."""

from dataclasses import dataclass
from typing import Iterable, Optional

from etl.planner.units import GIB, PlanError

# Ray's accelerator type names (ray.util.accelerators) -> memory per GPU.
ACCELERATOR_MEMORY_GIB = {
    "T4": 16, "V100": 16, "A10G": 24, "L4": 24, "L40S": 48, "A100-40G": 40, "A100-80G": 80, "A100": 80,
    "H100": 80, "H20": 96, "H200": 141, "B200": 180, "GB200": 186, "RTX-PRO-6000": 96,
}
OBJECT_STORE_SHARE = 0.3            # Ray's default object store: 30% of a node's memory


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


def accelerator_memory(accelerator: Optional[str], override_gb: Optional[float]) -> int:
    if override_gb is not None:
        return int(override_gb * GIB)
    if accelerator in ACCELERATOR_MEMORY_GIB:
        return ACCELERATOR_MEMORY_GIB[accelerator] * GIB
    raise PlanError(f"GPU type {accelerator!r} is not one the planner knows ({sorted(ACCELERATOR_MEMORY_GIB)}): "
                    "set resources.gpu_memory_gb to its memory per GPU")


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
