"""Engine cores on a CPU node: an engine's claim confines its process, other stages move off the
claimed cores while it lives, and a killed engine's cores come back."""

import os
import subprocess
import sys

import pytest

from etl import cpu_cores

ENGINE = """
import sys, time
from etl.cpu_cores import claim_cores
cores = claim_cores(1)
print(cores[0], flush=True)
time.sleep(60)
"""


def test_the_kernel_cpu_list_format():
    assert cpu_cores.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpu_cores.parse_cpu_list("5") == [5]
    assert cpu_cores.parse_cpu_list("") == []


def test_node_cores_are_the_cores_this_machine_allows():
    assert set(os.sched_getaffinity(0)) <= set(cpu_cores.node_cores())


@pytest.fixture
def restored_mask():
    before = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, before)


def _engine_holding_a_core():
    engine = subprocess.Popen([sys.executable, "-c", ENGINE], stdout=subprocess.PIPE, text=True)
    core = int(engine.stdout.readline())
    return engine, core


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_other_stages_leave_a_live_engines_cores_and_take_them_back_when_it_dies(restored_mask):
    engine, core = _engine_holding_a_core()
    try:
        # the engine process itself runs on its claimed core only
        assert os.sched_getaffinity(engine.pid) == {core}
        assert core in cpu_cores.engine_cores_in_use()
        cpu_cores.keep_off_engine_cores()
        assert core not in os.sched_getaffinity(0)
        assert os.sched_getaffinity(0) == set(cpu_cores.node_cores()) - {core}
    finally:
        engine.kill()
        engine.wait()
    # SIGKILL: its record stays, but a dead process holds nothing, and the record goes
    assert core not in cpu_cores.engine_cores_in_use()
    assert not (cpu_cores.LOCK_DIR / f"engine-{engine.pid}.cores").exists()
    cpu_cores.keep_off_engine_cores()
    assert os.sched_getaffinity(0) == set(cpu_cores.node_cores())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_second_engine_claims_another_core_and_a_released_core_is_free_again(restored_mask):
    engine, core = _engine_holding_a_core()
    try:
        mine = cpu_cores.claim_cores(1)
        assert mine != [core]
        assert os.sched_getaffinity(0) == set(mine)
        cpu_cores.release_cores()
        assert not (cpu_cores.LOCK_DIR / f"engine-{os.getpid()}.cores").exists()
        again = subprocess.run([sys.executable, "-c", "from etl.cpu_cores import claim_cores; print(claim_cores(1)[0])"],
                               capture_output=True, text=True, check=True)
        assert int(again.stdout) == mine[0]
    finally:
        engine.kill()
        engine.wait()


def test_keep_off_uses_every_core_when_engines_hold_none(restored_mask, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_cores, "LOCK_DIR", tmp_path / "none")
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cpu_cores.keep_off_engine_cores()
    assert os.sched_getaffinity(0) == set(cpu_cores.node_cores())
