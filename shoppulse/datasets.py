"""Real data for demos and evaluation: MovieLens-100k, read from the ``recbole`` wheel.

The wheel ships the dataset (``recbole/dataset_example/ml-100k/``). We fetch the wheel with
pip, because PyPI is reachable wherever ShopPulse itself installs, copy the three files into a
cache folder and never install recbole. No data is committed to this repository.

The files are RecBole "atomic files": tab-separated, with a header naming each column and its
type, e.g. ``user_id:token``. Columns are looked up by name, not position, so a reordered
file still loads and a different file fails loudly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoppulse.errors import DatasetError

RECBOLE_REQUIREMENT = "recbole==1.2.1"
MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{suffix}"
MOVIELENS_SUFFIXES = ("inter", "item", "user")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "shoppulse" / "ml-100k"
INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
_PIP_STDERR_LINES = 10


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


def _download_wheel(into: Path) -> Path:
    """Download the recbole wheel (only the wheel: no dependencies, no sdist) into ``into``."""
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
        RECBOLE_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("recbole-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join(result.stderr.strip().splitlines()[-_PIP_STDERR_LINES:])
        raise DatasetError(
            f"could not download the {RECBOLE_REQUIREMENT} wheel with pip "
            f"(exit code {result.returncode}):\n{tail or '(no output)'}"
        )
    return wheels[0]


def _extract_movielens(wheel: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            for suffix in MOVIELENS_SUFFIXES:
                member = MOVIELENS_MEMBER.format(suffix=suffix)
                try:
                    data = archive.read(member)
                except KeyError:
                    raise DatasetError(f"{wheel.name} has no {member}") from None
                _write_atomically(folder / f"ml-100k.{suffix}", data)
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
