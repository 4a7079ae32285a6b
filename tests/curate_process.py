"""`python -m jobs.curate` as a real process, the way people launch it: the end-to-end tests
start it, kill it, and read what it printed."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def curate(config_file, source_uri, output, *flags, env=None, ray_address=None) -> subprocess.Popen:
    """Start the job in its own process group (so a test can kill it and its children) and
    return the Popen."""
    command = [sys.executable, "-m", "jobs.curate", "--config", str(config_file), "--input", source_uri,
               "--output", output, *flags]
    if ray_address:
        command += ["--ray-address", ray_address]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process, timeout=600) -> str:
    """Wait for the job; its output, or a failure that shows the end of it."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output
