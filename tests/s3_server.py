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


class GatedProxy:
    """An S3 endpoint in front of `upstream` that passes every request through, except GETs of
    keys ending in `held_suffix`: their bodies trickle (a few bytes every 2 s, so the client's
    low-speed timeout does not fire) until `gate` is set or `max_hold_s` passes. It lets a test
    hold back the last read of a run and see what the rest of the pipeline does meanwhile. It runs
    in the test process, so the test must only wait (a subprocess does the work) while it serves."""

    def __init__(self, upstream: str, held_suffix: str, max_hold_s: float):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.held_suffix, self.max_hold_s = held_suffix, max_hold_s
        self.gate = threading.Event()
        self.held = 0
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the AWS SDK keeps connections alive

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held = self.command == "GET" and urlsplit(self.path).path.endswith(proxy.held_suffix)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body, dict(self.headers))
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                # a HEAD answer keeps the object's length; anything else carries its payload's
                length = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if held:
                    proxy.held += 1
                    deadline = time.monotonic() + proxy.max_hold_s
                    while len(payload) > 8 and not proxy.gate.wait(2) and time.monotonic() < deadline:
                        self.wfile.write(payload[:8])
                        self.wfile.flush()
                        payload = payload[8:]
                self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "GatedProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
