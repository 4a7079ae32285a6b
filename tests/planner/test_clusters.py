"""Cluster descriptions: launcher YAML, KubeRay manifests and the live cluster into node types."""

import pytest

from etl import planner
from etl.planner import GIB, NodeType, PlanError


def test_cluster_files_parse_into_node_types():
    launcher = {"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 0, "memory": 8 << 30}, "node_config": {}},
        "gpu": {"resources": {"CPU": 48, "GPU": 4, "memory": 268 << 30}, "labels": {"ray.io/accelerator-type": "L40S"},
                "min_workers": 0, "max_workers": 4, "node_config": {}}}}
    nodes = planner.nodes_from_launcher(launcher)
    assert nodes[1] == NodeType("gpu", 48, 268 << 30, 4, "L40S", count=4,
                                object_store_bytes=int((268 << 30) * 0.3 / 0.7))
    kuberay = {"kind": "RayCluster", "spec": {
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [
            {"resources": {"limits": {"cpu": "8", "memory": "32Gi"}}}]}}},
        "workerGroupSpecs": [{"groupName": "gpu", "replicas": 1, "maxReplicas": 4, "template": {"spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"},
            "containers": [{"resources": {"limits": {"cpu": "47500m", "memory": "360Gi", "nvidia.com/gpu": 4}}}]}}}]}}
    head, gpu = planner.nodes_from_kuberay(kuberay)
    assert head.cpus == 0 and gpu.cpus == 47.5 and gpu.gpus == 4 and gpu.accelerator == "L40S" and gpu.count == 4
    assert gpu.memory_bytes == int(360 * GIB * 0.7)
    with pytest.raises(PlanError, match="set resources.limits.memory"):
        planner.nodes_from_kuberay({"kind": "RayCluster", "spec": {"headGroupSpec": {"template": {"spec": {
            "containers": [{"resources": {"limits": {"cpu": "8"}}}]}}}}})


def test_live_cluster_nodes_group_by_shape():
    def alive(cpus, gpus=0, accelerator=None):
        return {"Alive": True, "Resources": {
            "CPU": cpus, "memory": 10 * GIB, "object_store_memory": 4 * GIB, **({"GPU": gpus} if gpus else {}),
            **({f"accelerator_type:{accelerator}": 1} if accelerator else {})}}

    nodes = planner.nodes_from_ray([alive(16), alive(16), alive(8, 1, "A10G"), {"Alive": False, "Resources": {"CPU": 99}}])
    shapes = sorted((n.cpus, n.gpus, n.accelerator, n.count) for n in nodes)
    assert shapes == [(8.0, 1, "A10G", 1), (16.0, 0, None, 2)]
