"""Cores for a vLLM engine on a CPU node.

Ray counts CPUs but does not pin processes to cores, and vLLM's CPU backend binds its OpenMP
threads itself: left on `auto` it takes every core of the node, and two engines on one node
would spin on the same cores. An engine claims as many cores as Ray gave its actor, each with
an exclusive file lock that the kernel drops when the process dies (a restarted actor claims
again), and binds its threads to those (`VLLM_CPU_OMP_THREADS_BIND`).
"""

import fcntl
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_DIR = Path(tempfile.gettempdir()) / "mm-curate-cores"
_held: list = []  # open lock files: a core stays claimed while its engine's process lives


def claim_cores(count: int) -> list[int]:
    """`count` of this process's allowed cores that no other live engine holds, lowest first.
    When fewer are free (cores claimed outside Ray's accounting), the rest are shared ones."""
    allowed = sorted(os.sched_getaffinity(0))
    count = max(1, min(count, len(allowed)))
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    claimed = []
    for core in allowed:
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
        shared = [core for core in allowed if core not in claimed][:count - len(claimed)]
        logger.warning("only %d of %d cores free for this engine; sharing %s", len(claimed), count, shared)
        claimed += shared
    return sorted(claimed)


def release_cores() -> None:
    """Give back every core this process claimed (its engine has stopped)."""
    while _held:
        _held.pop().close()


def thread_binding(cores: list[int]) -> str:
    """vLLM's `VLLM_CPU_OMP_THREADS_BIND` for one engine rank: "0,1,5"."""
    return ",".join(str(core) for core in cores)
