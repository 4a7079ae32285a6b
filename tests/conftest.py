import os

import pytest

from tests.s3_server import S3Server, aws_environment, free_port

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# The loopback S3 server's address goes into the standard AWS variables before anything starts,
# so every process of the session (Ray workers, job subprocesses) reaches it the standard way.
_S3 = S3Server(free_port())
os.environ.update(aws_environment(_S3.endpoint))
os.environ["AWS_MAX_ATTEMPTS"] = "6"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, its own process, for the whole session."""
    _S3.start()
    yield _S3
    _S3.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket per test: s3://<name>."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-") \
        + "-" + os.urandom(3).hex()
    return s3_server.create_bucket(name)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, sized like the CI machine (2 CPUs)."""
    import ray

    from etl import ray_settings

    ray_settings.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny random-weight Qwen3-VL, CLIP and VAE checkpoints, built once per session."""
    from etl.models.tiny import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))
