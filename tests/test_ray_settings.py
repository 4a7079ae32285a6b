import subprocess
import sys
import textwrap

# A local Ray started the job's way, with four actors on 2 CPUs (as the job's pools hold them):
# read tasks a few seconds apart must land on the same worker process, not a fresh one each.
PROBE = textwrap.dedent("""
    import os, time
    import ray
    from etl import ray_settings

    ray_settings.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")

    @ray.remote(num_cpus=0.4)
    class Model:
        def pid(self):
            return os.getpid()

    models = [Model.remote() for _ in range(4)]
    ray.get([m.pid.remote() for m in models])

    @ray.remote(num_cpus=0.1)
    def read():
        return os.getpid()

    pids = []
    for _ in range(6):
        pids.append(ray.get(read.remote()))
        time.sleep(2)  # longer than Ray's default 1 s idle-worker life
    print("PIDS", len(set(pids)))
""")


def _worker_processes(env_override: dict) -> int:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_idle_worker")} | env_override
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.split("PIDS")[-1])


def test_a_local_ray_started_by_the_job_reuses_idle_read_workers():
    # 1 here; an idle worker left over from starting the actors may take a turn
    assert _worker_processes({}) <= 2


def test_without_the_setting_each_read_task_starts_a_fresh_worker():
    # the failure the setting prevents, so the probe above is known to be able to see it
    assert _worker_processes({"RAY_idle_worker_killing_time_threshold_ms": "1000"}) == 6
