"""MovieLens parsing on small files written here (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoppulse.datasets import DatasetError, Movie, Rating, load_movies, load_ratings

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_ratings_are_parsed_and_ordered_by_time_then_user_then_item(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.inter", INTER_HEADER + "2\t9\t4\t200\n1\t7\t3\t100\n1\t5\t5\t200\n")
    assert load_ratings(tmp_path) == [
        Rating("1", "7", 3.0, 100.0),
        Rating("1", "5", 5.0, 200.0),
        Rating("2", "9", 4.0, 200.0),
    ]


def test_a_malformed_rating_names_its_line(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.inter", INTER_HEADER + "1\t7\t3\t100\n1\t8\tgood\t100\n")
    with pytest.raises(DatasetError, match=r"ml-100k\.inter:3"):
        load_ratings(tmp_path)


def test_a_short_line_names_its_line(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.inter", INTER_HEADER + "1\t7\n")
    with pytest.raises(DatasetError, match=r"ml-100k\.inter:2"):
        load_ratings(tmp_path)


def test_movies_keep_their_genres_in_order_and_may_have_none(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ml-100k.item",
        ITEM_HEADER + "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tObscure\t1990\t\n"
        "3\tNo Genre Column\t1991\n",
    )
    movies = load_movies(tmp_path)
    assert movies["1"] == Movie("1", "Toy Story", "1995", ("Animation", "Children's", "Comedy"))
    assert movies["2"].genres == ()
    assert movies["3"].genres == ()


def test_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_movies(tmp_path)
