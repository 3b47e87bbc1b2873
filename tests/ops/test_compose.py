"""compose.yaml, as Debian's docker-compose parses and interpolates it (no engine needed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from support.ops import (
    COMPOSE_FILE,
    EXAMPLE_ENV,
    FILLED_SECRETS,
    NGINX_CONF,
    ROOT,
    clean_env,
    require_tool,
)

pytestmark = pytest.mark.unit

SERVICES = {"rabbitmq", "postgres", "migrate", "notifications", "edge", "proxy"}
MONITORING = {"prometheus", "grafana"}
STYLE_RULES_OFF = ("no-build-and-image", "no-unbound-port-interfaces")


def compose_config(env_file: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    compose = require_tool("docker-compose")
    return subprocess.run(
        [compose, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=clean_env(**environ),
        timeout=60,
        check=False,
    )


def operator_env(tmp_path: Path, **overrides: str) -> Path:
    """deploy/example.env as an operator fills it in: the three secrets, plus any overrides."""
    values = {**FILLED_SECRETS, **overrides}
    lines = []
    for line in EXAMPLE_ENV.read_text().splitlines():
        key = line.lstrip("# ").split("=", 1)[0]
        lines.append(f"{key}={values.pop(key)}" if key in values and "=" in line else line)
    lines += [f"{key}={value}" for key, value in values.items()]
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def rendered(tmp_path: Path, **overrides: str) -> dict[str, Any]:
    result = compose_config(operator_env(tmp_path, **overrides))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack as compose resolves it from the example env with its secrets filled in."""
    return rendered(tmp_path_factory.mktemp("env"))


def test_the_example_env_as_shipped_is_refused_until_the_secrets_are_written() -> None:
    result = compose_config(EXAMPLE_ENV)

    assert result.returncode != 0
    assert "in .env (see deploy/example.env)" in result.stderr


def test_the_current_compose_spec_accepts_the_file() -> None:
    """docker-compose 1.29 knows the 2021 spec; dclint validates against today's schema.

    Two of dclint's style rules are off: naming the image a `build:` makes is how migrate
    and notifications share one image, and the proxy's interface is set, by interpolation.
    """
    dclint = require_tool("dclint")
    result = subprocess.run(
        [dclint, str(COMPOSE_FILE), "--quiet", "--disable-rule", *STYLE_RULES_OFF],
        capture_output=True,
        text=True,
        env=clean_env(NO_COLOR="1"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("secret", sorted(FILLED_SECRETS))
def test_each_secret_is_required(tmp_path: Path, secret: str) -> None:
    result = compose_config(operator_env(tmp_path, **{secret: ""}))

    assert result.returncode != 0
    assert f"write {secret} in .env" in result.stderr


def test_the_stack_is_the_documented_one(config: dict[str, Any]) -> None:
    services = config["services"]

    assert set(services) == SERVICES | MONITORING
    # `docker compose up` starts the stack; Prometheus and Grafana only on request.
    assert {name for name, svc in services.items() if svc.get("profiles")} == MONITORING
    assert all(services[name]["profiles"] == ["monitoring"] for name in MONITORING)
    assert services["edge"]["deploy"]["replicas"] == 2
    assert services["notifications"]["deploy"]["replicas"] == 2
    assert "management" in services["rabbitmq"]["image"]
    for name in ("rabbitmq", "postgres", "proxy"):
        assert services[name]["healthcheck"]["test"], name
    # Replicas start only after the one-shot migration, never racing each other to migrate.
    assert services["notifications"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert services["migrate"]["command"] == ["migrate"]
    assert services["proxy"]["depends_on"]["edge"] == {"condition": "service_healthy"}
    # Each service runs the image its own Dockerfile builds, from the repository root.
    built = {
        name: (
            svc["image"].split(":")[0],
            Path(svc["build"]["context"]),
            svc["build"]["dockerfile"],
        )
        for name, svc in services.items()
        if "build" in svc
    }
    assert built == {
        "migrate": ("realtime-notifications", ROOT, "services/notifications/Dockerfile"),
        "notifications": ("realtime-notifications", ROOT, "services/notifications/Dockerfile"),
        "edge": ("realtime-ws-edge", ROOT, "services/ws-edge/Dockerfile"),
    }


def test_state_lives_in_named_volumes(config: dict[str, Any]) -> None:

    assert set(config["volumes"]) == {
        "rabbitmq-data",
        "postgres-data",
        "prometheus-data",
        "grafana-data",
    }
    volumes = {name: svc.get("volumes", []) for name, svc in config["services"].items()}
    assert "rabbitmq-data:/var/lib/rabbitmq:rw" in volumes["rabbitmq"]
    assert "postgres-data:/var/lib/postgresql/data:rw" in volumes["postgres"]
    # RabbitMQ names its data directory after the node, i.e. the host name: it must be fixed.
    assert config["services"]["rabbitmq"]["hostname"] == "rabbitmq"


def test_services_get_their_secrets_and_urls_from_env(config: dict[str, Any]) -> None:
    services = config["services"]
    rabbit = FILLED_SECRETS["RABBITMQ_PASSWORD"]
    postgres = FILLED_SECRETS["POSTGRES_PASSWORD"]

    for name in ("edge", "notifications", "migrate"):
        env = services[name]["environment"]
        assert env["JWT_SECRET"] == FILLED_SECRETS["JWT_SECRET"], name
        assert env["AMQP_URL"] == f"amqp://realtime:{rabbit}@rabbitmq:5672/", name
        assert env["LOG_FORMAT"] == "json", name
    for name in ("notifications", "migrate"):
        assert services[name]["environment"]["DATABASE_URL"] == (
            f"postgresql+asyncpg://realtime:{postgres}@postgres:5432/realtime"
        )
    assert "DATABASE_URL" not in services["edge"]["environment"]
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == rabbit
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == postgres


def test_service_containers_are_locked_down(config: dict[str, Any]) -> None:
    services = config["services"]

    for name in ("edge", "notifications", "migrate"):
        svc = services[name]
        assert svc["read_only"] is True, name
        assert svc["tmpfs"] == ["/tmp"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


def test_only_the_proxy_is_published_and_by_default_on_loopback(config: dict[str, Any]) -> None:
    services = config["services"]
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}

    assert published == {
        "proxy": ["127.0.0.1:8000:8000/tcp"],
        # The management UI and the monitoring are for the operator on this host only.
        "rabbitmq": ["127.0.0.1:15672:15672/tcp"],
        "prometheus": ["127.0.0.1:9090:9090/tcp"],
        "grafana": ["127.0.0.1:3000:3000/tcp"],
    }


def test_operator_overrides_reach_the_stack(tmp_path: Path) -> None:
    config = rendered(
        tmp_path, EDGE_REPLICAS="4", HTTP_BIND="0.0.0.0", HTTP_PORT="9000", LOG_FORMAT="text"
    )
    services = config["services"]

    assert services["edge"]["deploy"]["replicas"] == 4
    assert services["proxy"]["ports"] == ["0.0.0.0:9000:8000/tcp"]
    assert services["edge"]["environment"]["LOG_FORMAT"] == "text"


def test_the_proxy_and_monitoring_run_the_repository_config(config: dict[str, Any]) -> None:
    services = config["services"]

    def mounted(name: str) -> list[tuple[str, str]]:
        mounts = [v.split(":") for v in services[name]["volumes"] if v.startswith("/")]
        return [(Path(src).relative_to(ROOT).as_posix(), dst) for src, dst, _ in mounts]

    assert mounted("proxy") == [("deploy/nginx/nginx.conf", "/etc/nginx/nginx.conf")]
    assert mounted("prometheus") == [("deploy/prometheus", "/etc/prometheus")]
    assert mounted("grafana") == [
        ("deploy/grafana/provisioning", "/etc/grafana/provisioning"),
        ("deploy/grafana/realtime-dashboard.json", "/var/lib/grafana/dashboards/realtime.json"),
    ]
    for name in ("proxy", "prometheus", "grafana"):
        for src, _ in mounted(name):
            assert (ROOT / src).exists(), src


def test_the_proxy_never_cuts_a_socket_the_edge_keeps_alive(config: dict[str, Any]) -> None:
    """nginx closes a proxied socket idle for proxy_read_timeout; the edge pings inside it."""
    edge_env = config["services"]["edge"]["environment"]
    ws_location = NGINX_CONF.read_text().split("location ~ ^/ws(/|$) {", 1)[1].split("}", 1)[0]
    timeouts = dict(re.findall(r"(proxy_(?:read|send)_timeout) (\d+)s;", ws_location))

    assert set(timeouts) == {"proxy_read_timeout", "proxy_send_timeout"}
    for seconds in timeouts.values():
        assert int(seconds) > 2 * float(edge_env["EDGE_PONG_TIMEOUT"])
    assert float(edge_env["EDGE_PING_INTERVAL"]) < float(edge_env["EDGE_PONG_TIMEOUT"])


def test_every_variable_compose_reads_is_in_the_example_env() -> None:
    read = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    listed = set(re.findall(r"^#? ?(\w+)=", EXAMPLE_ENV.read_text(), re.M))

    assert read - listed == set(), "document these in deploy/example.env"
