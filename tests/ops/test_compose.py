"""compose.yaml, as Debian's docker-compose parses and interpolates it (no engine needed)."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]
from support.ops import (
    COMPOSE_FILE,
    EXAMPLE_ENV,
    NGINX_CONF,
    RABBITMQ_CONF,
    ROOT,
    clean_env,
    make_secrets,
    require_tool,
)

pytestmark = pytest.mark.unit

SERVICES = {"rabbitmq-users", "rabbitmq", "postgres", "migrate", "notifications", "edge", "proxy"}
MONITORING = {"prometheus", "grafana"}
STYLE_RULES_OFF = ("no-build-and-image", "no-unbound-port-interfaces")

# Which secret files each container may read; none other is mounted into it.
SECRETS_BY_SERVICE = {
    "rabbitmq-users": {"edge_amqp_url", "notifications_amqp_url", "rabbitmq_admin_password"},
    "rabbitmq": set(),
    "postgres": {"postgres_password", "migrate_database_url", "notifications_database_url"},
    "migrate": {"migrate_database_url"},
    "notifications": {
        "jwt_secret",
        "jwt_previous_secrets",
        "notifications_amqp_url",
        "notifications_database_url",
    },
    "edge": {"jwt_secret", "jwt_previous_secrets", "edge_amqp_url"},
    "proxy": set(),
    "prometheus": set(),
    "grafana": {"grafana_admin_password"},
}
# Variables that would carry a secret's value; compose passes `<name>_FILE` instead.
SECRET_VARIABLES = {
    "JWT_SECRET",
    "JWT_PREVIOUS_SECRETS",
    "AMQP_URL",
    "DATABASE_URL",
    "POSTGRES_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
    "GF_SECURITY_ADMIN_PASSWORD",
}
NETWORKS_BY_SERVICE = {
    "rabbitmq-users": set(),  # network_mode: none
    "rabbitmq": {"backend"},
    "postgres": {"backend"},
    "migrate": {"backend"},
    "notifications": {"frontend", "backend"},
    "edge": {"frontend", "backend"},
    "proxy": {"frontend"},
    "prometheus": {"backend", "monitoring"},
    "grafana": {"monitoring"},
}


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
    """deploy/example.env as an operator fills it in: its settings, plus any overrides."""
    values = dict(overrides)
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
    """The stack as compose resolves it from the example env."""
    return rendered(tmp_path_factory.mktemp("env"))


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
        "rabbitmq-definitions",
        "postgres-data",
        "prometheus-data",
        "grafana-data",
    }
    volumes = {name: svc.get("volumes", []) for name, svc in config["services"].items()}
    assert "rabbitmq-data:/var/lib/rabbitmq:rw" in volumes["rabbitmq"]
    assert "postgres-data:/var/lib/postgresql/data:rw" in volumes["postgres"]
    # RabbitMQ names its data directory after the node, i.e. the host name: it must be fixed.
    assert config["services"]["rabbitmq"]["hostname"] == "rabbitmq"


def test_make_secrets_writes_every_secret_compose_reads(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    written = make_secrets(directory)
    compose_files = set(re.findall(r"\$\{SECRETS_DIR:-[^}]+\}/(\w+)", COMPOSE_FILE.read_text()))

    assert set(written) == compose_files == set().union(*SECRETS_BY_SERVICE.values())
    assert {name for name, value in written.items() if not value} == {"jwt_previous_secrets"}
    # No other host user can open the directory; the containers' users can read the files.
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE((directory / name).stat().st_mode) for name in written} == {0o644}
    # Each service has a user or role of its own, and a password of its own.
    users = {name: urlsplit(value).username for name, value in written.items() if "_url" in name}
    assert len(set(users.values())) == len(users) == 4, users
    passwords = [urlsplit(v).password or v for v in written.values() if v]
    assert len(set(passwords)) == len(passwords)
    # Running it again keeps every value: the broker and the database already use them.
    assert make_secrets(directory) == written


def test_each_service_reads_only_its_own_secrets_from_files(config: dict[str, Any]) -> None:
    services = config["services"]

    mounted = {
        name: {s["source"] for s in svc.get("secrets", [])} for name, svc in services.items()
    }
    assert mounted == SECRETS_BY_SERVICE
    for name, svc in services.items():
        env = svc.get("environment", {})
        assert not SECRET_VARIABLES & set(env), name
        # Every `<VAR>_FILE` names a file mounted into this container, and every mounted
        # file is named by one: nothing is mounted that the service does not read.
        named = {
            value.removeprefix("/run/secrets/")
            for key, value in env.items()
            if key.endswith("_FILE")
        }
        assert named == mounted[name], name
    # The schema owner's URL reaches migrate (and the server that creates the role) only.
    holders = {name for name, secrets in mounted.items() if "migrate_database_url" in secrets}
    assert holders == {"migrate", "postgres"}
    assert "JWT_SECRET_FILE" not in services["migrate"]["environment"]


def test_no_secret_value_reaches_the_compose_model(tmp_path: Path) -> None:
    """With real secret files in place, nothing compose resolves contains any of them."""
    secrets = make_secrets(tmp_path / "secrets")
    result = compose_config(operator_env(tmp_path), SECRETS_DIR=str(tmp_path / "secrets"))

    assert result.returncode == 0, result.stderr
    for name, value in secrets.items():
        if value:
            password = urlsplit(value).password or value
            assert password not in result.stdout, name
    model = yaml.safe_load(result.stdout)
    assert {Path(s["file"]).parent for s in model["secrets"].values()} == {tmp_path / "secrets"}


def test_the_proxy_cannot_reach_the_broker_or_the_database(config: dict[str, Any]) -> None:
    services = config["services"]
    networks = {name: set(svc.get("networks") or {}) for name, svc in services.items()}

    assert networks == NETWORKS_BY_SERVICE
    assert set(config["networks"]) == {"frontend", "backend", "monitoring"}
    for outsider in ("proxy", "grafana"):
        for data in ("postgres", "rabbitmq"):
            assert not networks[outsider] & networks[data], (outsider, data)
    # Writes one file from files: no network at all.
    assert services["rabbitmq-users"]["network_mode"] == "none"


def test_every_container_has_memory_cpu_and_process_limits(config: dict[str, Any]) -> None:
    for name, svc in config["services"].items():
        assert svc.get("mem_limit"), name
        assert 0 < float(svc.get("cpus", 0)) <= 1.0, name  # fits any host with one core
        assert int(svc.get("pids_limit", 0)) > 0, name


def test_rabbitmq_and_postgres_create_the_services_accounts(config: dict[str, Any]) -> None:
    services = config["services"]
    rabbitmq, postgres = services["rabbitmq"], services["postgres"]

    # No default user: the broker imports the users rabbitmq-users wrote, at every boot.
    assert not {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"} & set(
        rabbitmq.get("environment", {})
    )
    assert rabbitmq["depends_on"]["rabbitmq-users"] == {
        "condition": "service_completed_successfully"
    }
    assert "rabbitmq-definitions:/etc/rabbitmq/definitions:ro" in rabbitmq["volumes"]
    assert "rabbitmq-definitions:/definitions:rw" in services["rabbitmq-users"]["volumes"]
    assert services["rabbitmq-users"]["command"][-1] == "/definitions/definitions.json"
    assert RABBITMQ_CONF.read_text().count("/etc/rabbitmq/definitions/definitions.json") == 1
    # The superuser's password from a file; the roles from the URL files, at first start.
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"


def test_the_demo_page_is_off_unless_the_operator_asks(
    config: dict[str, Any], tmp_path: Path
) -> None:
    assert config["services"]["edge"]["environment"]["EDGE_DEMO"] == "false"
    asked = rendered(tmp_path, EDGE_DEMO="true")
    assert asked["services"]["edge"]["environment"]["EDGE_DEMO"] == "true"


def test_service_containers_are_locked_down(config: dict[str, Any]) -> None:
    services = config["services"]

    for name in ("edge", "notifications", "migrate", "rabbitmq-users"):
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
    assert mounted("rabbitmq-users") == [
        ("deploy/rabbitmq/definitions.py", "/opt/realtime/definitions.py")
    ]
    assert mounted("rabbitmq") == [
        ("deploy/rabbitmq/rabbitmq.conf", "/etc/rabbitmq/conf.d/20-realtime.conf")
    ]
    assert mounted("postgres") == [
        ("deploy/postgres/10-roles.sh", "/docker-entrypoint-initdb.d/10-roles.sh")
    ]
    assert mounted("prometheus") == [("deploy/prometheus", "/etc/prometheus")]
    assert mounted("grafana") == [
        ("deploy/grafana/provisioning", "/etc/grafana/provisioning"),
        ("deploy/grafana/realtime-dashboard.json", "/var/lib/grafana/dashboards/realtime.json"),
    ]
    for name in ("proxy", "rabbitmq-users", "rabbitmq", "postgres", "prometheus", "grafana"):
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
