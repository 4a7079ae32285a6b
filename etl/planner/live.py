"""Planning against the live cluster, once it has the nodes the job waits for.

A cluster still forming (nodes started one after the other) or scaling up would otherwise be
refused, or planned for less than it is about to have: the plan sizes the actor pools once, at
start. The job waits for `ray.min_worker_nodes` nodes with CPUs or GPUs, and for a plan that
fits, up to `ray.wait_for_nodes_s`, saying in its log what it waits for.
"""

import logging
import time
from typing import Callable

from etl.planner.clusters import NodeType, nodes_from_ray
from etl.planner.placement import Plan, plan
from etl.planner.units import PlanError

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0


def live_nodes() -> list[NodeType]:
    import ray

    return nodes_from_ray(ray.nodes())


def worker_nodes(nodes: list[NodeType]) -> int:
    """Nodes that can run work: the head of a production cluster has neither CPUs nor GPUs."""
    return sum(node.count for node in nodes if node.cpus or node.gpus)


def plan_when_ready(config, footprints, read_tasks, nodes: Callable[[], list[NodeType]] = live_nodes,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Plan:
    """The plan for the live cluster, once it has `min_worker_nodes` worker nodes and the plan
    fits, or at the deadline the plan for what is there (refused if it does not fit)."""
    wanted, bound = config.ray.min_worker_nodes, config.ray.wait_for_nodes_s
    started = clock()
    while True:
        cluster = nodes()
        have, fitted, problem = worker_nodes(cluster), None, None
        try:
            fitted = plan(cluster, config, footprints, read_tasks)
        except PlanError as exc:
            problem = exc
        waited = clock() - started
        if fitted is not None and have >= wanted:
            if waited >= POLL_SECONDS:
                logger.info("the cluster has %d worker node(s) after %.0f s: planned on them", have, waited)
            return fitted
        if not wanted or waited >= bound:
            return _at_deadline(fitted, problem, have, wanted, waited)
        logger.info("waiting for the cluster (%.0f of at most %.0f s): %d of %d worker node(s)%s", waited, bound,
                    have, wanted, "" if fitted is not None else f"; the plan does not fit yet: {problem}")
        sleep(POLL_SECONDS)


def _at_deadline(fitted, problem, have: int, wanted: int, waited: float) -> Plan:
    if fitted is None:
        if wanted:
            raise PlanError(f"waited {waited:.0f} s for {wanted} worker node(s) (ray.min_worker_nodes); {have} "
                            f"joined, and the plan does not fit them: {problem}")
        raise problem
    logger.warning("waited %.0f s for %d worker node(s) (ray.min_worker_nodes); %d joined: planned on those",
                   waited, wanted, have)
    return fitted
