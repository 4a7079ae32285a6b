"""Planning against a cluster that is still forming: the job waits for the nodes it was told to
expect, up to a bound, and plans on what it has at the deadline only if that fits."""

import logging

import pytest

from etl import planner
from etl.job_input import assumed_read_tasks
from etl.planner import GIB, NodeType, PlanError
from etl.planner.live import plan_when_ready
from tests.planner.test_more_nodes import local_config

HEAD = NodeType("head", 0, 0)
WORKER = NodeType("worker", 2, 8 * GIB)
TINY_WORKER = NodeType("tiny", 1, GIB // 2)


class FormingCluster:
    """Nodes joining one per poll; a clock that moves by each sleep."""

    def __init__(self, *stages):
        self.stages, self.now, self.polls = list(stages), 0.0, 0

    def nodes(self):
        self.polls += 1
        return self.stages[min(self.polls, len(self.stages)) - 1]

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture(scope="module")
def job(tiny):
    config = local_config(tiny)
    return config, planner.footprints_of(config), assumed_read_tasks(config, [10 << 20] * 12)


def _with(config, **ray):
    return config.model_copy(update={"ray": config.ray.model_copy(update=ray)})


def test_it_waits_for_the_nodes_it_expects_and_plans_on_all_of_them(job, caplog):
    config, footprints, read_tasks = job
    cluster = FormingCluster([HEAD], [HEAD, WORKER], [HEAD, WORKER, NodeType("worker", 2, 8 * GIB)],
                             [HEAD, NodeType("worker", 2, 8 * GIB, count=2)])
    with caplog.at_level(logging.INFO, logger="etl.planner.live"):
        plan = plan_when_ready(_with(config, min_worker_nodes=2, wait_for_nodes_s=60), footprints, read_tasks,
                               cluster.nodes, cluster.clock, cluster.sleep)
    assert cluster.polls == 3  # not planned on the half-formed cluster of the second poll
    assert sum(node.node_type.count for node in plan.nodes if node.node_type.cpus) == 2
    assert "waiting for the cluster" in caplog.text and "1 of 2 worker node(s)" in caplog.text


def test_at_the_deadline_it_plans_on_what_joined_if_that_fits_and_says_so(job, caplog):
    config, footprints, read_tasks = job
    cluster = FormingCluster([HEAD, WORKER])
    with caplog.at_level(logging.INFO, logger="etl.planner.live"):
        plan = plan_when_ready(_with(config, min_worker_nodes=3, wait_for_nodes_s=10), footprints, read_tasks,
                               cluster.nodes, cluster.clock, cluster.sleep)
    assert plan.engines == 1 and cluster.now >= 10
    assert "waited 10 s for 3 worker node(s) (ray.min_worker_nodes); 1 joined: planned on those" in caplog.text


def test_a_cluster_that_never_fits_is_refused_at_the_deadline_naming_what_it_waited_for(job):
    config, footprints, read_tasks = job
    cluster = FormingCluster([HEAD, TINY_WORKER])
    with pytest.raises(PlanError, match=r"waited 10 s for 2 worker node\(s\) \(ray.min_worker_nodes\); 1 joined, "
                                        r"and the plan does not fit them: "):
        plan_when_ready(_with(config, min_worker_nodes=2, wait_for_nodes_s=10), footprints, read_tasks,
                        cluster.nodes, cluster.clock, cluster.sleep)


def test_without_nodes_to_wait_for_a_plan_that_does_not_fit_fails_at_once(job):
    config, footprints, read_tasks = job
    cluster = FormingCluster([HEAD, TINY_WORKER], [HEAD, WORKER])
    with pytest.raises(PlanError):
        plan_when_ready(config, footprints, read_tasks, cluster.nodes, cluster.clock, cluster.sleep)
    assert cluster.polls == 1 and cluster.now == 0
