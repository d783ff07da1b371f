"""The command line answers bad input and unreachable services with a message, not a
traceback (no broker or Redis needed: these are the failure paths)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from shoppulse.cli import cli
from shoppulse.localstack import free_port
from shoppulse.settings import Settings, get_settings

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


@pytest.mark.parametrize(
    "other", [["--latency-base", "5000"], ["--latency-load", "0.3"], ["--soak", "1"]]
)
def test_a_drain_only_bench_refuses_what_it_does_not_measure(other: list[str]) -> None:
    result = runner.invoke(cli, ["bench", "--drain-only", *other])
    assert result.exit_code == 2
    assert "--drain-only measures no latency" in one_line_error(result)


@pytest.mark.parametrize("load", ["0", "1.5", "half"])
def test_a_latency_load_outside_a_share_of_the_base_is_refused(load: str) -> None:
    result = runner.invoke(cli, ["bench", "--latency-load", "0.3", "--latency-load", load])
    assert result.exit_code == 2
    assert "--latency-load" in result.output
    assert "Traceback" not in result.output


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
        (
            "SHOPPULSE_KAFKA_BOOTSTRAP",
            "localhost:abc",
            "SHOPPULSE_KAFKA_BOOTSTRAP: 'localhost:abc': the port must be a number",
        ),
        (
            "SHOPPULSE_REDIS_URL",
            "redis://127.0.0.1:6379/abc",
            "SHOPPULSE_REDIS_URL: bad Redis URL: the database (the path after host:port) "
            "must be a number, not 'abc'",
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
    # A URL that does not parse is a bad setting (one line, exit 2), as for every command.
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", "redis://:s3cret@h:abc/0")
    monkeypatch.setenv("SHOPPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    line = one_line_error(runner.invoke(cli, ["status"], terminal_width=200))
    assert line.startswith("error: bad configuration: SHOPPULSE_REDIS_URL: bad Redis URL")
    assert "s3cret" not in line


@pytest.mark.parametrize(
    "bootstrap",
    ["localhost:9092", "a:1, b:2", "kafka", "[::1]:9092", "[::1]", "::1", "broker-0.svc:9093"],
)
def test_bootstrap_lists_kafka_clients_accept_are_accepted(bootstrap: str) -> None:
    assert Settings(kafka_bootstrap=bootstrap).kafka_bootstrap == bootstrap


@pytest.mark.parametrize(
    ("bootstrap", "problem"),
    [
        ("localhost:abc", "'localhost:abc': the port must be a number from 1 to 65535"),
        ("a:1,b:x", "'b:x': the port"),
        ("a:0", "the port must be a number from 1 to 65535"),
        ("a:65536", "the port must be a number from 1 to 65535"),
        ("a:", "'a:' has no port"),
        (":9092", "':9092' has no host"),
        ("a:1,", "an empty server in the list"),
        ("  ", "no bootstrap server given"),
        ("kafka://a:9092", "'kafka://a:9092' is not host:port"),
        ("a:b:9092", "'a:b:9092' is not host:port"),
        ("[::1]9092", "'[::1]9092' is not host:port"),
    ],
)
def test_a_bootstrap_list_that_does_not_parse_is_refused(bootstrap: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(kafka_bootstrap=bootstrap)
    (error,) = caught.value.errors()
    assert error["loc"] == ("kafka_bootstrap",)
    assert problem in error["msg"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://h",
        "redis://h/",
        "redis://shop:pw@h:6379/15",
        "redis://h/abc?db=2",  # ?db= wins over the path, as in redis-py
        "rediss://shop:pw@h:6380/0?ssl_ca_certs=/ca.pem",
        "unix:///run/redis.sock?db=1",
        "redis://[::1]:6379/0",
    ],
)
def test_redis_urls_redis_py_reads_as_meant_are_accepted(url: str) -> None:
    assert Settings(redis_url=url).redis_dsn == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:6379/abc", "the database (the path after host:port) must be a number"),
        ("redis://h:6379/-1", "must be a number, not '-1'"),
        ("redis://h:6379/0/1", "must be a number, not '0/1'"),
        ("redis://h:6379/0?db=x", "Invalid value for 'db'"),
        ("redis://:s3cret@h:abc/0", "the host or port does not parse"),
        ("redis://h:0/0", "the port must be a number from 1 to 65535"),
        ("redis://[::1/0", "the host or port does not parse"),
        ("http://h:6379/0", "starts with redis://, rediss:// or unix://"),
        ("unix://", "needs the socket's path"),
    ],
)
def test_a_redis_url_redis_py_would_misread_is_refused(url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url=url)
    (error,) = caught.value.errors()
    assert error["loc"] == ("redis_url",)
    assert error["msg"].startswith("Value error, bad Redis URL: ")
    assert problem in error["msg"]
    assert "s3cret" not in str(caught.value)  # nor is the input shown in the error's text


def test_local_services_reads_the_bootstrap_the_settings_accepted() -> None:
    from shoppulse.errors import LocalStackError
    from shoppulse.localstack import parse_bootstrap

    assert parse_bootstrap("[::1]:19092,b:1") == ("::1", 19092)
    assert parse_bootstrap("localhost") == ("localhost", 9092)
    with pytest.raises(LocalStackError, match="bad Kafka bootstrap address 'h:abc'"):
        parse_bootstrap("h:abc")


def test_an_unknown_log_level_is_a_usage_error() -> None:
    result = runner.invoke(cli, ["worker", "--loglevel", "bogus"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Invalid value for '--loglevel'" in result.output
    assert "'bogus' is not one of" in result.output


@pytest.mark.parametrize("level", ["warning", "WARNING", "Debug"])
def test_log_levels_are_accepted_in_any_case(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    # Past the option parsing, the worker checks its services: an unreachable Redis ends it.
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    line = one_line_error(runner.invoke(cli, ["worker", "--loglevel", level]))
    assert "Redis is not reachable" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/3", "the Redis URL must name database 0"),
        ("unix:///run/redis.sock", "the Redis URL must be redis:// or rediss://"),
    ],
)
def test_a_redis_cluster_url_that_cannot_work_is_one_line(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("SHOPPULSE_REDIS_URL", url)
    monkeypatch.setenv("SHOPPULSE_REDIS_CLUSTER", "true")
    line = one_line_error(runner.invoke(cli, ["status"], terminal_width=200))
    assert line.startswith("error: bad configuration: ")
    assert f"with SHOPPULSE_REDIS_CLUSTER=true, {expected}" in line


def test_bench_and_soak_refuse_a_redis_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPPULSE_REDIS_CLUSTER", "true")
    for command in (["bench", "--quick"], ["bench", "--soak", "1"]):
        line = one_line_error(runner.invoke(cli, command, terminal_width=200))
        assert "measures a single Redis: unset SHOPPULSE_REDIS_CLUSTER" in line
