"""Security settings: Kafka TLS/SASL options built from the settings object, secrets that
never show up in repr, str, logs or dumps, and the pseudonymisation function."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError

from shoppulse.cli import _safe_url
from shoppulse.kafka import faust_credentials, security_options
from shoppulse.localstack import redis_problem
from shoppulse.settings import Settings
from stream.privacy import PSEUDONYM_HEX_CHARS, pseudonym, user_key
from tests.certs import self_signed

SASL_PASSWORD = "kafka-pw-0f1e2d"
REDIS_PASSWORD = "redis-pw-9a8b7c"
PSEUDO_KEY = "pseudo-key-5e6f"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert, _ = self_signed(tmp_path_factory.mktemp("ca"), "shoppulse-test-ca")
    return cert


def secure_settings(ca_file: Path, protocol: str = "SASL_SSL") -> Settings:
    return Settings(
        kafka_security_protocol=protocol,  # type: ignore[arg-type]
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="shop",
        kafka_sasl_password=SecretStr(SASL_PASSWORD),
        kafka_ssl_cafile=str(ca_file),
        redis_url=SecretStr(f"rediss://shop:{REDIS_PASSWORD}@redis.example:6380/0"),
        pseudonymise_key=SecretStr(PSEUDO_KEY),
    )


def test_plaintext_by_default() -> None:
    assert security_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(Settings()) is None


def test_sasl_ssl_options(ca_file: Path) -> None:
    options = security_options(secure_settings(ca_file))
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "shoppulse-test-ca"),),)
    ]
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "shop",
        "sasl_plain_password": SASL_PASSWORD,
    }


def test_sasl_plaintext_has_no_tls(ca_file: Path) -> None:
    options = security_options(secure_settings(ca_file, "SASL_PLAINTEXT"))
    assert "ssl_context" not in options
    assert options["security_protocol"] == "SASL_PLAINTEXT"


def test_ssl_only(ca_file: Path) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(ca_file))
    options = security_options(settings)
    assert set(options) == {"security_protocol", "ssl_context"}
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_faust_gets_the_same_security_as_every_other_client(ca_file: Path, protocol: str) -> None:
    settings = secure_settings(ca_file, protocol)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    faust_options = credentials_to_aiokafka_auth(credentials)
    ours = security_options(settings)
    for name in ("security_protocol", "sasl_mechanism", "sasl_plain_username"):
        assert faust_options[name] == ours[name], name
    assert faust_options["sasl_plain_password"] == SASL_PASSWORD
    assert (faust_options["ssl_context"] is None) == (protocol == "SASL_PLAINTEXT")


def test_sasl_without_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="SHOPPULSE_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="shop")


def test_security_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path
) -> None:
    monkeypatch.setenv("SHOPPULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SHOPPULSE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("SHOPPULSE_KAFKA_SASL_USERNAME", "shop")
    monkeypatch.setenv("SHOPPULSE_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("SHOPPULSE_KAFKA_SSL_CAFILE", str(ca_file))
    monkeypatch.setenv("SHOPPULSE_PSEUDONYMISE_KEY", PSEUDO_KEY)
    settings = Settings()
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == SASL_PASSWORD
    assert settings.pseudonymise_key == SecretStr(PSEUDO_KEY)


def test_secrets_never_show(ca_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = secure_settings(ca_file)
    with caplog.at_level(logging.INFO):
        logging.getLogger("shoppulse.test").info("settings: %s / %r", settings, settings)
    shown = [
        repr(settings),
        str(settings),
        f"{settings}",
        settings.model_dump_json(),
        str(settings.model_dump()),
        caplog.text,
        repr(faust_credentials(settings)),
    ]
    for text in shown:
        for secret in (SASL_PASSWORD, REDIS_PASSWORD, PSEUDO_KEY):
            assert secret not in text, (secret, text[:200])
    assert "shop" in caplog.text  # the log line did render the settings


def test_safe_url_hides_the_redis_password() -> None:
    url = f"rediss://shop:{REDIS_PASSWORD}@redis.example:6380/0?ssl_ca_certs=/ca.pem"
    assert _safe_url(url) == "rediss://shop:***@redis.example:6380/0?ssl_ca_certs=/ca.pem"


def test_redis_problem_never_holds_the_password() -> None:
    # A port nobody listens on, and a URL whose port cannot be parsed.
    for url in (
        f"redis://shop:{REDIS_PASSWORD}@127.0.0.1:1/0",
        f"redis://shop:{REDIS_PASSWORD}@127.0.0.1:notaport/0",
    ):
        problem = redis_problem(url, timeout=0.5)
        assert problem is not None and REDIS_PASSWORD not in problem, problem


def test_pseudonym_is_a_keyed_hash() -> None:
    # HMAC-SHA256("k", "u1"), computed independently with openssl:
    # printf u1 | openssl dgst -sha256 -hmac k
    assert pseudonym("u1", SecretStr("k")) == "731757b19387f029ed2b9879ee82a538"
    assert len(pseudonym("anyone", "k")) == PSEUDONYM_HEX_CHARS
    assert pseudonym("u1", "k") != pseudonym("u1", "k2")
    assert pseudonym("u1", "k") != pseudonym("u2", "k")
    assert user_key("u1", None) == "u1"
    assert user_key("u1", SecretStr("k")) == pseudonym("u1", "k")
