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
there is room (a node that joins), and the restarted actors follow them. While the run goes, a watch
checks the groups: one whose bundles lost their node and found no other for `timeout_s`
(`ray.wait_for_nodes_s`: no node with room joined) stops the run with a ReservationError naming
the pool, instead of leaving its actors pending forever; what was committed stays, and
`--resume` carries on. The groups are removed when the run ends; a driver that dies takes them
with it (they belong to its job).
"""

import contextlib
import logging
import signal
import threading
import time
from typing import Iterator, Optional

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
def reserved(steps: list[Step], run_id: str, timeout_s: float,
             check_every_s: float = 5.0) -> Iterator[dict[str, object]]:
    """{step name: the scheduling strategy of its actors} for every reserved pool, held for the
    block. Raises ReservationError naming the pool and its bundles when they are not placed
    within `timeout_s`, at the start or after losing their node."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    groups, watch = {}, None
    try:
        for step in steps:
            if step.resources.placement == "reserved" and step.resources.actors:
                groups[step.name] = placement_group(bundles(step), strategy="SPREAD", name=f"{run_id}-{step.name}")
        _wait_until_placed(groups, steps, timeout_s)
        watch = RoomWatch(groups, steps, timeout_s, check_every_s)
        watch.start()
        try:
            yield {name: PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=-1,
                                                          placement_group_capture_child_tasks=False)
                   for name, group in groups.items()}
        except KeyboardInterrupt:
            if watch.lost is None:
                raise
            raise ReservationError(watch.lost) from None
    finally:
        if watch is not None:
            watch.stop.set()
        for group in groups.values():
            remove_placement_group(group)


class RoomWatch(threading.Thread):
    """Interrupts the driver when a group has not been placed for `timeout_s` (Ray marks a group
    whose node died RESCHEDULING until its bundles find room elsewhere)."""

    def __init__(self, groups: dict, steps: list[Step], timeout_s: float, check_every_s: float,
                 interrupt=None):
        super().__init__(daemon=True, name="room-watch")
        self.groups, self.steps, self.timeout_s, self.check_every_s = groups, steps, timeout_s, check_every_s
        self.interrupt = interrupt or _interrupt_driver
        self.stop, self.lost = threading.Event(), None

    def run(self) -> None:
        from ray.util.placement_group import placement_group_table

        unplaced_since: dict[str, float] = {}
        while not self.stop.wait(self.check_every_s):
            for name, group in self.groups.items():
                state = placement_group_table(group).get("state")
                if state == "CREATED":
                    unplaced_since.pop(name, None)
                    continue
                since = unplaced_since.setdefault(name, time.monotonic())
                if time.monotonic() - since >= self.timeout_s and not self.stop.is_set():
                    self.lost = self._message(name, state)
                    logger.error(self.lost)
                    self.interrupt()
                    return

    def _message(self, name: str, state: Optional[str]) -> str:
        step = next(s for s in self.steps if s.name == name)
        return (f"{name}'s actors lost the node holding their room and no node with room for them "
                f"({bundles(step)[0]} each) joined within {self.timeout_s:.0f} s (ray.wait_for_nodes_s; "
                f"placement group {state}): the run stops; what it committed stays, and --resume goes on")


def _interrupt_driver() -> None:
    # a real SIGINT to the main thread: it wakes a blocking wait, which _thread.interrupt_main's
    # flag does not (the driver waited on in Ray Data's iterator)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


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
