"""README.md stays true: its configuration table lists every setting with its real default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shoppulse.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `SHOPPULSE_([A-Z0-9_]+)` \| (.+?) \| (.+) \|$")


def readme_rows() -> dict[str, str]:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1).lower()] = match.group(2).strip()
    return rows


def default_of(name: str) -> Any:
    field = Settings.model_fields[name]
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_setting_is_in_the_table_and_nothing_else() -> None:
    assert set(readme_rows()) == set(Settings.model_fields)


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_the_table_gives_the_real_default(name: str) -> None:
    cell = readme_rows()[name]
    default = default_of(name)
    if default is None:
        assert not cell.startswith("`"), f"{name}: no default, the table says {cell}"
        return
    assert cell.startswith("`") and cell.endswith("`"), f"{name}: {cell}"
    shown = cell.strip("`")
    if isinstance(default, bool):
        assert shown == str(default).lower()
    elif isinstance(default, int | float):
        assert float(shown) == float(default), name
    elif isinstance(default, dict):
        assert json.loads(shown) == default, name
    else:
        assert shown == str(default), name
