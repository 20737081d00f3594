"""deploy/ and cloudflared/ checked without a container engine: the Dockerfile through
dockerfile-parse, the compose file and cloudflared config as YAML against what they must say,
and the gateway config the containers get through the gateway's own config loader."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from gateway.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SECRET_WORDS = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=open(DEPLOY / "Dockerfile", "rb"))
    return parser


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def compose_interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` substitution."""
    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"compose would stop: {name}: {arg}")
        return arg if op and op.endswith("-") else ""
    return _COMPOSE_VAR.sub(substitute, text)


# --- Dockerfile ---------------------------------------------------------------------------

def test_dockerfile_base_is_slim_python(dockerfile):
    assert dockerfile.baseimage.startswith("python:3.11-slim")
    assert len(instructions(dockerfile, "FROM")) == 1


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = instructions(dockerfile, "USER")
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The user is created in the image and the data directory belongs to it.
    run = " ".join(instructions(dockerfile, "RUN"))
    assert f"--uid {user}" in run and "chown gateway:gateway /data" in run
    # Nothing runs as root after the switch except the health check and the command.
    last_user = max(i["startline"] for i in dockerfile.structure if i["instruction"] == "USER")
    assert not [i for i in dockerfile.structure if i["instruction"] == "RUN" and i["startline"] > last_user]


def test_dockerfile_health_check_asks_healthz(dockerfile):
    (check,) = instructions(dockerfile, "HEALTHCHECK")
    assert "--interval=" in check and "--timeout=" in check and "--retries=" in check
    assert "http://127.0.0.1:8000/healthz" in check and "CMD" in check
    assert instructions(dockerfile, "EXPOSE") == ["8000"]
    assert instructions(dockerfile, "CMD") == ['["gateway", "serve"]']


def test_dockerfile_bakes_in_no_secret(dockerfile):
    for name, value in {**dockerfile.envs, **dockerfile.args}.items():
        if SECRET_WORDS.search(name):
            pytest.fail(f"ENV/ARG {name}={value!r} would bake a secret into the image")
    copied = [part for value in instructions(dockerfile, "COPY") for part in shlex.split(value)[:-1]]
    assert copied == ["pyproject.toml", "README.md", "gateway", "deploy/gateway.yaml"]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context (the repository root)"
        assert ".env" not in source and "secret" not in source.lower()
    # The one config file the image carries names secrets only as ${VAR} references.
    config = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    for key in ("api_key", "secret_key"):
        assert re.fullmatch(r"\$\{[A-Z_]+\}", config[key]), f"{key} must come from the environment"


def test_build_context_ignore_file_keeps_the_context_small():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # ignore everything (.venv, data/, .git), then allow what the image needs
    allowed = {line[1:] for line in rules if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "gateway/", "deploy/gateway.yaml"}


# --- docker-compose.yml -------------------------------------------------------------------

def test_compose_services_and_profiles(compose):
    services = compose["services"]
    assert {"gateway", "cloudflared"} <= set(services)
    for name in ("gateway", "cloudflared"):
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"
    for name, service in services.items():  # anything else (postgres, ...) is opt-in
        if name not in ("gateway", "cloudflared"):
            assert service.get("profiles"), f"{name} has no profile"


def test_compose_cloudflared_runs_a_quick_tunnel_to_the_gateway(compose):
    tunnel = compose["services"]["cloudflared"]
    assert tunnel["image"].startswith("cloudflare/cloudflared:")
    assert tunnel["command"] == "tunnel --no-autoupdate --metrics 0.0.0.0:20241 --url http://gateway:8000"
    argv = shlex.split(tunnel["command"])
    target = argv[argv.index("--url") + 1]
    assert target == "http://gateway:8000" and "gateway" in compose["services"]
    assert tunnel["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "ports" not in tunnel, "the metrics server stays on the compose network"
    check = tunnel["healthcheck"]["test"]
    assert check[:2] == ["CMD", "cloudflared"] and check[-1] == "ready" and "127.0.0.1:20241" in check


def test_compose_gateway_service(compose):
    gateway = compose["services"]["gateway"]
    assert (ROOT / "deploy" / gateway["build"]["context"] / gateway["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert gateway["ports"] == ["127.0.0.1:8000:8000"]
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert {"interval", "timeout", "retries"} <= set(gateway["healthcheck"])
    mounts = gateway["volumes"]
    assert "./gateway.yaml:/etc/gateway/gateway.yaml:ro" in mounts
    assert any(m.endswith(":/data") for m in mounts)
    for name, value in gateway["environment"].items():
        if SECRET_WORDS.search(name):
            assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*|:-)?\}", str(value)), f"{name} must come from deploy/.env"
    assert (DEPLOY / ".env.example").exists() and ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_the_gateway_in_compose_finds_the_tunnel_by_itself(compose):
    """The config the container loads, with the environment compose gives it: public_url auto,
    looking at the cloudflared service's metrics server (its name and --metrics port)."""
    user_env = {"GATEWAY_API_KEY": "k" * 32, "GATEWAY_SECRET_KEY": "s" * 32}
    environment = {name: compose_interpolate(str(value), user_env)
                   for name, value in compose["services"]["gateway"]["environment"].items()}
    data = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    config = parse_config(data, env=environment)
    assert config.public_url == "auto"
    argv = shlex.split(compose["services"]["cloudflared"]["command"])
    metrics_port = argv[argv.index("--metrics") + 1].rsplit(":", 1)[1]
    assert config.tunnel.metrics == [f"cloudflared:{metrics_port}"]
    assert config.listen.port == 8000 and config.store == "sqlite:////data/gateway.db" and config.data_dir == "/data"
    assert config.api_key.get_secret_value() == "k" * 32
    with pytest.raises(AssertionError, match="GATEWAY_API_KEY"):
        compose_interpolate(str(compose["services"]["gateway"]["environment"]["GATEWAY_API_KEY"]), {})


# --- cloudflared/ -------------------------------------------------------------------------

def test_named_tunnel_config_template():
    config = yaml.safe_load((ROOT / "cloudflared" / "config.yml").read_text())
    assert config["tunnel"] == "TUNNEL_ID" and config["credentials-file"].endswith("TUNNEL_ID.json")
    assert config["metrics"] == "127.0.0.1:20241"
    *rules, last = config["ingress"]
    assert last == {"service": "http_status:404"}, "cloudflared requires a catch-all rule last"
    assert all("hostname" in rule for rule in rules)
    assert rules[0]["service"] == "http://localhost:8000"
    guide = (ROOT / "cloudflared" / "README.md").read_text()
    assert "make tunnel" in guide and "public_url: auto" in guide and "cloudflared tunnel create" in guide


def test_compose_postgres_profile(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"] and postgres["image"].startswith("postgres:")
    assert "ports" not in postgres, "the database stays on the compose network"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "${POSTGRES_PASSWORD" in str(postgres["environment"]["POSTGRES_PASSWORD"])
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["GATEWAY_STORE"].startswith("${GATEWAY_STORE:-sqlite:")
    assert "${GATEWAY_STORE" in (DEPLOY / "gateway.yaml").read_text()
