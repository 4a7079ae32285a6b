"""Right-sizing: what each stage gets on a cluster, and a refusal when a config cannot fit.

Three parts, in the order a plan is made:
- `clusters`: the node types, from a launcher YAML, a KubeRay manifest or the live cluster;
- `footprints`: the models' sizes, from their checkpoints;
- `memory`: each unit's host memory, from measured parts, and what it declares to Ray;
- `placement`: engines, encoders, decode actors and task room per node type, checked against
  every node's CPUs, RAM and GPU memory (`plan`).
`python -m jobs.plan` prints a plan for a cluster file; the curation job plans against the live
cluster at start with the same code, and asks Ray for exactly what the plan says.
"""

from etl.planner.clusters import (
    ACCELERATOR_MEMORY_GIB, NodeType, accelerator_memory, load_cluster, nodes_from_kuberay, nodes_from_launcher,
    nodes_from_ray,
)
from etl.planner.footprints import (
    EncoderFootprint, Footprints, ModelFootprint, captioner_footprint, encoders_footprint, footprints_of, request_tokens,
)
from etl.planner.memory import READ_BLOCK_BYTES, RAY_HEADROOM, VLLM_CPU_RUNTIME_BYTES
from etl.planner.placement import TASK_CPUS, NodePlan, Plan, cpu_engine_needs, cpu_kv_cache_bytes, plan
from etl.planner.units import GIB, MIB, PlanError

__all__ = [
    "ACCELERATOR_MEMORY_GIB", "GIB", "MIB", "RAY_HEADROOM", "READ_BLOCK_BYTES", "TASK_CPUS", "VLLM_CPU_RUNTIME_BYTES",
    "EncoderFootprint", "Footprints",
    "ModelFootprint", "NodePlan", "NodeType", "Plan", "PlanError", "accelerator_memory", "captioner_footprint",
    "cpu_engine_needs", "cpu_kv_cache_bytes", "encoders_footprint", "footprints_of", "load_cluster",
    "nodes_from_kuberay", "nodes_from_launcher", "nodes_from_ray", "plan", "request_tokens",
]
