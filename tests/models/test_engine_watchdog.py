"""The engine watchdog exits its process when an engine process dies, and only then: a child
the process had before the engine started (a Ray worker, a test's subprocess) may end."""

import subprocess
import sys
import textwrap


def test_only_the_engines_own_processes_are_watched():
    script = textwrap.dedent("""
        import subprocess, sys, time
        from etl.models.vllm_captioner import EngineWatchdog, child_pids
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        earlier = child_pids()
        engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        watchdog = EngineWatchdog(earlier, interval=0.1)
        other.kill(); other.wait()
        time.sleep(1.0)
        print("alive after another child ended", flush=True)
        engine.kill(); engine.wait()
        time.sleep(5.0)
        print("still alive after the engine died", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "alive after another child ended" in done.stdout, done.stderr
    assert "still alive" not in done.stdout and done.returncode == 1, (done.stdout, done.stderr)
    assert "died; exiting so that Ray restarts this actor" in done.stderr
