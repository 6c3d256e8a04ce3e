"""The deployment files only use flags, routes and images that exist, with consistent timings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from jaxembed.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
# Values Kubernetes substitutes into $(VAR) at pod start.
K8S_VARS = {"LWS_LEADER_ADDRESS": "jaxembed-tpu-0.jaxembed-tpu", "LWS_GROUP_SIZE": "4"}


def _documents():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            yield path.name, doc


def _pod_specs(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "Deployment":
        yield spec["template"]["spec"]
    elif doc["kind"] == "LeaderWorkerSet":
        template = spec["leaderWorkerTemplate"]
        yield template["leaderTemplate"]["spec"]
        yield template["workerTemplate"]["spec"]


def _serve_args(args: list[str]):
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: K8S_VARS[m.group(1)], a) for a in args]
    return build_parser().parse_args(["serve", *expanded])


def test_there_are_manifests_for_tpu_and_gpu():
    kinds = {(name, doc["kind"]) for name, doc in _documents()}
    assert ("tpu-v5e-multihost.yaml", "LeaderWorkerSet") in kinds
    assert ("gpu-replicas.yaml", "Deployment") in kinds
    assert ("gpu-replicas.yaml", "HorizontalPodAutoscaler") in kinds


@pytest.mark.parametrize("name,doc", list(_documents()), ids=lambda x: str(x)[:40])
def test_containers_use_real_flags_and_routes(name, doc):
    from jaxembed_server.app import create_app  # noqa: F401  (routes below are registered there)

    routes = {"/health", "/ready", "/metrics"}
    for pod in _pod_specs(doc):
        for container in pod["containers"]:
            args = _serve_args(container["args"])  # argparse exits on an unknown flag
            assert args.drain_timeout < pod["terminationGracePeriodSeconds"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["path"] in routes
            if doc["kind"] == "LeaderWorkerSet":
                assert args.distributed and args.multihost == "global"
                assert args.num_processes == doc["spec"]["leaderWorkerTemplate"]["size"] == 4
                assert args.mesh.data * args.mesh.model == 16  # 4 hosts x 4 chips


def test_init_containers_prebuild_the_cache_the_server_reads():
    """`jaxembed warmup` with the serving container's model, dtype and compile cache: what it
    compiles is exactly what the server then looks up."""
    found = 0
    for _, doc in _documents():
        for pod in _pod_specs(doc):
            for init in pod.get("initContainers", []):
                assert init["command"] == ["jaxembed", "warmup"]
                warm = build_parser().parse_args(["warmup", *init["args"]])
                served = _serve_args(pod["containers"][0]["args"])
                for option in ("model", "dtype", "compile_cache", "seq_lengths", "batch_sizes"):
                    assert getattr(warm, option) == getattr(served, option), option
                mounts = {m["mountPath"] for m in init["volumeMounts"]}
                assert warm.compile_cache.startswith(tuple(mounts))
                found += 1
    assert found, "no manifest prebuilds the compile cache"


def test_dockerfile_entrypoint_is_a_valid_serve_command():
    text = (ROOT / "Dockerfile").read_text()
    entry = re.search(r"ENTRYPOINT (\[.*\])", text).group(1)
    command = yaml.safe_load(entry)
    assert command[:2] == ["jaxembed", "serve"]
    args = build_parser().parse_args(command[1:])
    assert args.host == "0.0.0.0"
    assert "ACCELERATOR" in text and "jax[$ACCELERATOR]" in text


def _ray_jobs():
    return [(name, doc) for name, doc in _documents() if doc["kind"] == "RayJob"]


def test_there_are_ray_jobs_for_gpu_and_tpu():
    assert {name for name, _ in _ray_jobs()} == {
        "rayjob-embed-dataset-gpu.yaml",
        "rayjob-embed-dataset-tpu.yaml",
    }


@pytest.mark.parametrize("name,doc", _ray_jobs(), ids=lambda x: str(x)[:40])
def test_ray_jobs_fit_their_workers(name, doc):
    """The entrypoint is a real `embed-dataset --ray` command, and its actors fit the worker
    pods exactly: per-actor accelerators divide a pod's, actors = pods x actors per pod, and
    the head runs no actor."""
    import shlex

    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:2] == ["jaxembed", "embed-dataset"]
    args = build_parser().parse_args(words[1:])  # argparse exits on an unknown flag
    assert args.ray == ""  # RAY_ADDRESS, which `ray job submit` sets for the entrypoint
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    if "nvidia.com/gpu" in limits:
        per_pod = limits["nvidia.com/gpu"] / args.ray_gpus_per_actor
    else:
        per_pod = limits["google.com/tpu"] / args.ray_resources["TPU"]
    assert per_pod == int(per_pod) >= 1
    assert args.ray_actors == group["replicas"] * per_pod
    assert args.ray_cpus_per_actor * per_pod <= int(limits["cpu"])
    mounts = {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert {"/data", "/models"} <= mounts and args.output.startswith("/data/")
