"""The cluster files parse and carry what Ray, KubeRay and `ray up` require."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml

from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def check_pod_template(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    assert container["name"] and container["image"].endswith("selfinstruct:0.1.0")
    res = container["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"]  # Ray sees the CPUs it is given
    return container


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    container = check_pod_template(head["template"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in head["template"]["spec"]["volumes"]}
    assert mounts["runs"] == "/data/runs" and "runs" in volumes  # the run directory
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        check_pod_template(group["template"])


def test_raycluster_manifest():
    cluster, pvc = docs("raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"]
    check_cluster_spec(cluster["spec"])
    claim = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_rayjob_manifest_runs_the_pipeline_into_the_volume():
    (job,) = docs("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["selfinstruct", "run"]
    assert argv[2] == "/home/ray/selfinstruct/pipeline.yaml"  # where the Dockerfile puts it
    assert argv[argv.index("--out") + 1].startswith("/data/runs/")
    from actors.cli import build_parser

    build_parser().parse_args(argv[1:])  # the CLI accepts it
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


def test_dockerfile_installs_what_the_entrypoint_needs():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311" in text
    for part in ("actors", "prompts", "seeds", "pipeline.yaml", "pyproject.toml"):
        assert f"COPY --chown=ray:users {part}" in text
    assert "WORKDIR /home/ray/selfinstruct" in text and 'pip install --no-cache-dir ".' in text


def test_ray_up_config_matches_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json")
                        .read_text())
    config = yaml.safe_load((CLUSTER / "ray-up-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] == "aws"


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text()))
    assert env["working_dir"] == "." and ".venv" in env["excludes"]
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
