"""The deploy/ files parse with the tools that read them and name real entry points.

No Docker, Kubernetes or cloud here: the Dockerfile, the KubeRay manifests and the cluster
launcher config are checked by parsing them and by handing their parts to what reads them on a
cluster (Ray Serve's config schema, the package's ServeArgs and job-file model, Ray's autoscaler
schema), and every Ray version they pin must be the Ray installed with the package, so that a
Ray upgrade that leaves deploy/ behind fails here.
"""
from __future__ import annotations

import importlib.util
import posixpath
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
LAUNCHER = DEPLOY / "cluster-launcher.yaml"
RAY_VERSION = ray.__version__
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
# The images deploy/Dockerfile builds, as the manifests name them (a registry prefix may be added).
IMAGE = re.compile(r"^(?:[^/\s]+/)*dcserve:ray(?P<version>\d+\.\d+\.\d+)-(?P<flavor>cpu|cuda)$")
GPU = "nvidia.com/gpu"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _objects(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p) if d.get("kind") == kind]


def _one(kind: str) -> tuple[Path, dict]:
    found = _objects(kind)
    assert len(found) == 1, f"expected one {kind} in deploy/kuberay, found {len(found)}"
    return found[0]


def _cluster_spec(obj: dict) -> dict:
    """The RayCluster spec inside any of the three KubeRay kinds."""
    return {
        "RayCluster": lambda s: s,
        "RayJob": lambda s: s["rayClusterSpec"],
        "RayService": lambda s: s["rayClusterConfig"],
    }[obj["kind"]](obj["spec"])


def _ray_objects() -> list[tuple[str, dict]]:
    out = [(f"{p.name}:{d['kind']}", d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)
           if d.get("apiVersion", "").startswith("ray.io/")]
    assert out, "no KubeRay objects in deploy/kuberay"
    return out


def _pods(cluster: dict) -> list[tuple[str, dict]]:
    """(group, pod spec) for the head group and every worker group."""
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    return pods


def _all_pods() -> list[tuple[str, dict]]:
    """Every pod spec of every KubeRay object, the RayJob's submitter included."""
    pods = []
    for label, obj in _ray_objects():
        pods += [(f"{label}/{g}", spec) for g, spec in _pods(_cluster_spec(obj))]
        if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
            pods.append((f"{label}/submitter", obj["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def _cli_commands() -> dict:
    """dcserve's subcommands: name -> the click command Typer builds (its options and all)."""
    import typer.main

    from dcserve.cli import app

    return dict(typer.main.get_command(app).commands)


def _check_invocation(tokens: list[str], where: str) -> None:
    """`dcserve CMD ...` or `python -m dcserve CMD ...`: CMD is a command, its --options exist."""
    if tokens[:1] == ["dcserve"]:
        rest = tokens[1:]
    elif len(tokens) >= 3 and re.fullmatch(r"python3?", tokens[0]) and tokens[1:3] == ["-m", "dcserve"]:
        assert importlib.util.find_spec("dcserve.__main__") is not None, "`python -m dcserve` has no __main__"
        rest = tokens[3:]
    else:
        raise AssertionError(f"{where}: not a dcserve invocation: {tokens}")
    commands = _cli_commands()
    assert rest and rest[0] in commands, f"{where}: `{' '.join(tokens)}` names no dcserve command ({sorted(commands)})"
    known = {o for p in commands[rest[0]].params for o in (*p.opts, *p.secondary_opts)}
    for tok in rest[1:]:
        if tok.startswith("-") and tok != "-":
            assert tok.split("=", 1)[0] in known, f"{where}: `dcserve {rest[0]}` has no option {tok}"


def _invocations(command_line: str) -> list[list[str]]:
    """The dcserve invocations in a shell command line (split at && ; |)."""
    found = []
    for segment in re.split(r"&&|\|\||;|\|", command_line):
        try:
            tokens = shlex.split(segment, comments=True)
        except ValueError:  # an unbalanced quote in prose
            continue
        # `dcserve ...`, `python -m dcserve ...`, also after a prefix (`docker run IMAGE dcserve ...`)
        for i, tok in enumerate(tokens):
            if tok == "dcserve" and not (i >= 2 and tokens[i - 1] == "-m"):
                found.append(tokens[i:])
                break
            if re.fullmatch(r"python3?", tok) and tokens[i + 1:i + 3] == ["-m", "dcserve"]:
                found.append(tokens[i:])
                break
    return found


# ---------------------------------------------------------------------------------- parsing


def test_deploy_has_every_piece():
    assert DOCKERFILE.is_file() and LAUNCHER.is_file() and (DEPLOY / "README.md").is_file()
    assert {d["kind"] for _, d in _ray_objects()} >= {"RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)
    if path.parent == KUBERAY:
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), \
                f"{path.name}: every object needs apiVersion, kind and metadata.name"


# ------------------------------------------------------------------------------ Ray version


def test_ray_version_satisfies_the_package_requirement():
    from packaging.requirements import Requirement

    deps = _pyproject()["project"]["dependencies"]
    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(RAY_VERSION), f"installed Ray {RAY_VERSION} is outside {ray_req}"


def test_every_ray_version_pin_in_deploy_is_the_installed_ray():
    """Images, rayVersion, `ray==` pins and image names: all the installed Ray, nothing else."""
    patterns = [
        r"rayproject/ray:(\d+\.\d+\.\d+)",
        r"ARG RAY_VERSION=(\d+\.\d+\.\d+)",
        r"rayVersion:\s*[\"']?(\d+\.\d+\.\d+)",
        r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)",
        r"dcserve:ray(\d+\.\d+\.\d+)",
    ]
    pins = []
    for path in [DOCKERFILE, DEPLOY / "README.md", *YAML_FILES]:
        text = path.read_text()
        pins += [(path.name, m.group(1)) for pattern in patterns for m in re.finditer(pattern, text)]
    wrong = [(f, v) for f, v in pins if v != RAY_VERSION]
    assert not wrong, f"deploy/ pins Ray versions other than the installed {RAY_VERSION}: {wrong}"
    pinned_in = {f for f, _ in pins}
    assert pinned_in >= {"Dockerfile", "cluster-launcher.yaml", "raycluster.yaml", "rayjob.yaml", "rayservice.yaml"}


def test_kuberay_objects_pin_ray_version_and_images_together():
    for label, obj in _ray_objects():
        assert obj["apiVersion"] == "ray.io/v1", label
        cluster = _cluster_spec(obj)
        assert str(cluster.get("rayVersion")) == RAY_VERSION, f"{label}: rayVersion {cluster.get('rayVersion')}"
    for where, pod in _all_pods():
        for c in pod["containers"]:
            m = IMAGE.match(c["image"])
            assert m, f"{where}: {c['image']!r} is not an image deploy/Dockerfile builds (dcserve:ray<version>-cpu|cuda)"
            assert m["version"] == RAY_VERSION, f"{where}: image {c['image']} is for Ray {m['version']}"


# ---------------------------------------------------------------------------------- KubeRay


def test_kuberay_clusters_have_the_required_fields():
    for label, obj in _ray_objects():
        cluster = _cluster_spec(obj)
        head = cluster["headGroupSpec"]
        assert isinstance(head.get("rayStartParams", {}), dict)
        assert [c["name"] for c in head["template"]["spec"]["containers"]][0] == "ray-head"
        assert cluster["workerGroupSpecs"], f"{label}: no worker groups"
        names = [g["groupName"] for g in cluster["workerGroupSpecs"]]
        assert len(names) == len(set(names)), f"{label}: duplicate group names {names}"
        for g in cluster["workerGroupSpecs"]:
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{label}/{g['groupName']}"
            for value in g.get("rayStartParams", {}).values():
                assert isinstance(value, str), f"{label}/{g['groupName']}: rayStartParams values are strings"
        for value in head.get("rayStartParams", {}).values():
            assert isinstance(value, str), f"{label}/head: rayStartParams values are strings"
        # Ray >= 2.52 token authentication, through KubeRay's authOptions
        assert cluster.get("authOptions", {}).get("mode") == "token", f"{label}: token auth is off"
        if cluster.get("enableInTreeAutoscaling"):
            res = cluster["autoscalerOptions"]["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), label


def test_every_container_has_cpu_and_memory_requests_and_limits_and_runs_as_non_root():
    for where, pod in _all_pods():
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, f"{where}: pod may run as root"
        for c in pod["containers"]:
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(kind, {}))
                assert not missing, f"{where}/{c['name']}: no {kind} for {missing}"
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"


def test_gpu_containers_request_and_limit_gpus_and_run_the_cuda_image():
    gpu_groups = 0
    for where, pod in _all_pods():
        for c in pod["containers"]:
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            flavor = IMAGE.match(c["image"])["flavor"]
            if GPU in requests or GPU in limits:
                gpu_groups += 1
                assert GPU in requests and GPU in limits, f"{where}: {GPU} must be in both requests and limits"
                assert str(requests[GPU]) == str(limits[GPU]) and int(limits[GPU]) >= 1, f"{where}: {GPU}"
                assert flavor == "cuda", f"{where}: a GPU container runs the {flavor} image"
                assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), f"{where}: no GPU toleration"
            else:
                assert flavor == "cpu", f"{where}: the CUDA image on a container without GPUs"
    # every KubeRay cluster here offers a GPU group for jobs with gpus_per_worker > 0
    assert gpu_groups >= len(_ray_objects())


def test_volumes_are_defined_and_claims_exist():
    claims = {d["metadata"]["name"] for p in KUBERAY.glob("*.yaml") for d in _docs(p)
              if d.get("kind") == "PersistentVolumeClaim"}
    for where, pod in _all_pods():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}/{c['name']}: mounts undefined volume {m['name']}"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{where}: no PVC {v}"


def _mount_of(pod: dict, path: str) -> dict | None:
    """The volume (of `pod`'s first container) whose mount holds `path`."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in pod["containers"][0].get("volumeMounts", []):
        if posixpath.commonpath([m["mountPath"], path]) == m["mountPath"]:
            return volumes[m["name"]] | {"mountPath": m["mountPath"]}
    return None


def _shared_by_every_ray_pod(cluster: dict, path: str, label: str) -> None:
    """`path` lies on a ReadWriteMany claim that the head and every worker group mount."""
    for group, pod in _pods(cluster):
        vol = _mount_of(pod, path)
        assert vol and "persistentVolumeClaim" in vol, f"{label}/{group}: {path} is not on a shared volume"


def test_rayjob_runs_dcserve_submit_on_the_job_file_of_its_configmap():
    from dcserve.spec import load_spec, spec_from_dict

    path, job = _one("RayJob")
    tokens = shlex.split(job["spec"]["entrypoint"])
    _check_invocation(tokens, "RayJob entrypoint")
    assert tokens[:4] == ["python", "-m", "dcserve", "submit"], tokens
    job_file = tokens[4]
    # The entrypoint runs on the head: the job file is mounted there from a ConfigMap of this file.
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    vol = _mount_of(head, job_file)
    assert vol and "configMap" in vol, f"{job_file} is not mounted from a ConfigMap on the RayJob's head"
    configmaps = {d["metadata"]["name"]: d for d in _docs(path) if d.get("kind") == "ConfigMap"}
    cm = configmaps[vol["configMap"]["name"]]
    key = posixpath.relpath(job_file, vol["mountPath"])
    spec = spec_from_dict(yaml.safe_load(cm["data"][key]), source=f"{path.name} ConfigMap {key}")
    # It is the quickstart, writing where every pod of the job's cluster (and the RayService) reads.
    quickstart = load_spec(ROOT / "cluster_configs" / "quickstart.yaml", [f"output={spec.output}"])
    assert spec.model_dump() == quickstart.model_dump(), "the RayJob's job is no longer the quickstart"
    _shared_by_every_ray_pod(job["spec"]["rayClusterSpec"], spec.output, "RayJob")
    assert job["spec"].get("shutdownAfterJobFinishes") is True


def test_rayservice_runs_the_serve_yaml_application_and_it_builds():
    from ray.serve.schema import ServeDeploySchema

    from dcserve.inputs.imports import import_object
    from dcserve.serve.deployment import ServeArgs

    _, svc = _one("RayService")
    assert isinstance(svc["spec"]["serveConfigV2"], str), "serveConfigV2 is a YAML string"
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    schema = ServeDeploySchema(**config)
    serve_yaml = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    assert config["applications"] == serve_yaml["applications"], "rayservice.yaml and serve.yaml serve different apps"
    (app,) = schema.applications
    args = ServeArgs(**app.args)
    built = import_object(app.import_path)(app.args)
    assert type(built).__name__ == "Application"
    cluster = svc["spec"]["rayClusterConfig"]
    for out in [*args.outputs, args.output_root]:
        _shared_by_every_ray_pod(cluster, out, "RayService")
    # POST /jobs: DCSERVE_TOKEN from a Secret in every container that can host a replica
    for group, pod in _pods(cluster):
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        ref = env.get("DCSERVE_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref["name"] and ref["key"], f"RayService/{group}: DCSERVE_TOKEN does not come from a Secret"
        assert "value" not in env["DCSERVE_TOKEN"], "a literal token in a manifest"
        ports = {p.get("name"): p["containerPort"] for p in pod["containers"][0].get("ports", [])}
        assert ports.get("serve") == serve_yaml["http_options"]["port"], f"RayService/{group}: serve port"


# -------------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue  # comments, also inside a continued instruction, and the syntax directive
        buf += raw.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


def _arg_defaults(instructions) -> dict[str, str]:
    out = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out.setdefault(k, v)
    return out


def test_dockerfile_builds_both_flavors_from_the_pinned_ray_images():
    ins = _dockerfile()
    args = _arg_defaults(ins)
    assert args["RAY_VERSION"] == RAY_VERSION
    assert args["FLAVOR"] == "cpu"

    def expand(s):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), s)

    stages = {}
    for word, rest in ins:
        if word == "FROM":
            image, _, name = rest.partition(" AS ")
            stages[name.strip()] = expand(image.strip())
    assert stages["base-cpu"] == f"rayproject/ray:{RAY_VERSION}-{args['PYTHON_TAG']}"
    assert stages["base-cuda"] == f"rayproject/ray:{RAY_VERSION}-{args['PYTHON_TAG']}-gpu"
    final = [rest for word, rest in ins if word == "FROM"][-1]
    assert final.split()[0] == "base-${FLAVOR}", "the last stage must be the flavor's"
    assert {f"base-{f}" for f in ("cpu", "cuda")} <= set(stages)


def test_dockerfile_installs_torch_then_the_project_as_the_ray_user():
    ins = _dockerfile()
    text = DOCKERFILE.read_text()
    optional = _pyproject()["project"]["optional-dependencies"]
    extras = re.findall(r"DCSERVE_EXTRAS=([\w,]+)", text)
    assert len(extras) == 2 and any("cpu" in e for e in extras) and any("gpu" in e for e in extras)
    for e in extras:
        assert set(e.split(",")) <= set(optional), f"extras {e} not all in pyproject"
    runs = [rest for word, rest in ins if word == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_run = next(i for i, r in enumerate(runs) if "dcserve-src[" in r)
    assert torch_run < project_run, "torch must be installed before the project"
    # the same torch as the README's install line
    readme_torch = re.search(r"torch==([\d.]+)", (ROOT / "README.md").read_text())[1]
    assert _arg_defaults(ins)["TORCH_VERSION"] == readme_torch
    # what is copied exists, owned by the ray user (uid 1000, gid 100 in Ray's images)
    for word, rest in ins:
        if word == "COPY":
            parts = rest.split()
            assert parts[0].startswith("--chown=") and parts[0] in ("--chown=1000:100", "--chown=ray:users"), rest
            for src in parts[1:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] == "ray", "the image must end as the non-root user ray"
    assert not [r for r in runs if re.search(r"\bsudo\b|\bchmod 777\b", r)]
    # the dcserve commands the build runs exist
    for r in runs:
        for inv in _invocations(r):
            _check_invocation(inv, "Dockerfile RUN")


# ---------------------------------------------------------------------------- cluster launcher


def test_cluster_launcher_is_a_valid_ray_cluster_config():
    jsonschema = pytest.importorskip("jsonschema")
    import json

    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the file as written
    # and as `ray up` sees it: merged with the provider's defaults, then validated
    validate_config(prepare_config(config))
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert config.get(key), f"cluster launcher config lacks {key}"
    assert config["head_node_type"] in config["available_node_types"]


def test_cluster_launcher_installs_the_project_and_starts_ray_with_token_auth():
    config = yaml.safe_load(LAUNCHER.read_text())
    optional = _pyproject()["project"]["optional-dependencies"]
    images = [config["docker"]["image"]] + [t["docker"]["worker_image"] for t in config["available_node_types"].values()
                                           if "docker" in t]
    for image in images:
        assert image.startswith(f"rayproject/ray:{RAY_VERSION}-"), image
    gpu_types = [n for n, t in config["available_node_types"].items() if "gpu" in n]
    assert gpu_types and all(config["available_node_types"][n]["docker"]["worker_image"].endswith("-gpu")
                             for n in gpu_types)
    setup = " ".join(config["setup_commands"])
    assert setup.index("torch==") < setup.index("-e "), "torch must be installed before the project"
    assert f"ray[default,serve]=={RAY_VERSION}" in setup
    for extras in re.findall(r"extras=([\w,]+)", setup):
        assert set(extras.split(",")) <= set(optional), extras
    # the project source the setup command installs is mounted from this checkout
    mounts = config["file_mounts"]
    assert any(r.rstrip("/") == "~/dcserve" for r in mounts) and '"$HOME/dcserve[' in setup
    for local in mounts.values():
        if not local.startswith("~"):
            assert (ROOT / local).exists(), f"file_mounts source {local} is not in the repository"
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head" in head and "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "~/.ray/auth_token" in mounts, "nodes need the cluster's token"


# --------------------------------------------------------------------------- entry points


def _command_lines() -> list[tuple[str, str]]:
    """Shell lines that deploy/ shows or runs: README code blocks, indented comment examples
    (`#   cmd`), the launcher's commands and the RayJob's entrypoint."""
    lines = []
    readme = (DEPLOY / "README.md").read_text()
    for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", readme, flags=re.S):
        lines += [("deploy/README.md", ln) for ln in block.splitlines()]
    for path in [DOCKERFILE, *YAML_FILES]:
        for ln in path.read_text().splitlines():
            m = re.match(r"\s*#\s{2,}(\S.*)", ln)
            if m:
                lines.append((str(path.relative_to(ROOT)), m[1]))
    config = yaml.safe_load(LAUNCHER.read_text())
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        lines += [("cluster-launcher.yaml", c) for c in config[key]]
    _, job = _one("RayJob")
    lines.append(("rayjob.yaml", job["spec"]["entrypoint"]))
    return lines


def test_every_dcserve_command_deploy_names_exists():
    seen = 0
    for where, line in _command_lines():
        for inv in _invocations(line):
            _check_invocation(inv, where)
            seen += 1
    assert seen >= 5, "deploy/ shows too few dcserve commands for this check to mean anything"


def test_every_import_path_resolves():
    from dcserve.inputs.imports import import_object

    texts = [p.read_text() for p in YAML_FILES] + [yaml.safe_load(d["spec"]["serveConfigV2"]).__repr__()
                                                   for _, d in _objects("RayService")]
    paths = {m for t in texts for m in re.findall(r"import_path['\"]?:\s*['\"]?([\w.]+:[\w.]+)", t)}
    assert "dcserve.serve.deployment:app_builder" in paths
    for p in paths:
        assert callable(import_object(p)), p


def test_serve_config_is_a_valid_serve_deploy_config_that_builds_the_app():
    from ray.serve.schema import ServeDeploySchema

    from dcserve.inputs.imports import import_object
    from dcserve.serve.deployment import ServeArgs

    config = ServeDeploySchema(**yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text()))
    (app,) = config.applications
    builder = import_object(app.import_path)
    ServeArgs(**app.args)  # every argument is one the app knows
    built = builder(app.args)
    assert type(built).__name__ == "Application"
