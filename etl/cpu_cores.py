"""Cores for a vLLM engine on a CPU node, and the rest of the node's work kept off them.

Ray counts CPUs but does not pin processes to cores. vLLM's CPU backend binds its OpenMP
threads itself (left on `auto` it takes every core of the node), and its scheduler and
frontend threads run wherever the kernel puts them: measured on 2 cores, an engine given 1 CPU
used 1.97 cores' time. So an engine claims as many cores as Ray gave its actor, each with an
exclusive file lock that the kernel drops when the process dies (a restarted actor claims
again), confines its whole process tree to them, and binds its threads to them
(`VLLM_CPU_OMP_THREADS_BIND`). It also writes which cores it holds, so that the job's other
stages on that node (read, decode, encoders, write), which Ray gave the node's other CPUs,
run on the other cores (`keep_off_engine_cores`) instead of preempting the engine.
"""

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

LOCK_DIR = Path(tempfile.gettempdir()) / "mm-curate-cores"
_CGROUP_CPUSETS = ("/sys/fs/cgroup/cpuset.cpus.effective", "/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
_held: list = []  # open lock files: a core stays claimed while its engine's process lives
_mask_before_claim: Optional[set[int]] = None


def parse_cpu_list(text: str) -> list[int]:
    """The kernel's CPU list format: "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]."""
    cores = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cores.extend(range(int(first), int(last or first) + 1))
    return cores


def node_cores() -> list[int]:
    """Every core this node's cgroup allows: not this process's mask, which a stage may have
    narrowed (Ray reuses worker processes)."""
    for path in _CGROUP_CPUSETS:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if text.strip():
            return parse_cpu_list(text)
    return list(range(os.cpu_count() or 1))


def _engine_file(pid: int) -> Path:
    return LOCK_DIR / f"engine-{pid}.cores"


def _confine(cores: set[int]) -> None:
    """Every thread of this process (sched_setaffinity is per thread; new threads and child
    processes inherit the mask of the thread that makes them)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that just ended
            continue


def claim_cores(count: int) -> list[int]:
    """`count` of the node's cores that no other live engine holds, highest first, and this
    process confined to them. When fewer are free (cores claimed outside Ray's accounting), the
    rest are shared ones."""
    global _mask_before_claim
    candidates = sorted(node_cores(), reverse=True)
    count = max(1, min(count, len(candidates)))
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    claimed = []
    for core in candidates:
        if len(claimed) == count:
            break
        handle = open(LOCK_DIR / f"core-{core}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        claimed.append(core)
    if len(claimed) < count:
        shared = [core for core in candidates if core not in claimed][:count - len(claimed)]
        logger.warning("only %d of %d cores free for this engine; sharing %s", len(claimed), count, shared)
        claimed += shared
    claimed.sort()
    _engine_file(os.getpid()).write_text(f"{_started(os.getpid())} {','.join(map(str, claimed))}")
    _mask_before_claim = os.sched_getaffinity(0)
    _confine(set(claimed))
    return claimed


def release_cores() -> None:
    """Give back every core this process claimed (its engine has stopped) and its former mask."""
    global _mask_before_claim
    _engine_file(os.getpid()).unlink(missing_ok=True)
    while _held:
        _held.pop().close()
    if _mask_before_claim is not None:
        _confine(_mask_before_claim)
        _mask_before_claim = None


def _started(pid: int) -> Optional[float]:
    """When process `pid` started (None: there is none): with the pid, it names one process even
    after the kernel reuses the pid."""
    import psutil  # a Ray dependency

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def engine_cores_in_use() -> set[int]:
    """Cores that live engines on this machine hold. The record of an engine that died without
    giving its cores back (killed, or its actor gone) is removed."""
    held: set[int] = set()
    try:
        files = list(LOCK_DIR.glob("engine-*.cores"))
    except OSError:
        return held
    for path in files:
        pid = int(path.name.split("-")[1].split(".")[0])
        try:
            started, _, cores = path.read_text().partition(" ")
            live = _started(pid) == float(started)
        except (OSError, ValueError):
            continue
        if pid == os.getpid():
            continue
        if not live:
            path.unlink(missing_ok=True)
            continue
        held.update(parse_cpu_list(cores))
    return held


def keep_off_engine_cores() -> None:
    """Confine this process to the node's cores no live engine holds (all of them when engines
    hold every core or none). Called per batch: engines start and restart while stages run."""
    cores = node_cores()
    free = set(cores) - engine_cores_in_use()
    target = free or set(cores)
    if os.sched_getaffinity(0) != target:
        _confine(target)


def thread_binding(cores: list[int]) -> str:
    """vLLM's `VLLM_CPU_OMP_THREADS_BIND` for one engine rank: "0,1,5"."""
    return ",".join(str(core) for core in cores)
