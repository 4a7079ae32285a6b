"""A real multi-node Ray cluster on this machine, for the tests: a head that runs no work
(`--num-cpus 0`, as cluster/aws.yaml's) and worker nodes, each its own `ray start --address`
raylet with its own CPUs, memory, object store and temp folder (no shared disk assumed).

Nodes start one after the other: started together on 2 cores they time out joining. Every
process a node starts lives in that node's process group, so `kill_node` SIGKILLs a node the way
a lost spot instance goes, and `stop` leaves nothing behind. Jobs reach the cluster through
`ray job submit` and run the installed project (no `--working-dir`: nodes on one machine would
race unpacking it)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tests.s3_server import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    temp_dir: str
    node_id: Optional[str] = None


@dataclass
class RayCluster:
    root: str                          # short: Ray's socket paths must stay under 108 bytes
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        return env

    def _start(self, name: str, arguments: list[str]) -> Node:
        temp_dir = os.path.join(self.root, name)
        os.makedirs(temp_dir, exist_ok=True)
        # --block: the node's processes live and die with this one, in its own process group
        with open(os.path.join(self.root, f"{name}.log"), "ab") as log:
            process = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
                                        "--temp-dir", temp_dir, "--disable-usage-stats", *arguments],
                                       env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, process, temp_dir)
        self.nodes.append(node)
        return node

    def start_head(self, cpus: float = 0, attempts: int = 2) -> Node:
        """The head; with no CPUs (the default, as production's) it runs the driver and no work.
        Tried again on fresh ports when `ray start` gives up: it waits a fixed 30 s for its
        raylet to register, which a loaded 2-core machine missed once ("GCS cannot find the node")."""
        for attempt in range(attempts):
            try:
                return self._start_head(cpus)
            except AssertionError:
                if attempt == attempts - 1:
                    raise
                failed = self.nodes.pop()
                try:  # the GCS and raylet it started outlive `ray start` in its process group
                    self.kill_node(failed)
                except ProcessLookupError:
                    pass
                shutil.rmtree(failed.temp_dir, ignore_errors=True)
                self.port, self.dashboard_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_head(self, cpus: float) -> Node:
        agent_http, agent_grpc, metrics = free_port(), free_port(), free_port()
        memory = ["--memory", "0", "--object-store-memory", str(256 << 20)] if not cpus else []
        head = self._start("head", [
            "--head", "--port", str(self.port), "--num-cpus", str(cpus), "--num-gpus", "0", *memory,
            "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            # other clusters on this machine (the test session's) hold the default agent ports
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics)])
        self._wait_for(lambda: len(self.alive_nodes()) == 1, head, "the dashboard to list the head")
        head.node_id = self.alive_nodes()[0].node_id
        return head

    def add_worker(self, name: str, cpus: float, memory_gb: float, object_store_gb: float = 0.5,
                   resources: Optional[dict] = None, gpus: int = 0, accelerator: Optional[str] = None) -> Node:
        """A worker node; `resources` (custom ones) stand for its node type. `gpus` are logical:
        a stand-in GPU node, whose `accelerator` (Ray's accelerator type, e.g. L4) tells the
        planner its GPU memory. The models placed there find no CUDA and run on its CPUs."""
        known = {n.node_id for n in self.alive_nodes()}
        resources = {**(resources or {}), **({f"accelerator_type:{accelerator}": 1} if accelerator else {})}
        arguments = ["--address", self.address, "--num-cpus", str(cpus), "--num-gpus", str(gpus),
                     "--memory", str(int(memory_gb * (1 << 30))),
                     "--object-store-memory", str(int(object_store_gb * (1 << 30))),
                     "--dashboard-agent-listen-port", str(free_port()),
                     "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port())]
        if resources:
            arguments += ["--resources", json.dumps(resources)]
        node = self._start(name, arguments)
        self._wait_for_worker(node, known)
        return node

    def _wait_for_worker(self, node: Node, known: set, timeout: float = 120) -> None:
        def joined() -> bool:
            new = [n for n in self.alive_nodes() if n.node_id not in known]
            if new:
                node.node_id = new[0].node_id
            return bool(new)
        self._wait_for(joined, node, f"node {node.name} to join", timeout)

    def alive_nodes(self) -> list:
        """Ray's State API `NodeState`s of the live nodes; none while the dashboard is not up."""
        from ray.util.state import list_nodes
        from ray.util.state.exception import RayStateApiException

        try:
            return list_nodes(self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        except RayStateApiException:
            return []

    def actors(self) -> list:
        from ray.util.state import list_actors

        return list_actors(self.dashboard, limit=1000, detail=True, raise_on_missing_output=False)

    def _wait_for(self, condition, node: Node, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                with open(os.path.join(self.root, f"{node.name}.log"), errors="replace") as log:
                    said = log.read()[-3000:]
                raise AssertionError(f"ray start for {node.name} exited ({node.process.returncode}) waiting for "
                                     f"{what}:\n{said}")
            if condition():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def kill_node(self, node: Node) -> None:
        """SIGKILL every process of `node` at once: its raylet, object store and workers."""
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(30)

    def submit(self, entrypoint: list[str], timeout: float = 900, no_wait: bool = False,
               options: tuple = ()) -> subprocess.CompletedProcess:
        """`ray job submit [options] -- entrypoint`, by default run by the installed project;
        retried while the head's job agent is still coming up."""
        command = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, *options]
        command += ["--no-wait"] if no_wait else []
        for _ in range(30):
            submitted = subprocess.run([*command, "--", *entrypoint], env=self.env(), capture_output=True,
                                       text=True, timeout=timeout)
            if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
                return submitted
            time.sleep(2)
        return submitted

    def stop(self) -> None:
        """SIGKILL every node: what they leave on disk is under `root`, removed here."""
        for node in self.nodes:
            if node.process.poll() is None:
                self.kill_node(node)
        # `ray start` records its address for later `ray.init()` calls on this machine; a
        # stopped head's record would make them try to join a dead cluster
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{self.port}"):
            record.unlink()
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster() -> RayCluster:
    return RayCluster(tempfile.mkdtemp(prefix="rc", dir="/tmp"))


def submitted_job(root: Path, samples: int, per_shard: int, broken: int, **sink) -> Path:
    """What the tests submit, under `root`: an MDS dataset of `samples` samples of 3 JPEG frames
    (sample `broken` truncated) in `per_shard`-sample shards, the tiny models, and `job.yaml`:
    local.yaml with them and the transformers captioner (vLLM's engine start costs a minute per
    start), `sink` overriding its sink section."""
    import yaml

    from etl.mds import MDSWriter
    from etl.models.tiny import ensure_tiny_models
    from etl.synthetic import jpeg_frames

    pool = jpeg_frames(4, 64, 48)
    with MDSWriter(str(root / "mds"), columns={"frames": "jpeg_array", "text": "str"},
                   size_limit=per_shard * 3 * len(pool[0])) as writer:
        for i in range(samples):
            frames = [pool[(i + k) % 4] for k in range(3)]
            if i == broken:
                frames[2] = frames[2][:150]  # no JPEG header left
            writer.write({"frames": frames, "text": f"clip {i}"})
    tiny = ensure_tiny_models(root / "models")
    config = yaml.safe_load((REPO / "jobs/configs/local.yaml").read_text())
    config["frames"].update({"min_pixels": 32 * 32, "max_pixels": 64 * 64, "crop_size": 64})
    config["models"].update({"build_tiny_if_missing": False})
    config["models"]["captioner"].update({"model": str(tiny["qwen3_vl"]), "max_new_tokens": 8,
                                          "backend": "transformers"})
    config["models"]["embedder"]["model"] = str(tiny["clip"])
    config["models"]["vae"]["model"] = str(tiny["vae"])
    config["sink"].update(sink)
    (root / "job.yaml").write_text(yaml.safe_dump(config))
    return root / "job.yaml"
