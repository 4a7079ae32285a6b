"""The model actors' room, held before any work: one bundle per actor, placed before the block
runs, removed after it (also when it raises), and a clear refusal when the cluster cannot hold
it. On the session's local Ray (2 CPUs); the multi-node placement is in
tests/cluster/test_multinode.py."""

import pytest

from etl.reservations import ReservationError, bundles, reserved
from etl.stages.stage import Resources, Step


class EngineStage:
    pass


class DecodeStage:
    pass


def _step(stage, **resources) -> Step:
    return Step(stage, (), (), {}, Resources(**resources))


def _state(name: str) -> set[str]:
    from ray.util.placement_group import placement_group_table

    return {entry["state"] for entry in placement_group_table().values() if entry["name"] == name}


def test_one_bundle_per_actor_with_what_each_asks_for():
    step = _step(EngineStage, cpus=0.5, gpus=0.0, memory=1 << 30, actors=2, placement="reserved")
    assert bundles(step) == [{"CPU": 0.5, "memory": 1 << 30}] * 2  # nothing asked of a resource: no key


def test_the_reserved_pools_are_held_for_the_block_and_released_after(ray_local):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    steps = [_step(EngineStage, cpus=0.5, memory=256 << 20, actors=2, placement="reserved"),
             _step(DecodeStage, cpus=0.5, actors=1)]
    with reserved(steps, "run-a", timeout_s=60) as strategies:
        assert list(strategies) == ["EngineStage"]  # the decode pool is left to Ray Data's spread
        assert isinstance(strategies["EngineStage"], PlacementGroupSchedulingStrategy)
        assert _state("run-a-EngineStage") == {"CREATED"}
        held = ray_local.available_resources().get("CPU", 0)
        assert held <= 2 - 1.0 + 1e-6  # the two bundles' CPUs are out of the free pool
        # an actor scheduled with the strategy runs inside the group
        probe = ray_local.remote(num_cpus=0.5, memory=256 << 20)(_Where).options(
            scheduling_strategy=strategies["EngineStage"]).remote()
        assert ray_local.get(probe.group.remote()) == strategies["EngineStage"].placement_group.id.hex()
        ray_local.kill(probe)
    assert _state("run-a-EngineStage") == {"REMOVED"}


class _Where:
    def group(self) -> str:
        import ray

        return ray.util.get_current_placement_group().id.hex()


def test_room_the_cluster_cannot_hold_is_refused_by_pool_within_the_wait(ray_local):
    steps = [_step(EngineStage, cpus=64, actors=1, placement="reserved")]
    with pytest.raises(ReservationError, match=r"EngineStage's 1 actor\(s\) \(\{'CPU': 64\} each\) within 2 s"):
        with reserved(steps, "run-b", timeout_s=2):
            pass
    assert _state("run-b-EngineStage") == {"REMOVED"}


def test_a_group_left_unplaced_past_the_wait_interrupts_the_run_by_name(ray_local):
    """What a group whose node died looks like to the watch: not CREATED. (Placed, then losing
    its node, is the multi-node test's: tests/cluster/test_multinode.py.)"""
    import threading
    import time

    from ray.util.placement_group import placement_group, remove_placement_group

    from etl.reservations import RoomWatch

    step = _step(EngineStage, cpus=64, actors=1, placement="reserved")
    group = placement_group(bundles(step), name="run-c-EngineStage")
    # the interrupt itself (SIGINT to the driver's main thread, raised as ReservationError) is
    # the multi-node test's: a pytest session's own SIGINT handling is not the driver's
    interrupted = threading.Event()
    watch = RoomWatch({"EngineStage": group}, [step], timeout_s=1, check_every_s=0.2, interrupt=interrupted.set)
    started = time.monotonic()
    try:
        watch.start()
        assert interrupted.wait(10)
        assert watch.lost and "EngineStage's actors lost the node" in watch.lost and "within 1 s" in watch.lost
        assert time.monotonic() - started < 5
    finally:
        watch.stop.set()
        remove_placement_group(group)


def test_the_watch_stays_quiet_while_the_groups_are_placed(ray_local):
    import threading
    import time

    from etl.reservations import RoomWatch

    steps = [_step(EngineStage, cpus=0.5, actors=1, placement="reserved")]
    with reserved(steps, "run-d", timeout_s=60) as strategies:
        interrupted = threading.Event()
        watch = RoomWatch({"EngineStage": strategies["EngineStage"].placement_group}, steps, timeout_s=0.5,
                          check_every_s=0.1, interrupt=interrupted.set)
        watch.start()
        time.sleep(1.5)  # three times the wait: a placed group never trips it
        watch.stop.set()
        assert not interrupted.is_set() and watch.lost is None
