"""docker-compose.yml cannot run here (no Docker engine); check what a YAML check can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shoppulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_the_four_services_exist() -> None:
    assert set(compose()["services"]) == {"kafka", "redis", "worker", "retrain"}


def test_kafka_runs_in_kraft_mode_from_the_official_image() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(kafka["environment"])


def test_workers_build_from_the_repository_dockerfile() -> None:
    assert (ROOT / "Dockerfile").is_file()
    services = compose()["services"]
    for name in ("worker", "retrain"):
        assert services[name]["build"] == "."
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_shoppulse_variable_is_a_real_setting() -> None:
    fields = {f"SHOPPULSE_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "retrain"):
        variables = set(compose()["services"][name]["environment"])
        assert variables, f"{name} has no environment"
        assert variables <= fields, variables - fields
        assert compose()["services"][name]["environment"]["SHOPPULSE_KAFKA_BOOTSTRAP"] == (
            "kafka:9092"
        )


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["shoppulse"]' in dockerfile
    for folder in ("shoppulse", "stream", "models", "workers"):
        assert f"COPY {folder} ./{folder}" in dockerfile
