"""What can be checked of docker-compose.yml and the Dockerfile without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoppulse.localstack import LISTPACK_ZSET_ENTRIES
from shoppulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SHOPPULSE_SERVICES = ("worker", "retrain")
SHOPPULSE_VARIABLE = re.compile(r"\bSHOPPULSE_[A-Z0-9_]+")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of compose's two spellings it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): str(value) for key, value in raw.items()}


def dockerfile_of(service: dict[str, Any]) -> Path:
    """The Dockerfile a service builds from (``build: .`` or the long form)."""
    build = service["build"]
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    context: str = build.get("context", ".")
    dockerfile: str = build.get("dockerfile", "Dockerfile")
    return ROOT / context / dockerfile


def setting_variables() -> set[str]:
    return {f"SHOPPULSE_{name.upper()}" for name in Settings.model_fields}


def test_the_four_services_exist() -> None:
    assert set(services()) == {"kafka", "redis", "worker", "retrain"}


@pytest.mark.parametrize("name", SHOPPULSE_SERVICES)
def test_shoppulse_services_build_from_the_repository_dockerfile(name: str) -> None:
    dockerfile = dockerfile_of(services()[name])

    assert dockerfile.resolve() == (ROOT / "Dockerfile").resolve()
    assert dockerfile.is_file()


def test_the_worker_and_retrain_commands() -> None:
    assert services()["worker"]["command"] == ["worker"]
    assert services()["retrain"]["command"] == ["retrain", "--every", "1h"]


def test_every_shoppulse_variable_in_the_file_is_a_setting() -> None:
    # The raw text, not just the parsed environments: a typo anywhere (an anchor, a comment
    # telling users what to set) would otherwise go unnoticed.
    named = set(SHOPPULSE_VARIABLE.findall(COMPOSE_FILE.read_text(encoding="utf-8")))

    assert named, "compose names no SHOPPULSE_ variable at all"
    assert named <= setting_variables(), f"not settings: {sorted(named - setting_variables())}"


@pytest.mark.parametrize("name", SHOPPULSE_SERVICES)
def test_shoppulse_services_reach_kafka_and_redis_by_service_name(name: str) -> None:
    env = environment(services()[name])

    assert env["SHOPPULSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["SHOPPULSE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["SHOPPULSE_NAMESPACE"] == "shoppulse"


@pytest.mark.parametrize("name", SHOPPULSE_SERVICES)
def test_shoppulse_services_wait_for_healthy_kafka_and_redis(name: str) -> None:
    depends_on = services()[name]["depends_on"]

    for dependency in ("kafka", "redis"):
        assert depends_on[dependency]["condition"] == "service_healthy"
        # service_healthy never becomes true for a service without a healthcheck.
        assert services()[dependency]["healthcheck"]["test"]


def test_kafka_is_a_single_kraft_node_advertised_as_kafka_9092() -> None:
    kafka = services()["kafka"]
    env = environment(kafka)

    assert kafka["image"] == "apache/kafka:3.9.0"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"], "the image refuses to start KRaft without CLUSTER_ID"
    assert not any("ZOOKEEPER" in key for key in env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_kafka_data_lives_on_its_volume() -> None:
    kafka = services()["kafka"]
    log_dirs = environment(kafka)["KAFKA_LOG_DIRS"]
    mounts = {mount.split(":", 1)[1] for mount in kafka["volumes"]}

    assert log_dirs in mounts


def test_redis_uses_the_alpine_image() -> None:
    assert services()["redis"]["image"] == "redis:7-alpine"
    assert "redis-cli" in services()["redis"]["healthcheck"]["test"]


def test_redis_keeps_co_occurrence_sets_of_the_default_cap_as_listpacks() -> None:
    command = services()["redis"]["command"]
    entries = int(command[command.index("--zset-max-listpack-entries") + 1])
    assert entries == LISTPACK_ZSET_ENTRIES >= Settings.model_fields["cooc_cap"].default


def test_the_worker_exposes_its_web_port_without_pinning_a_host_port() -> None:
    worker = services()["worker"]

    assert str(Settings.model_fields["web_port"].default) in map(str, worker["expose"])
    # A fixed host port ("6066:6066") would break `docker compose up --scale worker=3`.
    assert "ports" not in worker


def test_the_dockerfile_installs_the_package_and_runs_the_cli_as_non_root() -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    assert instructions[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install .") for line in instructions)
    for folder in ("shoppulse", "stream", "models", "workers"):
        assert f"COPY {folder} ./{folder}" in instructions
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["shoppulse"]' in instructions
    assert 'CMD ["worker"]' in instructions
