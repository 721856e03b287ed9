"""Structural checks of ``infra/`` (images, Kubernetes manifests, Prefect work-pool templates).

No cluster and no Docker engine run here, so these tests check what can be checked without them:
every YAML/JSON file parses; Kubernetes objects carry their required fields; Deployment selectors
match their pod labels; every container names an image built from a Dockerfile in ``infra/docker``
(via ``infra/images.yaml``) and declares resources; GPU workloads request ``nvidia.com/gpu``;
secrets only ever arrive through ``valueFrom.secretKeyRef``; every program a container runs
(``aom``, ``prefect``, ``dask``) is installed by the project, with the sub-commands and flags the
manifests use; Dockerfiles pin their bases, copy only files that exist, run as a non-root user
and enter through ``aom``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
POOLS = INFRA / "prefect"
GPU_POOL = POOLS / "gpu-work-pool.json"
EXAMPLE_SECRET = K8S / "object-storage-secret.example.yaml"

# `aom` verbs that manifests and the README may use; each one is also checked against the CLI as
# soon as its module (flows/commands/<verb>.py) exists.
PLANNED_AOM_VERBS = {"demo", "cubes", "embed", "pretrain"}
# Wrappers from the base images that run the rest of their argv unchanged.
BASE_IMAGE_WRAPPERS = {"/usr/bin/env"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}

REQUIRED_FILES = [
    "infra/README.md",
    "infra/images.yaml",
    "infra/docker/Dockerfile.cpu",
    "infra/docker/Dockerfile.cuda",
    "infra/k8s/namespace.yaml",
    "infra/k8s/object-storage-secret.example.yaml",
    "infra/k8s/prefect-worker.yaml",
    "infra/k8s/dask-cluster.yaml",
    "infra/prefect/gpu-work-pool.json",
    "infra/prefect/automations.yaml",
]

# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------

YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
JSON_FILES = sorted(INFRA.rglob("*.json"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


@cache
def _images() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "images.yaml").read_text(encoding="utf-8"))


@cache
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


@cache
def _gpu_pool() -> dict[str, Any]:
    return json.loads(GPU_POOL.read_text(encoding="utf-8"))


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in infra/k8s (the example Secret included)."""
    return [(path, doc) for path in _manifest_files() for doc in _yaml_docs(path)]


def _objects_of(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _objects() if doc.get("kind") == kind]


def _pool_defaults(template: dict[str, Any]) -> dict[str, Any]:
    props = template["variables"]["properties"]
    return {name: spec["default"] for name, spec in props.items() if "default" in spec}


@cache
def _rendered_gpu_manifest() -> dict[str, Any]:
    """The gpu pool's Job manifest rendered with the variables' defaults, as the worker does
    (including its default command, ``prefect flow-run execute``, where ``command`` is unset)."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = _gpu_pool()
    rendered = apply_values(template["job_configuration"], _pool_defaults(template))
    manifest = rendered["job_manifest"]
    for container in manifest["spec"]["template"]["spec"]["containers"][:1]:
        if container.get("args") is None:
            container["args"] = shlex.split(BaseJobConfiguration._base_flow_run_command())
    return manifest


def _pod_specs(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec (a mapping with a ``containers`` list) anywhere inside ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, value in node.items():
            yield from _pod_specs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _pod_specs(value, f"{where}[{i}]")


def _all_pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Pod specs of the manifests plus the rendered gpu work-pool Job."""
    specs: list[tuple[str, dict[str, Any]]] = []
    for path, doc in _objects():
        name = f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        specs.extend(_pod_specs(doc, name))
    specs.extend(_pod_specs(_rendered_gpu_manifest(), GPU_POOL.name))
    return specs


def _all_containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for where, spec in _all_pod_specs():
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            out.append((f"{where}/{c.get('name')}", c))
    return out


# ------------------------------------------------------------------------------------------
# Dockerfiles
# ------------------------------------------------------------------------------------------


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{_rel(path)} ends inside a continuation line"
    return out


def _image_ref_is_pinned(ref: str) -> bool:
    if "@sha256:" in ref:
        return True
    last = ref.rsplit("/", 1)[-1]
    return ":" in last and last.split(":", 1)[1] not in ("", "latest") and "$" not in ref


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def _entrypoint(path: Path) -> list[str]:
    entries = [rest for op, rest in _dockerfile(path) if op == "ENTRYPOINT"]
    assert entries, f"{_rel(path)} has no ENTRYPOINT"
    return _exec_form(entries[-1])


def _dockerfile_for_image(ref: str) -> Path:
    images = _images()
    prefix = f"{images['registry']}/"
    assert ref.startswith(prefix), f"image {ref!r} is not under the registry of infra/images.yaml"
    name, _, tag = ref[len(prefix) :].partition(":")
    assert name in images["images"], f"image {ref!r}: {name!r} is not listed in infra/images.yaml"
    assert tag == str(images["tag"]), f"image {ref!r}: tag is not the one of infra/images.yaml"
    return REPO / images["images"][name]["dockerfile"]


def _image_spec(ref: str) -> dict[str, Any]:
    name = ref[len(_images()["registry"]) + 1 :].partition(":")[0]
    return _images()["images"][name]


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------


def _argv(container: dict[str, Any]) -> list[str]:
    """What the container runs: `command` replaces the image ENTRYPOINT; `args` follow."""
    command = container.get("command")
    args = container.get("args") or []
    if isinstance(args, str):  # a Prefect placeholder such as "{{ command }}"
        args = shlex.split(args)
    if command is None:
        command = _entrypoint(_dockerfile_for_image(container["image"]))
    return [*command, *args]


def _dependency_names() -> set[str]:
    """Distributions the images install: the core dependencies and the extras of ``[all]`` (the
    Dockerfiles install ``.[all]``)."""
    project = _pyproject()["project"]
    extras = project.get("optional-dependencies", {})
    specs = list(project["dependencies"])
    for spec in extras.get("all", []):
        for extra in spec.split("[", 1)[1].rstrip("]").split(","):
            specs += extras[extra.strip()]
    names = set()
    for spec in specs:
        names.add(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower())
    return names


def _console_script_dist(name: str) -> str | None:
    for ep in importlib.metadata.entry_points(group="console_scripts"):
        if ep.name == name:
            return ep.dist.name.lower() if ep.dist else None
    return None


def _flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


@cache
def _prefect_help(*argv: str) -> str:
    exe = Path(sys.executable).parent / "prefect"
    assert exe.exists(), f"prefect is not installed next to {sys.executable}"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run(
        [str(exe), *argv, "--help"], capture_output=True, text=True, timeout=180, env=env, check=False
    )
    assert proc.returncode == 0, f"`prefect {' '.join(argv)} --help` failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dask_options(subcommand: str) -> str:
    """The options of `dask <subcommand>` (a click command registered by distributed)."""
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="dask_cli") if ep.name == subcommand]
    command = ep.load()
    return " ".join(opt for p in command.params for opt in (*p.opts, *p.secondary_opts))


def _assert_flags_in_help(flags: set[str], help_text: str, what: str) -> None:
    for flag in sorted(flags):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"`{what}` has no {flag}"


def _aom_verb(argv_after_aom: list[str]) -> str | None:
    """The first non-option word after `aom` (global options come first: `aom -v demo`)."""
    for word in argv_after_aom:
        if not word.startswith("-"):
            return word
    return None


@cache
def _registered_aom_verbs() -> frozenset[str]:
    """Verbs on the `aom` typer app (from flows.cli; from the verb modules present while a module
    that flows.cli lists is still being written)."""
    import typer

    def names(app: typer.Typer) -> set[str]:
        out = set()
        for info in app.registered_commands:
            if info.name:
                out.add(info.name)
            else:
                assert info.callback is not None, info
                out.add(info.callback.__name__.replace("_", "-"))
        for group in app.registered_groups:
            if group.name:
                out.add(group.name)
        return out

    try:
        cli = importlib.import_module("flows.cli")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("flows.commands."):
            raise
        app = typer.Typer()
        for path in sorted((REPO / "flows" / "commands").glob("*.py")):
            if path.stem.startswith("_"):
                continue
            module = importlib.import_module(f"flows.commands.{path.stem}")
            if hasattr(module, "register"):
                module.register(app)
        return frozenset(names(app))
    return frozenset(names(cli.app))


def _check_aom_verb(verb: str, where: str) -> None:
    registered = _registered_aom_verbs()
    if verb in registered:
        return
    assert verb in PLANNED_AOM_VERBS, f"{where}: `aom {verb}` is neither registered nor a planned verb"
    module = REPO / "flows" / "commands" / f"{verb}.py"
    assert not module.exists(), f"{where}: {_rel(module)} exists but `aom {verb}` is not registered"


# ------------------------------------------------------------------------------------------
# Secrets
# ------------------------------------------------------------------------------------------

_SECRET_WORD = re.compile(r"(SECRET|PASSWORD|PASSWD|PASSPHRASE|TOKEN|CREDENTIAL)")
_SECRET_SUFFIX = re.compile(r"(^|_)(KEY|KEY_ID|APIKEY|AUTH_STRING|AUTH)$")


def _looks_secret(name: str, env_names: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether an env var name looks like it carries a credential.

    A pointer pair ``X_SECRET_NAME`` / ``X_SECRET_KEY`` names where a secret lives (a Secret and
    one of its keys), not the secret itself, and is allowed as a plain value.
    """
    upper = name.upper()
    if upper.endswith("_SECRET_NAME"):
        return False
    if upper.endswith("_SECRET_KEY") and f"{upper[: -len('_SECRET_KEY')]}_SECRET_NAME" in env_names:
        return False
    return bool(_SECRET_WORD.search(upper) or _SECRET_SUFFIX.search(upper))


def _secret_refs(container: dict[str, Any]) -> list[dict[str, Any]]:
    refs = []
    for env in container.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            refs.append(ref)
    return refs


# ==========================================================================================
# Tests
# ==========================================================================================


def test_deliverables_exist() -> None:
    missing = [p for p in REQUIRED_FILES if not (REPO / p).is_file()]
    assert not missing, f"missing: {missing}"


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path: Path) -> None:
    docs = _yaml_docs(path)
    assert docs, f"{_rel(path)} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{_rel(path)}: every document must be a mapping"


@pytest.mark.parametrize("path", JSON_FILES, ids=_rel)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_images_map_to_dockerfiles() -> None:
    images = _images()
    assert isinstance(images["registry"], str) and images["registry"]
    assert isinstance(images["tag"], str) and images["tag"]
    assert set(images["images"]) >= {"aom-cpu", "aom-cuda"}
    for name, spec in images["images"].items():
        dockerfile = REPO / spec["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {spec['dockerfile']} does not exist"
        assert dockerfile.parent == DOCKER, f"{name}: Dockerfiles live in infra/docker"
        assert (REPO / spec["context"]).resolve() == REPO, f"{name}: the build context is the repo root"
        assert spec["torch"] in ("cpu", "cuda"), name


def test_objects_have_required_fields() -> None:
    (namespace,) = _objects_of("Namespace")
    ns = namespace["metadata"]["name"]
    assert _objects(), "no Kubernetes objects under infra/k8s"
    for path, doc in _objects():
        where = f"{path.name}:{doc.get('kind')}"
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], where
        assert isinstance(doc.get("kind"), str) and doc["kind"], where
        assert isinstance(doc.get("metadata", {}).get("name"), str), f"{where}: metadata.name"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"]), where
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"].get("namespace") == ns, f"{where}: namespace must be {ns!r}"
    assert _pool_defaults(_gpu_pool())["namespace"] == ns, "the gpu pool runs Jobs elsewhere"


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    (kust,) = _yaml_docs(K8S / "kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    (namespace,) = _objects_of("Namespace")
    assert kust["namespace"] == namespace["metadata"]["name"]
    resources = kust["resources"]
    for res in resources:
        assert (K8S / res).is_file(), f"kustomization lists missing {res}"
    expected = {p.name for p in _manifest_files() if not p.name.endswith(".example.yaml")}
    assert set(resources) == expected, "kustomization.yaml must list every manifest"
    assert EXAMPLE_SECRET.name not in resources, "the placeholder Secret must never be applied"
    known = {f"{_images()['registry']}/{name}" for name in _images()["images"]}
    for image in kust.get("images", []):
        assert image["name"] in known, f"kustomization rewrites unknown image {image['name']}"


def test_deployment_selectors_match_template_labels() -> None:
    deployments = _objects_of("Deployment")
    assert deployments
    for dep in deployments:
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector, dep["metadata"]["name"]
        for key, value in selector.items():
            assert labels.get(key) == value, f"{dep['metadata']['name']}: selector {key}={value}"


def test_containers_have_image_name_and_resources() -> None:
    containers = _all_containers()
    assert len(containers) >= 5  # worker, scheduler, CPU worker, GPU worker, gpu flow-run Job
    for where, c in containers:
        assert c.get("name"), where
        assert isinstance(c.get("image"), str) and c["image"], f"{where}: image"
        res = c.get("resources") or {}
        assert res.get("requests") or res.get("limits"), f"{where}: resources"
        for section in ("requests", "limits"):
            for key, value in (res.get(section) or {}).items():
                assert value is not None and str(value) != "", f"{where}: {section}.{key} is empty"


def test_images_are_built_from_infra_dockerfiles() -> None:
    refs = {c["image"] for _, c in _all_containers()}
    refs.add(_pool_defaults(_gpu_pool())["image"])
    for ref in sorted(refs):
        assert _dockerfile_for_image(ref).is_file(), ref


def test_pods_run_as_the_image_user() -> None:
    uids = {_dockerfile_user(DOCKER / name) for name in ("Dockerfile.cpu", "Dockerfile.cuda")}
    assert len(uids) == 1, "both images should run as the same numeric user"
    (uid,) = uids
    for where, spec in _all_pod_specs():
        ctx = spec.get("securityContext") or {}
        assert ctx.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert ctx.get("runAsUser") == uid, f"{where}: runAsUser should be the images' USER {uid}"


def test_gpu_workloads_request_gpus_and_cpu_ones_do_not() -> None:
    for group in _objects_of("DaskWorkerGroup"):
        containers = group["spec"]["worker"]["spec"]["containers"]
        for c in containers:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, group["metadata"]["name"]
            assert _image_spec(c["image"])["torch"] == "cuda", "GPU workers need the CUDA image"
            args = c.get("args") or []
            i = args.index("--resources")
            assert "GPU=1" in args[i + 1].split(), "GPU workers must advertise the Dask resource GPU=1"
    for cluster in _objects_of("DaskCluster"):
        for c in cluster["spec"]["worker"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in str(c.get("resources")), "the default worker group is CPU"
            assert "GPU=" not in " ".join(c.get("args") or []), "CPU workers must not advertise GPU"
            assert _image_spec(c["image"])["torch"] == "cpu"


def test_dask_operator_resources_fit_together() -> None:
    clusters = {c["metadata"]["name"]: c for c in _objects_of("DaskCluster")}
    assert len(clusters) == 1
    groups = _objects_of("DaskWorkerGroup")
    assert groups, "a DaskWorkerGroup for GPU workers"
    for group in groups:
        assert group["apiVersion"] == "kubernetes.dask.org/v1"
        assert group["spec"]["cluster"] in clusters, "the worker group must join the DaskCluster"
        assert int(group["spec"]["worker"]["replicas"]) >= 0
    for name, cluster in clusters.items():
        assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
        scheduler = cluster["spec"]["scheduler"]
        service = scheduler["service"]
        assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
        port_names = {p["name"] for c in scheduler["spec"]["containers"] for p in c.get("ports", [])}
        assert {"tcp-comm", "http-dashboard"} <= port_names
        for port in service["ports"]:
            assert port["targetPort"] in port_names, port
        assert int(cluster["spec"]["worker"]["replicas"]) >= 1


def test_prefect_worker_can_create_jobs() -> None:
    (dep,) = [d for d in _objects_of("Deployment") if d["metadata"]["name"] == "prefect-worker"]
    pod = dep["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    assert sa in {s["metadata"]["name"] for s in _objects_of("ServiceAccount")}
    (c,) = pod["containers"]
    argv = _argv(c)
    assert argv[:3] == ["prefect", "worker", "start"]
    assert argv[argv.index("--pool") + 1] == "gpu" and argv[argv.index("--type") + 1] == "kubernetes"
    env = {e["name"]: e for e in c["env"]}
    api_url = env["PREFECT_API_URL"]["valueFrom"]
    assert "configMapKeyRef" in api_url or "secretKeyRef" in api_url, (
        "PREFECT_API_URL from a ConfigMap/Secret"
    )
    ref = api_url.get("configMapKeyRef") or api_url["secretKeyRef"]
    if "configMapKeyRef" in api_url:
        (cm,) = [m for m in _objects_of("ConfigMap") if m["metadata"]["name"] == ref["name"]]
        assert cm["data"][ref["key"]].endswith("/api")

    bindings = [b for b in _objects_of("RoleBinding") if any(s["name"] == sa for s in b["subjects"])]
    assert bindings, f"no RoleBinding for ServiceAccount {sa}"
    roles = {r["metadata"]["name"]: r for r in _objects_of("Role")}
    granted: dict[tuple[str, str], set[str]] = {}
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        for rule in roles[b["roleRef"]["name"]]["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert {"create", "get", "list", "watch", "delete"} <= granted.get(("batch", "jobs"), set())
    assert {"get", "list", "watch"} <= granted.get(("", "pods"), set())
    assert "get" in granted.get(("", "pods/log"), set())


def test_no_inline_secrets() -> None:
    for where, c in _all_containers():
        env = c.get("env") or []
        assert isinstance(env, list), f"{where}: env must be a list"
        names = {e["name"] for e in env}
        refs = _secret_refs(c)
        for e in env:
            upper = e["name"].upper()
            if "value" in e and upper.endswith("_SECRET_NAME"):
                # a pointer to where a secret lives: a Secret this container already reads from
                assert e["value"] in {r["name"] for r in refs}, f"{where}: {e['name']}"
            elif "value" in e and upper.endswith("_SECRET_KEY") and not _looks_secret(upper, names):
                assert e["value"] in {r["key"] for r in refs}, f"{where}: {e['name']}"
            elif _looks_secret(e["name"], names):
                assert "value" not in e, f"{where}: {e['name']} has an inline value"
                assert "secretKeyRef" in (e.get("valueFrom") or {}), (
                    f"{where}: {e['name']} needs secretKeyRef"
                )
        for src in c.get("envFrom") or []:
            assert "secretRef" in src or "configMapRef" in src, where
    for cm in _objects_of("ConfigMap"):
        for key in cm.get("data", {}):
            assert not _looks_secret(key), f"ConfigMap {cm['metadata']['name']} holds {key}"
    applied = [s for p, s in _objects() if s["kind"] == "Secret" and p != EXAMPLE_SECRET]
    assert not applied, "Secrets are created in the cluster, not kept in manifests"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("PREFECT_API_KEY", True),
        ("DB_PASSWORD", True),
        ("GITHUB_TOKEN", True),
        ("MINIO_SECRET_KEY", True),
        ("AWS_ENDPOINT_URL", False),
        ("PREFECT_API_URL", False),
        ("AWS_DEFAULT_REGION", False),
        ("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME", False),
    ],
)
def test_secret_name_heuristic(name: str, secret: bool) -> None:
    assert _looks_secret(name) is secret


def test_secret_pointer_pair_is_not_a_secret() -> None:
    prefix = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY"
    names = {f"{prefix}_SECRET_NAME", f"{prefix}_SECRET_KEY"}
    assert not _looks_secret(f"{prefix}_SECRET_KEY", names)
    assert _looks_secret(f"{prefix}_SECRET_KEY")  # without its _SECRET_NAME it is suspicious


def test_secret_refs_match_the_example_secret() -> None:
    (example,) = _yaml_docs(EXAMPLE_SECRET)
    name = example["metadata"]["name"]
    keys = set(example["stringData"])
    seen = set()
    for where, c in _all_containers():
        for ref in _secret_refs(c):
            if ref["name"] == name:
                assert ref["key"] in keys, f"{where}: {name} has no key {ref['key']}"
                seen.add(ref["key"])
            else:
                assert ref.get("optional") is True, f"{where}: Secret {ref['name']} is not documented"
    assert seen == keys, f"keys of the example never referenced: {keys - seen}"


def test_example_secret_holds_only_placeholders() -> None:
    text = EXAMPLE_SECRET.read_text(encoding="utf-8")
    assert "EXAMPLE ONLY" in text and "never commit" in text.lower()
    (secret,) = _yaml_docs(EXAMPLE_SECRET)
    assert secret["kind"] == "Secret"
    assert "data" not in secret, "base64 data hides what is in it; use stringData placeholders"
    assert secret["stringData"]
    for key, value in secret["stringData"].items():
        assert str(value).startswith("REPLACE_ME"), f"{key} is not an obvious placeholder"


def test_container_programs_exist() -> None:
    scripts = _pyproject()["project"]["scripts"]
    deps = _dependency_names()
    for where, c in _all_containers():
        argv = _argv(c)
        while argv and argv[0] in BASE_IMAGE_WRAPPERS:
            argv = argv[1:]
        assert argv, f"{where}: runs nothing"
        program = argv[0]
        if program == "aom":
            assert "aom" in scripts, "aom is not a console script of the project"
            verb = _aom_verb(argv[1:])
            if verb is not None:
                _check_aom_verb(verb, where)
        elif program in ("prefect", "dask"):
            dist = _console_script_dist(program)
            assert dist is not None and dist in deps, f"{where}: {program} is not installed by a dependency"
            if program == "dask":
                subcommands = {ep.name for ep in importlib.metadata.entry_points(group="dask_cli")}
                assert argv[1] in subcommands, f"{where}: `dask {argv[1]}` does not exist"
        else:
            pytest.fail(f"{where}: runs {program!r}, which nothing in the project installs")


def test_container_flags_exist() -> None:
    """Flags given to `prefect worker start` / `dask scheduler` / `dask worker` are real ones."""
    checked = 0
    for where, c in _all_containers():
        argv = _argv(c)
        if argv[:3] == ["prefect", "worker", "start"]:
            _assert_flags_in_help(_flags(argv[3:]), _prefect_help("worker", "start"), where)
            checked += 1
        elif argv[:1] == ["dask"]:
            _assert_flags_in_help(_flags(argv[2:]), _dask_options(argv[1]), where)
            checked += 1
    assert checked >= 4


def test_kubernetes_worker_image_has_prefect_kubernetes() -> None:
    for where, c in _all_containers():
        argv = _argv(c)
        if argv[:3] == ["prefect", "worker", "start"] and "kubernetes" in argv:
            text = _dockerfile_for_image(c["image"]).read_text(encoding="utf-8")
            assert "prefect-kubernetes" in text, f"{where}: the image lacks the kubernetes worker type"


def test_aom_console_script_and_cli() -> None:
    assert _pyproject()["project"]["scripts"]["aom"] == "flows.cli:main"
    tree = ast.parse((REPO / "flows" / "cli.py").read_text(encoding="utf-8"))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "main" in functions
    assert _registered_aom_verbs(), "the aom app registers no verbs"


def test_readme_aom_commands_exist() -> None:
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    verbs = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            m = re.search(r"(?:^\s*(?:\$\s*)?|\s--\s+)aom\s+([a-z][a-z0-9-]*)", line)
            if m:
                verbs.append(m.group(1))
    assert verbs, "the README shows no aom command"
    for verb in verbs:
        _check_aom_verb(verb, "infra/README.md")


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile(name: str) -> None:
    path = DOCKER / name
    instructions = _dockerfile(path)
    stages = set()
    froms = []
    for op, rest in instructions:
        if op == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            ref = words[0]
            assert ref in stages or _image_ref_is_pinned(ref), f"{name}: FROM {ref} is not pinned to a tag"
            froms.append(ref)
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif op in ("COPY", "ADD"):
            words = shlex.split(rest) if not rest.startswith("[") else _exec_form(rest)
            flags = [w for w in words if w.startswith("--")]
            operands = [w for w in words if not w.startswith("--")]
            from_flag = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if from_flag:
                src = from_flag[0]
                assert src in stages or _image_ref_is_pinned(src), f"{name}: COPY --from={src} not pinned"
                continue
            assert op == "COPY", f"{name}: use COPY, not ADD"
            sources = operands[:-1]
            assert sources, f"{name}: COPY without sources"
            found: list[Path] = []
            for src in sources:
                if any(ch in src for ch in "*?["):
                    found.extend(REPO.glob(src))  # BuildKit: a wildcard may match nothing
                else:
                    assert (REPO / src).exists(), f"{name}: COPY source {src} is not in the repo"
                    found.append(REPO / src)
            assert found, f"{name}: COPY {rest} matches nothing"
    assert froms, f"{name}: no FROM"

    assert _dockerfile_user(path) != 0
    assert _entrypoint(path) == ["aom"], f"{name}: the entrypoint must be aom"
    cmds = [rest for op, rest in instructions if op == "CMD"]
    if cmds:
        verb = _aom_verb(_exec_form(cmds[-1]))
        if verb is not None:
            _check_aom_verb(verb, name)

    text = path.read_text(encoding="utf-8")
    (spec,) = [s for s in _images()["images"].values() if REPO / s["dockerfile"] == path]
    if spec["torch"] == "cpu":
        assert "--index-url" in text and "https://download.pytorch.org/whl/cpu" in text
        assert froms[-1].startswith("python:"), "the CPU image is python:*-slim based"
    else:
        assert froms[-1].startswith(("nvidia/cuda:", "pytorch/pytorch:")), "the CUDA image base"
        assert "runtime" in froms[-1], "a CUDA runtime base (not devel)"
    assert re.search(r"torch==\$\{?TORCH_VERSION\}?|torch==\d", text), f"{name}: torch is not pinned"


def _dockerfile_user(path: Path) -> int:
    users = [rest for op, rest in _dockerfile(path) if op == "USER"]
    assert users, f"{_rel(path)}: no USER (runs as root)"
    user = users[-1].split(":", 1)[0]
    assert user.isdigit(), f"{_rel(path)}: USER {user} must be numeric so runAsNonRoot can verify it"
    assert int(user) != 0, f"{_rel(path)}: USER is root"
    return int(user)


def test_images_share_the_python_minor_version() -> None:
    """CPU and GPU Dask workers exchange pickled code: both images need the same Python."""
    cpu = (DOCKER / "Dockerfile.cpu").read_text(encoding="utf-8")
    cuda = (DOCKER / "Dockerfile.cuda").read_text(encoding="utf-8")
    m_cpu = re.search(r"^FROM python:(\d+\.\d+)", cpu, flags=re.M)
    m_cuda = re.search(r"^ARG PYTHON_VERSION=(\d+\.\d+)", cuda, flags=re.M)
    assert m_cpu and m_cuda
    assert m_cpu.group(1) == m_cuda.group(1)
    floor = re.search(r">=\s*(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert floor
    assert tuple(map(int, m_cpu.group(1).split("."))) >= (int(floor.group(1)), int(floor.group(2)))


def test_gpu_work_pool_template() -> None:
    from prefect.utilities.templating import find_placeholders

    template = _gpu_pool()
    assert set(template) >= {"job_configuration", "variables"}
    config = template["job_configuration"]
    props = template["variables"]["properties"]
    # every placeholder is a declared variable
    placeholders = {p.name for p in find_placeholders(config)}
    assert placeholders, "the template has no variables"
    assert placeholders <= set(props), f"undeclared: {placeholders - set(props)}"

    manifest = config["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "prefect-job"  # the worker streams logs from this container
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    assert container["image"] == "{{ image }}"
    assert container["args"] == "{{ command }}"
    # the image enters through `aom`; the worker's `prefect flow-run execute` needs a plain runner
    assert container["command"][0] in BASE_IMAGE_WRAPPERS
    assert isinstance(container["env"], list), "hard-coded env (secret refs); the worker prepends its own"
    # an evicted or drained pod's run goes back to its queue instead of staying Running
    # (tests/flows/test_deployments.py::test_a_gpu_pool_flow_run_stopped_by_its_pod_goes_back_to_the_queue)
    assert {"name": "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR", "value": "reschedule"} in container["env"]

    assert _image_spec(props["image"]["default"])["torch"] == "cuda", "the default image is the CUDA one"
    assert props["gpu_count"]["default"] >= 1

    rendered = _rendered_gpu_manifest()
    (rc,) = rendered["spec"]["template"]["spec"]["containers"]
    assert rc["resources"]["limits"]["nvidia.com/gpu"] == props["gpu_count"]["default"]
    assert rc["image"] == props["image"]["default"]
    tolerations = rendered["spec"]["template"]["spec"].get("tolerations", [])
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


def test_work_pool_variable_defaults_validate() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for path in sorted(POOLS.glob("*.json")):
        template = json.loads(path.read_text(encoding="utf-8"))
        assert set(template) >= {"job_configuration", "variables"}, path.name
        jsonschema.validate(_pool_defaults(template), template["variables"])


def test_local_work_pool_template_is_a_process_template() -> None:
    path = POOLS / "local-work-pool.json"
    if not path.exists():
        pytest.skip("infra/prefect/local-work-pool.json is optional")
    from prefect.utilities.templating import find_placeholders

    template = json.loads(path.read_text(encoding="utf-8"))
    config = template["job_configuration"]
    assert "job_manifest" not in config, "a process pool has no Kubernetes manifest"
    placeholders = {p.name for p in find_placeholders(config)}
    assert placeholders <= set(template["variables"]["properties"])


def test_readme_covers_the_path_to_a_running_deployment() -> None:
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    for needle in [
        "docker build -f infra/docker/Dockerfile.cpu",
        "docker build -f infra/docker/Dockerfile.cuda",
        "docker push",
        "dask-kubernetes-operator",
        "helm install",
        "kubectl apply -f infra/k8s/namespace.yaml",
        "kubectl -n aom create secret generic aom-object-storage",
        "kubectl apply -k infra/k8s",
        "prefect work-pool create gpu --type kubernetes --base-job-template",
        "prefect work-pool create local --type process",
        "prefect deploy --all",
        "prefect automation create --from-file infra/prefect/automations.yaml",
        "prefect deployment run",
        "kubectl -n aom logs",
        ".dockerignore",
        "CUDA torch",
    ]:
        assert needle in text, f"infra/README.md does not cover: {needle}"
    for ref in sorted(set(re.findall(r"(?<![\w/])infra/[\w./-]*\w", text))):
        assert (REPO / ref).exists(), f"infra/README.md names {ref}, which does not exist"


def test_unresponsive_run_automation_covers_every_flow_and_outlasts_heartbeats() -> None:
    """infra/prefect/automations.yaml validates as Prefect automations; the unresponsive-run one
    watches the flows of every deployment in prefect.yaml, and its window is at least 3 heartbeats
    at Prefect's default frequency (tests/flows/test_deployments.py runs it against a server)."""
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.flows import load_flow_from_entrypoint
    from prefect.settings.models.flows import FlowsSettings

    doc = yaml.safe_load((POOLS / "automations.yaml").read_text(encoding="utf-8"))
    (automation,) = [AutomationCore.model_validate(a) for a in doc["automations"]]
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Proactive
    heartbeat_s = FlowsSettings.model_fields["heartbeat_frequency"].default
    assert trigger.within.total_seconds() >= 3 * heartbeat_s
    assert "prefect.flow-run.heartbeat" in trigger.after & trigger.expect
    assert {"prefect.flow-run.Running", "prefect.flow-run.Retrying"} <= trigger.after
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    flows = {load_flow_from_entrypoint(str(REPO / d["entrypoint"])).name for d in deployments}
    (related,) = trigger.match_related if isinstance(trigger.match_related, list) else [trigger.match_related]
    assert set(related["prefect.resource.name"]) == flows
    assert [a.type for a in automation.actions] == ["change-flow-run-state"]
