"""The command line answers bad input and unreachable services with a message, not a
traceback (no broker or Redis needed: these are the failure paths)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner, Result

from shoppulse.cli import cli
from shoppulse.localstack import free_port
from shoppulse.settings import get_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("SHOPPULSE_NAMESPACE", "cli-test")


def test_every_command_has_help() -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("dev", "worker", "replay", "retrain", "evaluate", "status", "recs", "profile"):
        assert command in result.output
        sub = runner.invoke(cli, [command, "--help"])
        assert sub.exit_code == 0, sub.output


def test_unreachable_redis_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    result = runner.invoke(cli, ["worker"])
    assert result.exit_code == 2
    assert "Redis is not reachable" in result.output
    assert "Traceback" not in result.output


def test_unreachable_kafka_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = runner.invoke(cli, ["replay", "movielens-100k", "--limit", "10"])
    assert result.exit_code == 2
    assert "Kafka is not reachable" in result.output


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_BATCH_SIZE", "lots")
    result = runner.invoke(cli, ["worker"])
    assert result.exit_code == 2
    assert "SHOPPULSE_BATCH_SIZE" in result.output


def test_a_bad_namespace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_NAMESPACE", "a:b")
    result = runner.invoke(cli, ["recs", "1"])
    assert result.exit_code == 2
    assert "SHOPPULSE_NAMESPACE" in result.output


def test_an_unknown_dataset_is_refused_with_the_choices() -> None:
    result = runner.invoke(cli, ["replay", "netflix"])
    assert result.exit_code == 2
    assert "movielens-100k" in result.output


def test_status_reports_an_unreachable_broker_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOPPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = runner.invoke(cli, ["status"])
    assert result.exit_code == 1
    assert "unreachable" in result.output
    assert "Traceback" not in result.output


def test_a_bad_retrain_interval_is_refused() -> None:
    result = runner.invoke(cli, ["retrain", "--every", "soon"])
    assert result.exit_code == 2
    assert "duration" in result.output


def test_a_negative_rate_is_refused() -> None:
    result = runner.invoke(cli, ["replay", "movielens-100k", "--rate", "-5"])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["recs", "profile", "pseudonym"])
@pytest.mark.parametrize("user", ["", "  "])
def test_an_empty_user_id_is_refused(command: str, user: str) -> None:
    result = runner.invoke(cli, [command, user])
    assert result.exit_code == 2
    assert "must not be empty" in one_line_error(result)


def test_alerts_has_help_and_refuses_a_bad_limit() -> None:
    assert "alerts" in runner.invoke(cli, ["--help"]).output
    help_text = runner.invoke(cli, ["alerts", "--help"]).output
    assert "--from-beginning" in help_text and "--limit" in help_text
    for bad in (["--limit", "0"], ["--limit", "many"], ["--idle", "0"]):
        result = runner.invoke(cli, ["alerts", *bad])
        assert result.exit_code == 2, bad
        assert "Traceback" not in result.output


def test_alerts_reports_an_unreachable_broker_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = runner.invoke(cli, ["alerts", "--limit", "1"])
    assert result.exit_code == 2
    assert "Kafka is not reachable" in result.output
    assert "Traceback" not in result.output


def test_unreachable_redis_for_recs_and_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    for command in ("recs", "profile"):
        result = runner.invoke(cli, [command, "u1"])
        assert result.exit_code == 2
        assert "cannot read Redis" in result.output
        assert "Traceback" not in result.output


def test_an_alert_line_shows_user_risk_and_reasons() -> None:
    from rich.console import Console

    from shoppulse.cli import alert_line

    console = Console(width=200, no_color=True)
    alert = {
        "alert_id": "a1",
        "user_id": "u[7]",
        "risk": 0.83,
        "previous_risk": 0.41,
        "as_of": 1_700_000_000.0,
        "reasons": ["no visit in 40 days", {"feature": "orders_90d", "text": "orders dropped"}],
    }
    with console.capture() as captured:
        console.print(alert_line(alert))
        console.print(alert_line({"user_id": "u2"}))
        console.print(alert_line(["not", "an", "alert"]))
    lines = captured.get().splitlines()
    assert "u[7]" in lines[0] and "0.83" in lines[0] and "was 0.41" in lines[0]
    assert "2023-11-14" in lines[0] and "orders dropped" in lines[0]
    assert "u2" in lines[1] and "risk ?" in lines[1]
    assert "not an alert" in lines[2]


# Every command that reads the settings, with arguments that get it as far as reading them.
SETTINGS_COMMANDS = [
    ["worker"],
    ["retrain"],
    ["retrain", "--every", "1h"],
    ["replay", "movielens-100k"],
    ["replay", "shop"],
    ["evaluate", "churn"],
    ["bench"],
    ["status"],
    ["recs", "1"],
    ["profile", "1"],
    ["pseudonym", "1"],
    ["alerts"],
    ["dev"],
]


def one_line_error(result: Result) -> str:
    """The output of a command that must have failed with one line, not an exception."""
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command", SETTINGS_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SHOPPULSE_EVENT_WEIGHTS", "{bad", "SHOPPULSE_EVENT_WEIGHTS: not valid JSON"),
        ("SHOPPULSE_BLEND_WEIGHTS", "[1", "SHOPPULSE_BLEND_WEIGHTS: not valid JSON"),
        ("SHOPPULSE_EVENT_WEIGHTS", '{"view": "x"}', "SHOPPULSE_EVENT_WEIGHTS (view): "),
        (
            "SHOPPULSE_CHURN_ALERT_MARGIN",
            "0.9",
            "SHOPPULSE_CHURN_ALERT_MARGIN must be below SHOPPULSE_CHURN_ALERT_THRESHOLD",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, command: list[str], variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    line = one_line_error(runner.invoke(cli, command))
    assert line.startswith("error: bad configuration: ")
    assert expected in line
    assert "SHOPPULSE_:" not in line and "Value error" not in line


@pytest.mark.parametrize(
    "command",
    [
        ["recs", "1"],
        ["profile", "1"],
        ["worker"],
        ["retrain"],
        ["retrain", "--every", "1h"],
        ["replay", "movielens-100k"],
        ["dev"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize(
    "url",
    ["notaurl", "redis://:s3cret@h:abc/0", "redis://:s3cret@localhost:abc/0", "redis://[::1/0"],
)
def test_a_bad_redis_url_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, command: list[str], url: str
) -> None:
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", url)
    monkeypatch.setenv("SHOPPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    line = one_line_error(runner.invoke(cli, command))
    assert "Redis" in line
    assert "s3cret" not in line


def test_status_says_why_redis_is_unusable_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", "redis://:s3cret@h:abc/0")
    monkeypatch.setenv("SHOPPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = runner.invoke(cli, ["status"], terminal_width=200)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "bad Redis URL" in result.output
    assert "s3cret" not in result.output
