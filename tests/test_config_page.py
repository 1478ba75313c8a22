"""docs/configuration.md is current: generated from the config dataclasses by docs/config_page.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from gemini_ray.config import Config, all_keys

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("config_page", ROOT / "docs" / "config_page.py")
page = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(page)


def test_the_page_is_current():
    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == page.render(), f"docs/configuration.md is stale: run `{page.COMMAND}`"


def test_every_key_users_type_has_a_row_with_a_docstring():
    rows = re.findall(r"^\| `([^`]+)` \| .* \| (.*) \|$", page.render(), re.MULTILINE)
    assert [key for key, _ in rows] == all_keys()
    assert [key for key, doc in rows if not doc.strip()] == []  # each field has a docstring below it


@dataclass(frozen=True)
class _FakeSection:
    old: int = 1
    """A key the page already had."""
    added: Optional[float] = 0.25
    """A key added after the page was written:
    its docstring spans two lines."""
    choice: Literal["a", "b"] = "a"
    """Either a or b."""
    mapping: dict[str, float] = field(default_factory=dict)
    """Names to amounts, with a <placeholder> and a | bar."""


@dataclass(frozen=True)
class _FakeConfig:
    fake: _FakeSection = field(default_factory=_FakeSection)


def test_a_field_added_to_a_dataclass_appears_on_the_page():
    text = page.render(_FakeConfig)
    assert "\n## fake\n" in text
    assert ("| `fake.added` | float or null | `0.25` | A key added after the page was written: its docstring "
            "spans two lines. |") in text
    assert "| `fake.choice` | one of 'a', 'b' | `a` | Either a or b. |" in text
    assert (r"| `fake.mapping` | mapping str → float | `{}` | Names to amounts, with a &lt;placeholder> and a \| "
            "bar. |") in text
    assert "| `fake.old` |" in text and "| `teacher." not in text


def test_check_refuses_a_stale_page_and_writing_makes_it_current(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(page, "ROOT", tmp_path)
    monkeypatch.setattr(page, "PAGE", tmp_path / "docs" / "configuration.md")
    assert page.main(["--check"]) == 1  # no page yet
    assert page.main([]) == 0
    assert page.main(["--check"]) == 0
    page.PAGE.write_text(page.render().replace("train.lr", "train.learning_rate"), encoding="utf-8")
    capsys.readouterr()
    assert page.main(["--check"]) == 1
    assert capsys.readouterr().err.strip() == "docs/configuration.md is stale: run `python docs/config_page.py`"


def test_sections_are_the_config_sections():
    assert re.findall(r"^## (\w+)$", page.render(), re.MULTILINE) == [f.name for f in dataclasses.fields(Config)]
