"""A real S3-compatible server on 127.0.0.1 for the tests: moto's server mode, in its own process
(in-process, its server thread starves under the GIL and some delta-rs calls hang)."""

import socket
import subprocess
import sys
import time
from typing import Optional

ACCESS_KEY = "AKIAETLTESTS0000KEY"
SECRET_KEY = "etl-tests-secret-never-logged-6f1d2c"  # tests grep outputs for it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aws_environment(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point every client (pyarrow, delta-rs, boto3) at `endpoint`."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class S3Server:
    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "S3Server":
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"moto server exited with {self.process.returncode}")
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not listen on {self.endpoint} within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self, endpoint: Optional[str] = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def put_tree(self, local_root, uri: str) -> None:
        """Upload a local directory under s3://bucket/prefix."""
        from pathlib import Path

        bucket, _, prefix = uri[len("s3://"):].partition("/")
        client = self.client()
        for path in sorted(Path(local_root).rglob("*")):
            if path.is_file():
                key = "/".join(filter(None, [prefix, str(path.relative_to(local_root))]))
                client.upload_file(str(path), bucket, key)

    def keys(self, uri: str) -> list[str]:
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
