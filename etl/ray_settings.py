"""Settings the job needs from the Ray it runs on, applied where the job starts Ray itself.

Ray kills an idle task worker 1 s after its task once a node runs more worker processes than it
has CPUs, and the job's model and decode actors alone pass that on small nodes. Every read task
then starts a fresh Python process that re-imports Ray Data and pyarrow (~3 s of CPU here, once
per shard group; 121 processes in the first 37 min of a 1M-sample run). Idle workers kept for a
minute are reused by the next read task instead. A cluster the job joins must set the same
variables when its nodes start: cluster/aws.yaml and cluster/Dockerfile do.
"""

import os

WORKER_SETTINGS = {"RAY_idle_worker_killing_time_threshold_ms": "60000"}


def init(**kwargs):
    """`ray.init(**kwargs)`; a local cluster it starts inherits WORKER_SETTINGS (a value the
    environment already sets wins)."""
    import ray

    for name, value in WORKER_SETTINGS.items():
        os.environ.setdefault(name, value)
    return ray.init(**kwargs)
