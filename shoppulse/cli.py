"""The ``shoppulse`` command line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from enum import StrEnum
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import urlparse

import orjson
import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoppulse import localstack
from shoppulse.errors import ShopPulseError
from shoppulse.kafka import Publisher, ensure_topics
from shoppulse.settings import Settings, get_settings
from stream.keys import Keys, Topics

if TYPE_CHECKING:
    import redis

console = Console()
cli = typer.Typer(
    help="ShopPulse: real-time recommendations and churn alerts for online shops.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


class Dataset(StrEnum):
    movielens_100k = "movielens-100k"
    shop = "shop"  # the built-in shop simulator (shoppulse/simulator.py)


def fail(message: str) -> NoReturn:
    """End the command with ``message`` (plain text, not markup: it may quote user input such
    as ``[host]:port``) on one line."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # however long
    raise typer.Exit(2)


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        fail(f"bad configuration: {'; '.join(_validation_problem(e) for e in exc.errors())}")
    except SettingsError as exc:  # a JSON setting (e.g. SHOPPULSE_EVENT_WEIGHTS) is not JSON
        fail(f"bad configuration: {_parse_problem(exc)}")


_SETTING_NAME = re.compile(
    r"(?<![A-Za-z0-9_])(" + "|".join(sorted(Settings.model_fields, key=len, reverse=True)) + r")\b"
)
_PARSED_FIELD = re.compile(r'field "(\w+)"')


def _variable(field: str) -> str:
    """The environment variable of a settings field."""
    return f"SHOPPULSE_{field.upper()}"


def _validation_problem(error: ErrorDetails) -> str:
    """One validation error as ``SHOPPULSE_X (path): message``; errors of the whole model (no
    field) name the variables their message mentions."""
    message = error["msg"].removeprefix("Value error, ")
    loc = error["loc"]
    if not loc:
        return _SETTING_NAME.sub(lambda m: _variable(m.group(1)), message)
    path = ".".join(str(part) for part in loc[1:])
    return f"{_variable(str(loc[0]))}{f' ({path})' if path else ''}: {message}"


def _parse_problem(exc: SettingsError) -> str:
    found = _PARSED_FIELD.search(str(exc))
    if found is None:
        return str(exc)
    cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
    return f"{_variable(found.group(1))}: not valid JSON{cause}"


def require_services(settings: Settings) -> None:
    """Fail with a readable message, not a traceback, when Kafka or Redis is unreachable."""
    problem = localstack.redis_problem(settings.redis_dsn, cluster=settings.redis_cluster)
    if problem is not None:
        fail(f"Redis is not reachable at {_safe_url(settings.redis_dsn)}: {problem}")
    if not localstack.kafka_reachable(settings.kafka_bootstrap, security=_kafka_security(settings)):
        fail(f"Kafka is not reachable at {settings.kafka_bootstrap}")


def _kafka_security(settings: Settings) -> dict[str, Any]:
    from shoppulse.kafka import security_options

    return security_options(settings)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages (also when the URL does not parse)."""
    try:
        password = urlparse(url).password
    except ValueError:
        return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)
    if password:
        return url.replace(f":{password}@", ":***@")
    return url


# -- worker ------------------------------------------------------------------------------------
class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


@cli.command()
def worker(
    loglevel: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Log level (any case).")
    ] = LogLevel.info,
) -> None:
    """Run the stream worker against the configured Kafka and Redis."""
    from stream.app import run_worker  # Faust is slow to import; only this command needs it

    settings = load_settings()
    require_services(settings)
    run_worker(settings, loglevel.value)


# -- retrain ------------------------------------------------------------------------------------
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h`` or ``1d`` as seconds."""
    value = text.strip().lower()
    unit = DURATION_UNITS.get(value[-1:])
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 15m, 1h or 1d") from None
    if seconds <= 0:
        raise typer.BadParameter("the duration must be positive")
    return seconds


@cli.command()
def retrain(
    every: Annotated[
        str | None, typer.Option(help="Keep retraining at this interval (e.g. 1h, 30m).")
    ] = None,
) -> None:
    """Train ALS on the live interactions, publish it if it beats the serving model, and
    recompute every user's recommendations with it; train the churn model and segments on the
    order and click histories, publish them and re-score every customer."""
    interval = parse_duration(every) if every is not None else None
    settings = load_settings()
    with _redis_client(settings):  # a URL that cannot work is not worth retrying
        pass
    if interval is None:
        require_services(settings)
        if not _retrain_round(settings):
            raise typer.Exit(1)
        return
    while True:  # an error is reported and the next tick tries again
        _retrain_round(settings, check_services=True)
        console.print(f"next retraining in {interval:.0f}s")
        time.sleep(interval)


def _retrain_round(settings: Settings, check_services: bool = False) -> bool:
    """ALS, then churn and segments; False if either could not be trained or published."""
    if check_services and (problem := _services_problem(settings)) is not None:
        console.print(f"[bold red]retraining skipped:[/] {problem}", soft_wrap=True)
        return False
    ok = _retrain_once(settings)
    return _retrain_churn(settings) and ok


def _services_problem(settings: Settings) -> str | None:
    problem = localstack.redis_problem(settings.redis_dsn, cluster=settings.redis_cluster)
    if problem is not None:
        return f"Redis is not reachable at {_safe_url(settings.redis_dsn)}: {problem}"
    if not localstack.kafka_reachable(settings.kafka_bootstrap, security=_kafka_security(settings)):
        return f"Kafka is not reachable at {settings.kafka_bootstrap}"
    return None


def _attempt(settings: Settings, what: str, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run one training step; a Kafka, Redis or ShopPulse error is reported in one line (the
    serving model stays) and gives None."""
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    try:
        return asyncio.run(coroutine)
    except (ShopPulseError, KafkaError, RedisError, OSError) as exc:
        kind = {KafkaError: "Kafka error: ", RedisError: "Redis error: "}
        prefix = next((text for cls, text in kind.items() if isinstance(exc, cls)), "")
        detail = localstack.without_password(f"{prefix}{exc}", settings.redis_dsn)
        console.print(
            f"[bold red]{what} failed:[/] {detail}; the serving model stays", soft_wrap=True
        )
        return None


def _retrain_once(settings: Settings) -> bool:
    """One retraining; False if no model could be trained (the serving one stays)."""
    from workers.retrain import Retrainer

    async def run() -> Any:
        retrainer = Retrainer(settings, show_progress=console.is_terminal)
        try:
            return await retrainer.run_once()
        finally:
            await retrainer.close()

    result = _attempt(settings, "training", run())
    if result is None:
        return False
    console.print(_result_table("retraining", result.as_dict()))
    return True


def _result_table(title: str, fields: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value")
    for name, value in fields.items():
        if name == "cutoffs":
            value = ", ".join(_utc(c)[:10] for c in value)
        elif isinstance(value, dict):
            value = "  ".join(f"{k} {v:.4f}" for k, v in value.items())
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def _retrain_churn(settings: Settings) -> bool:
    """One churn + segments training; a history too short to learn from is reported, not an
    error (the serving version, or none, stays)."""
    from workers.churn_train import ChurnTrainer

    async def run() -> Any:
        trainer = ChurnTrainer(settings)
        try:
            return await trainer.run_once()
        finally:
            await trainer.close()

    result = _attempt(settings, "churn training", run())
    if result is None:
        return False
    if not result.published:
        console.print(f"[yellow]churn model not trained:[/] {result.reason}; the serving one stays")
        return True
    console.print(_result_table("churn and segments", result.as_dict()))
    return True


# -- evaluate -----------------------------------------------------------------------------------
class Benchmark(StrEnum):
    movielens_100k = "movielens-100k"
    churn = "churn"


class ChurnData(StrEnum):
    simulator = "simulator"
    cdnow = "cdnow"


@cli.command()
def evaluate(
    benchmark: Annotated[Benchmark, typer.Argument(help="What to evaluate on.")],
    out: Annotated[Path, typer.Option(help="Folder for the table, JSON and plot.")] = Path(
        "artifacts/evaluation"
    ),
    tune: Annotated[
        bool, typer.Option(help="Tune hyper-parameters on validation folds (about 2 minutes).")
    ] = False,
    live: Annotated[
        bool,
        typer.Option(help="Also run it through Kafka, a stream worker, retrain and Redis."),
    ] = False,
    streaming: Annotated[
        bool,
        typer.Option(
            help="Also replay in time order and compare frozen, retrain-only and real-time "
            "(prequential HR@10; about 3 minutes)."
        ),
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="churn: the simulator seed (default: the first published).")
    ] = None,
    customers: Annotated[
        int | None,
        typer.Option(min=50, help="churn --live: simulate this many customers (default 2500)."),
    ] = None,
    clickstream: Annotated[
        bool, typer.Option(help="churn --live: publish the clickstream too, not only orders.")
    ] = False,
    dataset: Annotated[
        ChurnData,
        typer.Option(
            help="churn: the built-in shop simulator, or CDNOW (real orders, fetched from the "
            "Lifetimes wheel on PyPI on first use)."
        ),
    ] = ChurnData.simulator,
) -> None:
    """movielens-100k: the Microsoft Recommenders protocol (per-item stratified 75/25 split,
    seed 42, top-10, training items removed; popularity, item-item, ALS and the hybrid).
    churn: churn risk on the shop simulator against its true churn (or on CDNOW's real orders
    with `--dataset cdnow`), beside baselines; alerts, segments and lifetime value (`--live`:
    through Kafka, a worker, retrain and Redis)."""
    if benchmark is Benchmark.churn:
        if tune or streaming:
            fail("--tune and --streaming apply to movielens-100k only")
        if dataset is ChurnData.cdnow:
            if live or seed is not None or customers is not None or clickstream:
                fail("--live, --seed, --customers and --clickstream apply to the simulator only")
            _evaluate_churn_cdnow(out)
            return
        _evaluate_churn(out, live, seed, customers, clickstream)
        return
    if seed is not None or customers is not None or clickstream:
        fail("--seed, --customers and --clickstream apply to churn only")
    if dataset is not ChurnData.simulator:
        fail("--dataset applies to churn only")
    from shoppulse import datasets
    from workers.evaluate import evaluate_movielens

    folder = _run_sync(datasets.movielens_dir)
    with console.status("training and scoring every model"):
        rows = evaluate_movielens(folder, out, tune=tune)
    table = Table(title="MovieLens-100k (offline)")
    for column in ("model", "P@10", "R@10", "NDCG@10", "MAP"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(
            row.model,
            f"{row.precision:.4f}",
            f"{row.recall:.4f}",
            f"{row.ndcg:.4f}",
            f"{row.map:.4f}",
        )
    console.print(table)
    console.print(f"table, JSON and plot in {out}/")
    if live:
        _evaluate_live(folder, out)
    if streaming:
        _evaluate_streaming(folder, out)


def _churn_eval_config(seed: int) -> Any:
    """The evaluation's settings, as the service's own (horizon, cutoffs, alerts, segments)."""
    from workers.churn_eval import EvalConfig

    settings = load_settings()
    return EvalConfig(
        seed=seed,
        horizon_days=settings.churn_horizon_days,
        training_cutoffs=settings.churn_training_cutoffs,
        cutoff_spacing_days=settings.churn_cutoff_spacing_days,
        alert_threshold=settings.churn_alert_threshold,
        alert_margin=settings.churn_alert_margin,
        alert_cooldown_days=settings.churn_alert_cooldown_days,
        segments=settings.segments,
    )


def _churn_table(title: str) -> Table:
    table = Table(title=title)
    columns = ("mode", "scorer", "ROC-AUC", "PR-AUC", "Brier", "active ROC-AUC", "repeat ROC-AUC")
    for column in columns:
        table.add_column(column, justify="left" if column in ("mode", "scorer") else "right")
    return table


def _add_churn_rows(table: Table, report: Any) -> None:
    for row in report.rows:
        table.add_row(
            report.config.mode,
            row.model,
            f"{row.roc_auc:.4f}",
            f"{row.pr_auc:.4f}",
            f"{row.brier:.4f}",
            f"{row.active_roc_auc:.4f}",
            f"{row.repeat_roc_auc:.4f}",
        )


def _evaluate_churn_cdnow(out: Path) -> None:
    from workers.churn_eval import evaluate_churn, load_data, on_cdnow

    config = on_cdnow(_churn_eval_config(0))
    with console.status("fetching CDNOW (the Lifetimes wheel, on first use)"):
        data = _run_sync(lambda: load_data(config))
    with console.status("living through CDNOW's orders, training and scoring"):
        report = evaluate_churn(out, config=config, data=data)
    table = _churn_table(f"churn risk on {report.title}, offline")
    _add_churn_rows(table, report)
    console.print(table)
    a = report.alerts
    console.print(
        f"alerts at the cutoff {a.at_cutoff} (precision {a.at_cutoff_precision:.3f}, recall "
        f"{a.at_cutoff_recall:.3f})"
    )
    console.print(f"report and plot in {out}/ (churn-cdnow.md, .json, .png)")


def _evaluate_churn(
    out: Path, live: bool, seed: int | None, customers: int | None, clickstream: bool
) -> None:
    from dataclasses import replace

    from shoppulse.simulator import PUBLISHED_SEEDS
    from workers.churn_eval import evaluate_churn, summary_markdown

    seed = PUBLISHED_SEEDS[0] if seed is None else seed
    base = _churn_eval_config(seed)
    table = _churn_table(f"churn risk on the simulated shop (seed {seed}), offline")
    reports = []
    for with_clicks in (True, False):
        config = replace(base, clickstream=with_clicks)
        with console.status(f"simulating, training and scoring ({config.mode})"):
            report = evaluate_churn(out, config=config)
        reports.append(report)
        _add_churn_rows(table, report)
    console.print(table)
    for report in reports:
        a = report.alerts
        console.print(
            f"{report.config.mode}: alerts at the cutoff {a.at_cutoff} (precision "
            f"{a.at_cutoff_precision:.3f}, recall {a.at_cutoff_recall:.3f}); in the next "
            f"{report.config.alert_weeks} weeks {a.later} (precision {a.later_precision:.3f}); "
            f"at most {a.max_per_user} per user"
        )
    (out / "churn.md").write_text(summary_markdown(reports))
    console.print(f"reports and plots in {out}/ (churn.md, churn-*.json, churn-*.png)")
    if live:
        _evaluate_churn_live(out, seed, customers, clickstream)


def _evaluate_churn_live(out: Path, seed: int, customers: int | None, clickstream: bool) -> None:
    from workers.churn_live import markdown, run_live_churn

    settings = load_settings()
    if not localstack.redis_reachable(settings.redis_dsn, cluster=settings.redis_cluster):
        fail(f"Redis is not reachable at {_safe_url(settings.redis_dsn)}")
    result = _run(run_live_churn(settings, console, out, seed, clickstream, customers))
    table = Table(title=f"churn risk through the live service ({result.mode}, seed {seed})")
    for column in ("scorer", "ROC-AUC", "PR-AUC", "Brier", "active ROC-AUC"):
        table.add_column(column, justify="left" if column == "scorer" else "right")
    for row in result.rows:
        table.add_row(
            row.model,
            f"{row.roc_auc:.4f}",
            f"{row.pr_auc:.4f}",
            f"{row.brier:.4f}",
            f"{row.active_roc_auc:.4f}",
        )
    console.print(table)
    text = markdown(result)
    console.print(text.split("\n\n")[-2])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"churn-live-{result.mode}.md").write_text(text)
    report = orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    (out / f"churn-live-{result.mode}.json").write_bytes(report)


def _evaluate_streaming(folder: Path, out: Path) -> None:
    from workers.prequential import as_report, run_streaming

    settings = load_settings()
    if not localstack.redis_reachable(settings.redis_dsn, cluster=settings.redis_cluster):
        fail(f"Redis is not reachable at {_safe_url(settings.redis_dsn)}")
    results = _run(run_streaming(settings, folder, console))
    table = Table(title="MovieLens-100k, time-ordered replay (prequential HR@10)")
    for column in ("configuration", "HR@10", "hits", "scored", "retrains"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for r in results:
        table.add_row(
            r.configuration, f"{r.hit_rate:.4f}", str(r.hits), str(r.scored), str(r.retrains)
        )
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    report = orjson.dumps(as_report(results), option=orjson.OPT_INDENT_2)
    (out / "movielens-100k-streaming.json").write_bytes(report)


def _evaluate_live(folder: Path, out: Path) -> None:
    from workers.live_eval import run_live

    settings = load_settings()
    if not localstack.redis_reachable(settings.redis_dsn, cluster=settings.redis_cluster):
        fail(f"Redis is not reachable at {_safe_url(settings.redis_dsn)}")
    result = _run(run_live(settings, folder, console, out))
    metrics = result.metrics
    console.print(
        f"[bold]through the live pipeline[/] (model {result.model_version}): "
        f"P@10 {metrics.precision:.4f}  R@10 {metrics.recall:.4f}  "
        f"NDCG@10 {metrics.ndcg:.4f}  MAP {metrics.map:.4f}  "
        f"({result.train_events:,} events in {result.ingest_seconds:.0f}s, "
        f"retrain {result.retrain_seconds:.0f}s)"
    )
    out.mkdir(parents=True, exist_ok=True)
    report = orjson.dumps(asdict(result), option=orjson.OPT_INDENT_2)
    (out / "movielens-100k-live.json").write_bytes(report)


def _run_sync(function: Any) -> Any:
    try:
        return function()
    except ShopPulseError as exc:
        fail(str(exc))


# -- bench --------------------------------------------------------------------------------------
@cli.command()
def bench(
    quick: Annotated[
        bool, typer.Option(help="A smaller load for checking a change (under a minute).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where to write the figures as JSON.")] = Path(
        "artifacts/bench.json"
    ),
    soak: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Instead: a soak of this many minutes (memory, Redis growth, backlog); "
            "figures to artifacts/soak.json unless --out is given.",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(min=1, help="Soak rate, events/s (default: half the measured drain rate)."),
    ] = None,
    latency_base: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="Events/s that the latency phases' 50% and 80% are of (default: the measured "
            "ShopPulse drain rate); fix it to compare two versions at the same load.",
        ),
    ] = None,
    latency_load: Annotated[
        list[float] | None,
        typer.Option(
            min=0.05,
            max=1.0,
            help="A latency phase's load, as a fraction of the latency base; repeat it "
            "(--latency-load 0.3 --latency-load 0.4) to replace 50% and 80% with a series, "
            "and find the load up to which latency stays low.",
        ),
    ] = None,
    drain_only: Annotated[
        bool,
        typer.Option(
            help="Only the drains, no latency phases: about a minute at full load, to compare "
            "two versions' drain rates back to back."
        ),
    ] = False,
) -> None:
    """Drain rate of a bare Faust worker and of the ShopPulse worker side by side,
    click-to-recommendation latency at 50% and 80% load, memory and CPU per event."""
    if drain_only and (latency_base is not None or latency_load or soak is not None):
        fail(
            "--drain-only measures no latency and runs no soak: "
            "drop --latency-base, --latency-load and --soak"
        )
    settings = load_settings()
    try:
        if soak is not None:
            from shoppulse.soak import run_soak

            soak_out = out if out != Path("artifacts/bench.json") else Path("artifacts/soak.json")
            run_soak(settings, soak, rate, soak_out, console)
            return
        from shoppulse.bench import run_bench

        run_bench(settings, quick, out, console, latency_base, drain_only, latency_load or ())
    except ShopPulseError as exc:
        fail(str(exc))


# -- status -------------------------------------------------------------------------------------
@cli.command()
def status() -> None:
    """Is everything up? Broker and Redis, consumer lag, model versions, event counts."""
    settings = load_settings()
    table = Table(title=f"ShopPulse · namespace {settings.namespace}", show_header=False)
    table.add_column("what")
    table.add_column("state")
    redis_problem = localstack.redis_problem(settings.redis_dsn, cluster=settings.redis_cluster)
    redis_up = redis_problem is None
    kafka_up = localstack.kafka_reachable(
        settings.kafka_bootstrap, security=_kafka_security(settings)
    )
    redis_where = _safe_url(settings.redis_dsn) + (f" ({redis_problem})" if redis_problem else "")
    table.add_row("Redis", _up(redis_up, redis_where))
    table.add_row("Kafka", _up(kafka_up, settings.kafka_bootstrap))
    if kafka_up:
        from aiokafka.errors import KafkaError

        from shoppulse.kafka import consumer_lag

        topics = Topics(settings.namespace)
        try:
            lag = asyncio.run(
                consumer_lag(settings.kafka_bootstrap, settings.namespace, input_topics(topics))
            )
        except KafkaError as exc:
            table.add_row("lag", f"[yellow]unavailable[/] ({exc})")
        else:
            for topic, behind in lag.items():
                table.add_row(f"lag {topic}", f"{behind:,} events")
    if redis_up:
        for name, value in _redis_status(settings).items():
            table.add_row(name, value)
    console.print(table)
    if not (redis_up and kafka_up):
        raise typer.Exit(1)


def _up(up: bool, where: str) -> str:
    return f"[green]reachable[/] {where}" if up else f"[red]unreachable[/] {where}"


def _redis_status(settings: Settings) -> dict[str, str]:
    keys = Keys.of(settings)
    with _redis_client(settings, decode=True) as client:
        stats = client.hgetall(keys.stats())
        clock = client.get(keys.clock())
        users = client.scard(keys.users())
        als = _model_state(client, keys.current_model("als"), keys.models())
        churn = _model_state(client, keys.current_model("churn"), keys.churn_models())
    return {
        "events applied": f"{int(stats.get('applied', 0)):,}",
        "duplicates skipped": f"{int(stats.get('duplicates', 0)):,}",
        "users": f"{int(users):,}",
        "clock (event time)": _utc(float(clock)) if clock else "-",
        "ALS model": als,
        "churn model": churn,
    }


def _model_state(
    client: redis.Redis | redis.RedisCluster, current_key: str, published_key: str
) -> str:
    """The serving version of one model kind and how long ago it was published."""
    raw = client.get(current_key)
    if raw is None:
        return "none yet (run shoppulse retrain)"
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    published = client.zscore(published_key, version)
    age = f" (published {time.time() - float(published):,.0f}s ago)" if published else ""
    return f"{version}{age}"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


# -- reading state -----------------------------------------------------------------------------
def _user_id(value: str) -> str:
    if not value.strip():
        fail("the user id must not be empty")
    return value


@contextmanager
def _redis_client(
    settings: Settings, decode: bool = False
) -> Iterator[redis.Redis | redis.RedisCluster]:
    """A synchronous Redis client; a bad URL or a Redis error ends the command with one line
    (never the password)."""
    import redis

    try:
        opener = redis.RedisCluster if settings.redis_cluster else redis.Redis
        client = opener.from_url(settings.redis_dsn, decode_responses=decode)
    except (TypeError, ValueError) as exc:
        _redis_failed(settings, "bad Redis URL", exc)
    try:
        yield client
    # TypeError/ValueError: URL options that do not fit the scheme (e.g. ssl_ca_certs on
    # redis://) only surface on the first connection.
    except (redis.RedisError, TypeError, ValueError) as exc:
        _redis_failed(settings, "cannot read Redis", exc)
    finally:
        client.close()


def _redis_failed(settings: Settings, what: str, exc: Exception) -> NoReturn:
    problem = localstack.without_password(str(exc), settings.redis_dsn)
    fail(f"{what} at {_safe_url(settings.redis_dsn)}: {problem}")


def _read_json(settings: Settings, key: str) -> Any:
    with _redis_client(settings) as client:
        raw = client.get(key)
    return orjson.loads(raw) if raw is not None else None


@cli.command()
def recs(user: Annotated[str, typer.Argument(help="User id.", callback=_user_id)]) -> None:
    """Show a user's current recommendations."""
    settings = load_settings()
    document = _read_json(settings, Keys.of(settings).recs(_stored_id(settings, user)))
    if document is None:
        fail(f"no recommendations for user {user!r} in namespace {settings.namespace!r}")
    console.print(recommendation_table(document))


def recommendation_table(document: dict[str, Any], titles: dict[str, str] | None = None) -> Table:
    table = Table(
        title=f"user {document['user_id']} · model {document['model_version']} · "
        f"as of {time.strftime('%Y-%m-%d %H:%M', time.gmtime(document['as_of']))} UTC"
    )
    table.add_column("#", justify="right")
    table.add_column("item")
    if titles is not None:
        table.add_column("title")
    table.add_column("score", justify="right")
    table.add_column("source")
    for rank, item in enumerate(document["items"], 1):
        cells = [str(rank), item["item_id"]]
        if titles is not None:
            cells.append(titles.get(item["item_id"], ""))
        cells += [f"{item['score']:.3f}", item["source"]]
        table.add_row(*cells)
    return table


@cli.command()
def profile(user: Annotated[str, typer.Argument(help="User id.", callback=_user_id)]) -> None:
    """Show a user's live profile as JSON."""
    settings = load_settings()
    document = _read_json(settings, Keys.of(settings).profile(_stored_id(settings, user)))
    if document is None:
        fail(f"no profile for user {user!r} in namespace {settings.namespace!r}")
    console.print_json(orjson.dumps(document).decode())


def _stored_id(settings: Settings, user: str) -> str:
    from stream.privacy import user_key

    return user_key(user, settings.pseudonymise_key)


@cli.command()
def pseudonym(user: Annotated[str, typer.Argument(help="User id.", callback=_user_id)]) -> None:
    """The id a user's state is stored under (SHOPPULSE_PSEUDONYMISE_KEY's keyed hash of the
    user id; the id itself when no key is set)."""
    console.print(_stored_id(load_settings(), user), highlight=False, soft_wrap=True)


# -- alerts ------------------------------------------------------------------------------------
@cli.command()
def alerts(
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start with the oldest alert the topic keeps.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stop after N alerts (default: follow forever).")
    ] = None,
    idle: Annotated[
        float | None,
        typer.Option(min=0.1, help="Stop after this many seconds without a new alert."),
    ] = None,
) -> None:
    """Follow the churn alert topic ({ns}.alerts.churn), one line per alert."""
    settings = load_settings()
    if not localstack.kafka_reachable(settings.kafka_bootstrap, security=_kafka_security(settings)):
        fail(f"Kafka is not reachable at {settings.kafka_bootstrap}")
    topic = Topics(settings.namespace).churn_alerts
    where = "from the beginning" if from_beginning else "new alerts"
    console.print(f"following [cyan]{topic}[/] ({where}; Ctrl-C stops)")
    try:
        shown = _run(_follow_alerts(settings, topic, from_beginning, limit, idle))
    except KeyboardInterrupt:
        return
    console.print(f"[dim]{shown} alert{'s' if shown != 1 else ''}[/]")


async def _follow_alerts(
    settings: Settings, topic: str, from_beginning: bool, limit: int | None, idle: float | None
) -> int:
    from aiokafka.errors import KafkaError

    from shoppulse.kafka import follow

    shown = 0
    try:
        async for alert in follow(settings.kafka_bootstrap, topic, from_beginning, idle):
            console.print(alert_line(alert))
            shown += 1
            if limit is not None and shown >= limit:
                break
    except KafkaError as exc:
        raise ShopPulseError(f"cannot read {topic} from {settings.kafka_bootstrap}: {exc}") from exc
    return shown


def alert_line(alert: Any) -> str:
    """One churn alert as a line of rich markup (tolerates documents missing fields)."""
    from rich.markup import escape

    if not isinstance(alert, dict):
        return f"[yellow]not an alert:[/] {escape(str(alert))}"
    risk = alert.get("risk")
    before = alert.get("previous_risk")
    level = risk if isinstance(risk, int | float) else 0.0
    colour = "red" if level >= 0.7 else "yellow" if level >= 0.4 else "green"
    bar = "█" * round(max(0.0, min(1.0, level)) * 10)
    when = alert.get("as_of")
    stamp = _utc(float(when)) if isinstance(when, int | float) else "-"
    reasons = alert.get("reasons") or []
    text = "; ".join(
        r if isinstance(r, str) else str(r.get("text") or r.get("feature") or r)
        for r in reasons
        if isinstance(r, str | dict)
    )
    risk_text = f"{level:.2f}" if isinstance(risk, int | float) else "?"
    before_text = f" (was {before:.2f})" if isinstance(before, int | float) else ""
    return (
        f"[dim]{stamp}[/]  user [bold]{escape(str(alert.get('user_id', '?')))}[/]  "
        f"risk [{colour}]{risk_text} {bar:<10}[/]{before_text}  "
        f"[dim]{escape(text)}[/]"
    )


# -- replay ------------------------------------------------------------------------------------
@cli.command()
def replay(
    dataset: Annotated[Dataset, typer.Argument(help="Dataset to publish.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Publish only the first N.")] = None,
    rate: Annotated[float | None, typer.Option(min=1, help="Events per second.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="shop: the simulator seed (default: the first published).")
    ] = None,
    clickstream: Annotated[
        bool, typer.Option(help="shop: publish the clickstream too, not only the orders.")
    ] = True,
) -> None:
    """Publish a dataset to the input topics, in event-time order: MovieLens-100k ratings as
    clicks, or the built-in shop simulator's catalog, orders and clicks."""
    settings = load_settings()
    if dataset is Dataset.shop:
        require_services(settings)
        _run(publish_shop(settings, seed, clickstream, limit, rate))
        return
    if seed is not None:
        fail("--seed applies to the shop simulator only")
    require_services(settings)
    _run(publish_movielens(settings, limit, rate))


async def publish_shop(
    settings: Settings, seed: int | None, clickstream: bool, limit: int | None, rate: float | None
) -> int:
    """Publish a simulated shop (catalog, then orders and clicks in time order); returns how
    many user events were published."""
    from shoppulse.replay import shop_events
    from shoppulse.simulator import PUBLISHED_SEEDS, ShopConfig, simulate_shop

    seed = PUBLISHED_SEEDS[0] if seed is None else seed
    with console.status(f"simulating the shop (seed {seed})"):
        shop = simulate_shop(seed, ShopConfig(clickstream=clickstream))
        stream = shop_events(shop.orders, shop.clicks)
    events = stream.events[:limit]
    topics = Topics(settings.namespace)
    await ensure_topics(settings.kafka_bootstrap, input_topics(topics), settings.partitions)
    orders = [message for kind, _, message in events if kind == "orders"]
    clicks = [message for kind, _, message in events if kind == "clicks"]
    async with Publisher(settings.kafka_bootstrap) as publisher:
        with _progress() as progress:
            task = progress.add_task("catalog", total=len(stream.catalog))
            await publisher.send_many(
                topics.catalog, stream.catalog, on_sent=partial(progress.advance, task)
            )
            # Orders first: a shop's history of orders, then its clickstream (each keeps its
            # time order; churn histories do not depend on the order they arrive in).
            for name, topic, messages in (
                ("orders", topics.orders, orders),
                ("clicks", topics.clicks, clicks),
            ):
                if not messages:
                    continue
                task = progress.add_task(name, total=len(messages))
                await publisher.send_many(
                    topic, messages, rate, on_sent=partial(progress.advance, task)
                )
    return len(events)


def _run(coroutine: Any) -> Any:
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    try:
        return asyncio.run(coroutine)
    except ShopPulseError as exc:
        fail(str(exc))
    except KafkaError as exc:
        fail(f"Kafka error: {exc}")
    except RedisError as exc:
        fail(f"Redis error: {exc}")


async def publish_movielens(settings: Settings, limit: int | None, rate: float | None) -> int:
    """Publish MovieLens-100k; returns how many user events (ratings) were published."""
    from shoppulse import datasets
    from shoppulse.replay import movielens_events

    with console.status("loading MovieLens-100k (from the recbole wheel)"):
        folder = datasets.movielens_dir()
        ratings = datasets.load_ratings(folder)[:limit]
        movies = datasets.load_movies(folder)
    events = movielens_events(ratings, movies)
    topics = Topics(settings.namespace)
    await ensure_topics(settings.kafka_bootstrap, input_topics(topics), settings.partitions)
    async with Publisher(settings.kafka_bootstrap) as publisher:
        with _progress() as progress:
            task = progress.add_task("catalog", total=len(events.catalog))
            await publisher.send_many(
                topics.catalog, events.catalog, on_sent=partial(progress.advance, task)
            )
            task = progress.add_task("ratings as clicks", total=len(events.clicks))
            await publisher.send_many(
                topics.clicks, events.clicks, rate, on_sent=partial(progress.advance, task)
            )
    return len(events.clicks)


def input_topics(topics: Topics) -> list[str]:
    return [topics.clicks, topics.orders, topics.catalog]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


# -- dev: the whole local stack ----------------------------------------------------------------
@cli.command()
def dev(
    limit: Annotated[int | None, typer.Option(min=1, help="Replay only N ratings.")] = None,
    rate: Annotated[float | None, typer.Option(min=1, help="Replay rate, events/s.")] = None,
    show_users: Annotated[int, typer.Option(min=0, help="Users whose recs are shown.")] = 3,
    exit_after_demo: Annotated[bool, typer.Option(help="Stop once the demo is shown.")] = False,
) -> None:
    """Start a broker and Redis if none is reachable, a stream worker, and a MovieLens demo.
    Ctrl-C, SIGTERM or SIGHUP stops everything it started."""
    settings = load_settings()
    with ExitStack() as stack:
        # Entered first, so left last: a second signal cannot cut the children's shutdown short.
        stack.enter_context(stop_on_signals())
        try:
            _dev_session(stack, settings, limit, rate, show_users, exit_after_demo)
        except KeyboardInterrupt:
            console.print("stopping")


def _dev_session(
    stack: ExitStack,
    settings: Settings,
    limit: int | None,
    rate: float | None,
    show_users: int,
    exit_after_demo: bool,
) -> None:
    """Services and worker (entered into ``stack``, so they stop with it), replay and demo."""
    env = stack.enter_context(local_services(settings))
    stack.enter_context(worker_process(env))
    os.environ.update(env)
    get_settings.cache_clear()
    settings = load_settings()
    before = _run(events_seen(settings))
    published = _run(publish_movielens(settings, limit, rate))
    demo_users = _run(wait_for_replay(settings, before + published))
    show_recommendations(settings, demo_users[:show_users])
    if exit_after_demo:
        return
    console.print(
        "\n[bold]ShopPulse is running.[/] Try [cyan]shoppulse recs 1[/] or "
        "[cyan]shoppulse profile 1[/] in another shell. Ctrl-C stops everything."
    )
    while True:
        time.sleep(3600)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP act as Ctrl-C (KeyboardInterrupt), so the children are stopped on
    the way out instead of being left to init; once one has arrived, further ones are
    ignored until the shutdown is over."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def local_services(settings: Settings) -> Iterator[dict[str, str]]:
    """Reuse reachable Kafka and Redis, start local ones otherwise; yields the env to use."""
    env = {
        "SHOPPULSE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SHOPPULSE_REDIS_URL": settings.redis_dsn,
    }
    with ExitStack() as stack:
        problem = localstack.redis_problem(settings.redis_dsn, cluster=settings.redis_cluster)
        if problem is None:
            console.print(f"Redis: using {_safe_url(settings.redis_dsn)}")
        else:
            port = _local_redis_port(settings.redis_dsn)
            # Something else on the port (another kind of Redis, a password): say what, rather
            # than fail to start one there.
            if port is None or localstack.tcp_reachable(localstack.LOCALHOST, port):
                fail(f"Redis is not usable at {_safe_url(settings.redis_dsn)}: {problem}")
            if settings.redis_cluster:
                cluster = _start(lambda: localstack.LocalRedisCluster(first_port=port).start())
                stack.enter_context(cluster)
                ports = ", ".join(str(node.port) for node in cluster.nodes)
                console.print(f"Redis: started a local Redis Cluster on ports {ports}")
            else:
                server = _start(lambda: localstack.RedisServer(port=port).start())
                stack.enter_context(server)
                console.print(f"Redis: started redis-server on port {port}")
        if localstack.kafka_reachable(settings.kafka_bootstrap):
            console.print(f"Kafka: using {settings.kafka_bootstrap}")
        else:
            host, port = localstack.parse_bootstrap(settings.kafka_bootstrap)
            if host not in LOCAL_HOSTS:
                fail(f"Kafka is not reachable at {settings.kafka_bootstrap}")
            broker = _start(lambda: localstack.Broker(port=port).start())
            stack.enter_context(broker)
            env["SHOPPULSE_KAFKA_BOOTSTRAP"] = broker.bootstrap
            console.print(f"Kafka: started the Tansu broker (memory only) at {broker.bootstrap}")
        yield env


def _local_redis_port(url: str) -> int | None:
    """The port of a ``redis://`` URL on this machine (where dev may start a Redis), else None
    (another host, another scheme, or a URL that does not parse)."""
    try:
        parsed = urlparse(url)
        port = parsed.port or localstack.DEFAULT_REDIS_PORT
    except ValueError:
        return None
    return port if parsed.scheme == "redis" and parsed.hostname in LOCAL_HOSTS else None


def _start(factory: Any) -> Any:
    try:
        return factory()
    except ShopPulseError as exc:
        fail(str(exc))


@contextmanager
def worker_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """The stream worker as a child process, logging to a file."""
    log_path = Path(".shoppulse") / "worker.log"
    with localstack.worker_process(env, log_path) as process:
        console.print(f"Worker: started (pid {process.pid}, log {log_path})")
        yield process


async def events_seen(settings: Settings) -> int:
    from stream.store import RedisStore, redis_for

    store = RedisStore(redis_for(settings), Keys.of(settings))
    try:
        return await store.events_seen()
    finally:
        await store.close()


async def wait_for_replay(settings: Settings, target: int, timeout: float = 900) -> list[str]:
    """Wait until the worker has taken in ``target`` events in all; returns users to show."""
    from stream.store import RedisStore, redis_for

    store = RedisStore(redis_for(settings), Keys.of(settings))
    try:
        with console.status("waiting for the worker to catch up") as status:
            deadline = time.monotonic() + timeout
            while (seen := await store.events_seen()) < target:
                if time.monotonic() > deadline:
                    raise ShopPulseError("the worker did not catch up; see .shoppulse/worker.log")
                status.update(f"worker has taken in {seen:,} of {target:,} events")
                await asyncio.sleep(0.5)
        return sorted(await store.known_users(), key=lambda u: (len(u), u))
    finally:
        await store.close()


def show_recommendations(settings: Settings, users: list[str]) -> None:
    keys = Keys.of(settings)
    for user in users:
        document = _read_json(settings, keys.recs(user))
        if document is None:
            continue
        titles = _titles(settings, [item["item_id"] for item in document["items"]])
        console.print(recommendation_table(document, titles))


def _titles(settings: Settings, item_ids: list[str]) -> dict[str, str]:
    keys = Keys.of(settings)
    with _redis_client(settings, decode=True) as client:
        pipe = client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hget(keys.item(item_id), "title")
        return {i: t or "" for i, t in zip(item_ids, pipe.execute(), strict=True)}


def main() -> None:
    cli()
