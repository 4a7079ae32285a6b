"""A planner that only gets better with more nodes: if a config fits a cluster, it fits that
cluster with any node added, wherever the node lands in the list Ray gives (its order is
arbitrary), and nothing placed shrinks. Clusters are generated (hypothesis)."""

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from etl import planner
from etl.config import load_config
from etl.job_input import assumed_read_tasks
from etl.planner import GIB, Footprints, NodeType, PlanError
from tests.planner.test_placement import ENCODERS, QWEN_8B, production

CPU_NODES = st.builds(NodeType, name=st.sampled_from(["a", "b", "c"]), cpus=st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64]),
                      memory_bytes=st.sampled_from([1, 2, 4, 8, 16, 64, 256]).map(lambda g: g * GIB),
                      count=st.integers(1, 3))
GPU_NODES = st.builds(NodeType, name=st.sampled_from(["g", "h"]), cpus=st.sampled_from([8, 16, 48, 96]),
                      memory_bytes=st.sampled_from([32, 64, 192, 512]).map(lambda g: g * GIB),
                      gpus=st.sampled_from([1, 2, 4, 8]), accelerator=st.sampled_from(["L40S", "A100-80G", "A10G"]),
                      count=st.integers(1, 4))
# derandomized: CI runs the same cases every time; raise max_examples locally to search wider
PROPERTY = settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def local_config(tiny):
    return load_config("jobs/configs/local.yaml", {"input": "x", "output": "y",
                                                   "models.captioner.model": str(tiny["qwen3_vl"]),
                                                   "models.embedder.model": str(tiny["clip"]),
                                                   "models.vae.model": str(tiny["vae"])})


def plan_or_none(nodes, config, footprints, read_tasks):
    try:
        return planner.plan(nodes, config, footprints, read_tasks)
    except PlanError:
        return None


def check_growth(cluster, joining, where, config, footprints, read_tasks):
    before = plan_or_none(cluster, config, footprints, read_tasks)
    event("the cluster fits" if before else "the cluster is refused")  # --hypothesis-show-statistics
    if before is not None:
        grown = [*cluster[:where], joining, *cluster[where:]]
        assert_no_worse(before, plan_or_none(grown, config, footprints, read_tasks))


def assert_no_worse(before, after):
    """Fits, with as many engines and encoders and a decode actor at least. Decode actors are
    one size: where the cluster had no whole CPU free they are fractions, and once a node with
    a whole CPU free joins they are whole CPUs, which can be fewer in number (3 x 0.5 -> 1 x 1)."""
    assert after is not None, "a node joined and a plan that fitted was refused"
    assert after.engines >= before.engines and after.encoders >= before.encoders
    assert after.decode_actors >= 1 and after.decode_cpus >= before.decode_cpus


@pytest.fixture(scope="module")
def local(tiny):
    config = local_config(tiny)
    return config, planner.footprints_of(config), assumed_read_tasks(config, [10 << 20] * 12)


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_the_demo_config_fits_one_two_and_three_nodes_of_two_cpus_with_or_without_a_cpu_less_head(local, nodes):
    config, footprints, read_tasks = local
    workers = [NodeType(f"worker-{i}", 2, 8 * GIB) for i in range(nodes)]
    for cluster in (workers, [NodeType("head", 0, 8 * GIB), *workers], [NodeType("worker", 2, 8 * GIB, count=nodes)]):
        plan = planner.plan(cluster, config, footprints, read_tasks)
        # one node holds the models and 0.1 CPU of decode; every other node a 1-CPU decode actor
        assert (plan.engines, plan.encoders) == (1, 1)
        assert (plan.decode_actors, plan.decode_cpus) == ((1, 0.1) if nodes == 1 else (nodes - 1, 1.0))
        # the models sit on one node, whichever way the cluster lists them
        assert sum(p.engines * p.node_type.count for p in plan.nodes) == 1


@PROPERTY
@given(cluster=st.lists(CPU_NODES, min_size=1, max_size=4), joining=CPU_NODES, where=st.integers(0, 4))
def test_a_node_that_joins_a_cpu_cluster_never_turns_a_fit_into_a_refusal(local, cluster, joining, where):
    check_growth(cluster, joining, where, *local)


@PROPERTY
@given(cluster=st.lists(st.one_of(GPU_NODES, CPU_NODES), min_size=1, max_size=3), joining=st.one_of(GPU_NODES, CPU_NODES),
       where=st.integers(0, 3))
def test_a_node_that_joins_a_gpu_cluster_never_turns_a_fit_into_a_refusal(cluster, joining, where):
    config = production()
    check_growth(cluster, joining, where, config, Footprints(QWEN_8B, ENCODERS),
                 assumed_read_tasks(config, [266_000_000] * 64))
