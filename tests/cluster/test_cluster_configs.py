"""The launch configs in cluster/ against the validators of the tools that consume them:

- `cluster/aws.yaml`: Ray's own `prepare_config` + `validate_config` (ray-schema.json shipped in
  the installed ray), exactly what `ray up` runs before it contacts AWS;
- `cluster/kuberay/*.yaml`: every pod template against Kubernetes' core/v1 schema
  (`kubernetes-validate`, unknown fields rejected), and the KubeRay fields the operator reads;
- `cluster/runtime_env.yaml`: Ray's runtime_env parsing and packaging, as `ray job submit` does;

plus what users and `python -m jobs.plan` rely on: explicit node resources, accelerator types,
no work on the head, and sizes that fit the instance types.
"""

import copy
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
GIB = 1 << 30


@dataclass(frozen=True)
class Instance:
    vcpus: int
    memory: int
    gpus: int = 0
    accelerator: Optional[str] = None   # Ray's accelerator type name


# The AWS instance types the configs name (AWS's published sizes).
INSTANCES = {
    "m7i.4xlarge": Instance(16, 64 * GIB),
    "m7i.16xlarge": Instance(64, 256 * GIB),
    "g6e.12xlarge": Instance(48, 384 * GIB, 4, "L40S"),
}
OBJECT_STORE_SHARE = 0.3   # Ray's default object store: 30% of the node's memory
OS_HEADROOM = 8 * GIB      # OS, raylet, GCS clients, docker


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# --- cluster/aws.yaml: the Ray cluster launcher ---------------------------------------------------

def ray_up_validate(config: dict) -> dict:
    """What `ray up` does to a config before it touches the cloud: fill in the provider's
    defaults, then validate against ray-schema.json (and the cross-field checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_passes_ray_up_validation():
    prepared = ray_up_validate(load(CLUSTER / "aws.yaml"))
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _set(path: str, value):
    def mutate(config):
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    return mutate


@pytest.mark.parametrize("mutate, error", [
    (_set("available_node_types.gpu_worker.resources.CPU", "48"), jsonschema.ValidationError),
    (_set("available_node_types.gpu_worker.resources.memory", "240Gi"), jsonschema.ValidationError),
    (_set("available_node_types.gpu_worker.labels", {"ray.io/accelerator-type": 4}), jsonschema.ValidationError),
    (_set("available_node_types.cpu_worker.resource", {"CPU": 64}), jsonschema.ValidationError),
    (_set("available_node_types.cpu_worker.min_workers", 99), ValueError),
], ids=["cpu-as-string", "memory-as-quantity", "label-not-string", "unknown-key", "min-over-max-workers"])
def test_aws_validation_rejects_a_broken_copy(mutate, error):
    config = load(CLUSTER / "aws.yaml")
    mutate(config)
    with pytest.raises(error):
        ray_up_validate(config)


def test_aws_node_types_state_resources_and_accelerators():
    """The planner's contract: integer CPU, GPU and memory on every type, the accelerator label on
    every GPU type; and the head takes no work."""
    config = load(CLUSTER / "aws.yaml")
    for name, node in config["available_node_types"].items():
        resources = node["resources"]
        for key in ("CPU", "GPU", "memory"):
            assert type(resources.get(key)) is int, f"{name}: resources.{key} must be an integer"
        if resources["GPU"]:
            accelerator = node.get("labels", {}).get("ray.io/accelerator-type")
            assert accelerator, f"{name}: GPU node type without labels['ray.io/accelerator-type']"
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    assert head == {"CPU": 0, "GPU": 0, "memory": 0}, "the head must not be offered tasks or actors"


def test_aws_node_types_fit_their_instances():
    config = load(CLUSTER / "aws.yaml")
    for name, node in config["available_node_types"].items():
        instance_type = node["node_config"]["InstanceType"]
        assert instance_type in INSTANCES, f"{name}: add {instance_type}'s sizes to INSTANCES"
        instance, resources = INSTANCES[instance_type], node["resources"]
        assert resources["CPU"] <= instance.vcpus, f"{name}: more CPUs than {instance_type} has"
        assert resources["GPU"] == instance.gpus, f"{name}: {instance_type} has {instance.gpus} GPUs"
        assert node.get("labels", {}).get("ray.io/accelerator-type") == instance.accelerator, \
            f"{name}: {instance_type}'s GPUs are {instance.accelerator}"
        if name == config["head_node_type"]:
            continue
        room = instance.memory * (1 - OBJECT_STORE_SHARE) - OS_HEADROOM
        assert instance.memory * 0.4 <= resources["memory"] <= room, \
            f"{name}: memory {resources['memory'] / GIB:.0f} GiB should be 40%..{room / GIB:.0f} GiB of {instance_type}"
        assert node.get("max_workers", 0) >= 1, f"{name}: a worker type the autoscaler may never start"


def test_aws_nodes_run_this_projects_ray_and_install_it():
    config = load(CLUSTER / "aws.yaml")
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-"), \
        f"the image's Ray must be the installed {ray.__version__} (pyproject.toml's pin)"
    synced = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert synced, "the working tree is not synced to the nodes"
    assert any(f"{synced[0]}[models,gpu]" in command for command in config["setup_commands"]), \
        "setup_commands must install the synced project with its models and gpu extras"
    # rsync matches an unanchored pattern at any depth: "models" would also drop etl/models/.
    code_dirs = {part for package in ("etl", "jobs", "schemas") for path in (ROOT / package).rglob("*")
                 for part in path.relative_to(ROOT).parts}
    for pattern in config["rsync_exclude"]:
        if not pattern.startswith("/"):
            assert pattern.strip("/") not in code_dirs, f"rsync_exclude {pattern!r} also drops code: anchor it"


# --- cluster/kuberay/: RayCluster and RayJob ----------------------------------------------------
# KubeRay publishes its CRDs only on GitHub (and its GitHub Pages Helm repository), which this
# project's machines cannot reach; no package registry carries them. What a registry does carry
# is the Kubernetes API's own schemas (`kubernetes-validate` on PyPI): every pod template in the
# manifests is validated against core/v1 PodTemplateSpec with unknown fields rejected, as the
# API server does for the pods KubeRay creates. The KubeRay fields themselves are held to what
# the operator reads (below and in the contract tests).

K8S_VERSION = "1.30"  # kubernetes-validate ships schemas per minor version


def pod_templates(manifest: dict) -> dict[str, dict]:
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    groups = {"head": spec["headGroupSpec"]}
    groups.update({group["groupName"]: group for group in spec.get("workerGroupSpecs", [])})
    return {name: group["template"] for name, group in groups.items()}


def pod_template_errors(template: dict) -> list[str]:
    import kubernetes_validate

    document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    try:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


MANIFESTS = ("raycluster.yaml", "rayjob.yaml")


@pytest.mark.parametrize("file", MANIFESTS)
def test_kuberay_pod_templates_are_valid_kubernetes_pods(file):
    manifest = load(CLUSTER / "kuberay" / file)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in ("RayCluster", "RayJob")
    templates = pod_templates(manifest)
    assert set(templates) >= {"head", "cpu", "gpu-l40s"}
    for name, template in templates.items():
        assert not pod_template_errors(template), (name, pod_template_errors(template))


@pytest.mark.parametrize("file", MANIFESTS)
def test_kuberay_start_params_are_strings_and_replicas_integers(file):
    """KubeRay reads rayStartParams as map[string]string and replica counts as int32: YAML
    numbers in the first or strings in the second make the operator reject the object."""
    spec = load(CLUSTER / "kuberay" / file)["spec"]
    spec = spec.get("rayClusterSpec", spec)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), group.get("rayStartParams")
    for group in spec["workerGroupSpecs"]:
        counts = [group[key] for key in ("replicas", "minReplicas", "maxReplicas")]
        assert all(isinstance(c, int) for c in counts) and counts[1] <= counts[0] <= counts[2], counts


@pytest.mark.parametrize("mutate", [
    lambda pod: pod["spec"]["containers"][0].update(imagePullPolicyy="Always"),      # a typo
    lambda pod: pod["spec"]["containers"][0].update(ports=[{"containerPort": "6379"}]),  # a string port
    lambda pod: pod["spec"].update(tolerations={"key": "nvidia.com/gpu"}),             # a map, not a list
], ids=["unknown-field", "port-as-string", "tolerations-not-a-list"])
def test_pod_template_validation_rejects_a_broken_copy(mutate):
    template = pod_templates(load(CLUSTER / "kuberay" / "raycluster.yaml"))["gpu-l40s"]
    mutate(template)
    assert pod_template_errors(template)


def test_rayjob_runs_the_raycluster_spec():
    cluster = load(CLUSTER / "kuberay" / "raycluster.yaml")
    job = load(CLUSTER / "kuberay" / "rayjob.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], \
        "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec"
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def _cpus(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(quantity) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}
    text = str(quantity)
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * units[suffix])
    return int(text)


def test_kuberay_groups_state_resources_and_accelerators():
    """The planner's contract: the head takes no work; every worker group has its counts, one
    ray-worker container with cpu/memory limits, and GPU groups name their GPU product."""
    spec = load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["workerGroupSpecs"], "no worker groups"
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1, name
        pod = group["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["ray-worker"], name
        resources = pod["containers"][0]["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"]), f"{name}: limits need cpu and memory"
        assert resources.get("requests") == resources["limits"], f"{name}: requests != limits (not Guaranteed QoS)"
        product = pod.get("nodeSelector", {}).get("nvidia.com/gpu.product")
        if int(resources["limits"].get("nvidia.com/gpu", 0)):
            assert product, f"{name}: GPU group without nodeSelector nvidia.com/gpu.product"
        else:
            assert product is None, f"{name}: a GPU product selector on a group that asks for no GPU"


def test_kuberay_groups_fit_their_instances():
    spec = load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    for group in spec["workerGroupSpecs"]:
        name, pod = group["groupName"], group["template"]["spec"]
        instance_type = pod.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
        assert instance_type in INSTANCES, f"{name}: select a known instance type (INSTANCES)"
        instance, limits = INSTANCES[instance_type], pod["containers"][0]["resources"]["limits"]
        # kubelet, system reservations and daemonsets take ~1 vCPU and a few GiB of every node
        assert _cpus(limits["cpu"]) <= instance.vcpus - 1, f"{name}: cpu does not fit {instance_type}"
        assert instance.memory * 0.5 <= _bytes(limits["memory"]) <= instance.memory * 0.92, \
            f"{name}: memory should be 50-92% of {instance_type}'s {instance.memory // GIB} GiB"
        assert int(limits.get("nvidia.com/gpu", 0)) == instance.gpus, f"{name}: {instance_type} has {instance.gpus} GPUs"
        if instance.accelerator:
            assert pod["nodeSelector"]["nvidia.com/gpu.product"] == f"NVIDIA-{instance.accelerator}", name


def test_kuberay_runs_this_projects_ray():
    spec = load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    assert spec["rayVersion"] == ray.__version__
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile, "cluster/Dockerfile's base image is another Ray"


def test_every_node_starts_ray_with_the_jobs_worker_settings():
    from etl.ray_settings import WORKER_SETTINGS

    config = load(CLUSTER / "aws.yaml")
    dockerfile = (CLUSTER / "Dockerfile").read_text().splitlines()  # the KubeRay pods' image
    for name, value in WORKER_SETTINGS.items():
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            starts = [c for c in config[key] if "ray start" in c]
            assert starts and all(f"{name}={value} ray start" in c for c in starts), (key, name)
        assert f"ENV {name}={value}" in dockerfile, name


def test_rayjob_entrypoint_is_a_valid_curation_run():
    """The entrypoint parses as `jobs.curate` arguments, its config loads, and the runtime env
    makes the image's copy of the project the working dir (where the relative --config resolves)."""
    from ray.runtime_env import RuntimeEnv

    from etl.config import load_config
    from jobs.curate import parse_args

    spec = load(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.curate"]
    args = parse_args(argv[3:])
    config = load_config(str(ROOT / args.config), {"input": args.input, "output": args.output})
    assert config.models.captioner.backend == "vllm" and not config.models.build_tiny_if_missing
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = next(line.split()[1] for line in (CLUSTER / "Dockerfile").read_text().splitlines()
                   if line.startswith("WORKDIR"))
    assert runtime_env.pop("working_dir") == workdir
    RuntimeEnv(**runtime_env)   # the rest as Ray validates it (the working dir exists only in the image)


# --- cluster/runtime_env.yaml: `ray job submit --runtime-env` ------------------------------------------

def submitted_runtime_env(path: Path) -> dict:
    """The runtime env `ray job submit --runtime-env PATH` builds, validated by Ray."""
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    return dict(RuntimeEnv(**parse_runtime_env_args(runtime_env=str(path))))


def test_runtime_env_is_valid_for_ray_job_submit():
    env = submitted_runtime_env(CLUSTER / "runtime_env.yaml")
    assert env["working_dir"] == "."
    assert all(isinstance(value, str) for value in env["env_vars"].values())


@pytest.mark.parametrize("text, error", [
    ("working_dir: .\nexcludes: .venv/\n", r"runtime_env\['excludes'\] must be of type List\[str\]"),
    ("working_dir: .\nenv_vars: {A: 0}\n", r"runtime_env\['env_vars'\] must be of type Dict\[str, str\], but the value 0"),
], ids=["excludes-not-a-list", "env-var-not-a-string"])
def test_runtime_env_validation_rejects_a_broken_copy(tmp_path, text, error):
    (tmp_path / "env.yaml").write_text(text)
    with pytest.raises(TypeError, match=error):
        submitted_runtime_env(tmp_path / "env.yaml")


def test_runtime_env_ships_the_code_and_not_the_venv():
    """Ray's own packaging walk over the repo with the file's excludes alone (.gitignore off, so
    the file does not lean on it): the job's code travels, the virtualenv and data do not."""
    from ray._private.runtime_env import packaging

    excludes = submitted_runtime_env(CLUSTER / "runtime_env.yaml")["excludes"]
    shipped: dict[str, int] = {}

    def collect(path: Path):
        if path.is_file():
            shipped[path.relative_to(ROOT).as_posix()] = path.stat().st_size

    packaging._dir_travel(ROOT, [packaging._get_excludes(ROOT, excludes)], collect, include_gitignore=False)
    kept_out = (".venv/", ".git/", "models/", "demo_output/", "benchmarks/data/")
    assert (ROOT / ".venv").is_dir(), "run `make install` first: this test checks the virtualenv stays out"
    assert not [p for p in shipped if p.startswith(kept_out)], "excluded paths would be uploaded"
    assert {"jobs/curate.py", "etl/pipeline.py", "etl/models/captioner.py", "jobs/configs/production.yaml"} <= set(shipped)
    assert sum(shipped.values()) < packaging.PACKAGE_SIZE_WARNING, "the working dir is too big to upload"
