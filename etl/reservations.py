"""Room held for the model actors before any work starts.

Ray Data asks for every pool's actors and the read's tasks at once, and Ray places them in
whatever order it gets to them. On a cluster of a GPU node and two CPU nodes, a decode actor and
read tasks took the GPU node's spare CPUs first; the captioner and the encoder (which need a CPU
beside their GPU) stayed pending until decode had run out of input, and the GPU idled for the
first 70 s of a 90 s run (tests/cluster/test_multinode.py, before this module).

So each pool marked `placement="reserved"` (the captioner's engines, the encoders) gets a
placement group of one bundle per actor, with the actor's CPUs, GPUs and memory, spread over the
nodes where Ray can. The job waits for the groups before building the dataset, and the pool's
actors are scheduled into them. The bundles of a node that dies are placed again by Ray where
there is room (a node that joins), and the restarted actors follow them. The groups are removed
when the run ends; a driver that dies takes them with it (they belong to its job).
"""

import contextlib
import logging
import time
from typing import Iterator

from etl.stages.stage import Step

logger = logging.getLogger(__name__)


class ReservationError(RuntimeError):
    """The cluster could not hold the model actors' room within the wait."""


def bundles(step: Step) -> list[dict[str, float]]:
    """One bundle per actor of `step`'s pool: what each actor asks Ray for."""
    resources = step.resources
    bundle = {"CPU": resources.cpus, "GPU": resources.gpus, "memory": resources.memory or 0}
    return [{kind: amount for kind, amount in bundle.items() if amount}] * (resources.actors or 0)


@contextlib.contextmanager
def reserved(steps: list[Step], run_id: str, timeout_s: float) -> Iterator[dict[str, object]]:
    """{step name: the scheduling strategy of its actors} for every reserved pool, held for the
    block. Raises ReservationError naming the pool and its bundles when they are not placed
    within `timeout_s`."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    groups = {}
    try:
        for step in steps:
            if step.resources.placement == "reserved" and step.resources.actors:
                groups[step.name] = placement_group(bundles(step), strategy="SPREAD", name=f"{run_id}-{step.name}")
        _wait_until_placed(groups, steps, timeout_s)
        yield {name: PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=-1,
                                                      placement_group_capture_child_tasks=False)
               for name, group in groups.items()}
    finally:
        for group in groups.values():
            remove_placement_group(group)


def _wait_until_placed(groups: dict, steps: list[Step], timeout_s: float) -> None:
    started = time.monotonic()
    for name, group in groups.items():
        while not group.wait(timeout_seconds=min(30.0, max(0.0, timeout_s - (time.monotonic() - started)))):
            step = next(s for s in steps if s.name == name)
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise ReservationError(
                    f"the cluster did not hold the room of {name}'s {step.resources.actors} actor(s) "
                    f"({bundles(step)[0]} each) within {timeout_s:.0f} s (ray.wait_for_nodes_s): other jobs may "
                    "hold it, or a node the plan counted on is gone")
            logger.info("waiting %.0f s for the room of %s's actors (%s each)", waited, name, bundles(step)[0])
