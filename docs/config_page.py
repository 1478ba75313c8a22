"""Write docs/configuration.md: every config key with its type, default and docstring, read from the config
dataclasses in gemini_ray/config.py (a field's docstring is the string right below it).

    python docs/config_page.py            # (re)write the page
    python docs/config_page.py --check    # exit 1 if the page is stale (tests/test_config_page.py)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: document the package of this checkout, not another install
    sys.path.insert(0, str(ROOT))

from gemini_ray import config  # noqa: E402
from gemini_ray.paths import atomic_write_text  # noqa: E402

PAGE = ROOT / "docs" / "configuration.md"
COMMAND = "python docs/config_page.py"

__all__ = ["field_docs", "render", "main"]


@functools.lru_cache(maxsize=None)
def _class_node(cls: type) -> ast.ClassDef:
    return ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]


def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring} of a dataclass, from its source: the string expression after each field."""
    body = _class_node(cls).body
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _type(annotation: Any) -> str:
    """A field's type as a YAML user reads it: `int`, `float or null`, `one of 'a', 'b'`, `mapping str → float`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = " or ".join(_type(a) for a in args if a is not type(None))
        return inner + " or null" if type(None) in args else inner
    if origin is Literal:
        return "one of " + ", ".join(f"'{a}'" for a in args)
    if origin is dict:
        return f"mapping {_type(args[0])} → {_type(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> str:
    """A field's default as it would be written in YAML or on the command line."""
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("...").strip() or '""'


def _cell(text: str) -> str:
    """Text inside one Markdown table cell: one line, no column breaks, no HTML tags (<name> would vanish)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))  # odd: code spans


def _section_table(section: str, cls: type) -> list[str]:
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        lines.append(f"| `{section}.{f.name}` | {_cell(_type(hints[f.name]))} | `{_default(f)}` | "
                     f"{_cell(docs.get(f.name, ''))} |")
    return lines


def render(root: type = config.Config) -> str:
    """The page's Markdown: one table per section of `root` (a dataclass whose fields are the sections)."""
    sections = typing.get_type_hints(root)
    lines = [
        "# Configuration",
        "",
        f"Generated from the docstrings in `gemini_ray/config.py` by `{COMMAND}`: edit those and rerun it.",
        "",
        "Every key is `section.key`, written the same way in a `--config` YAML file (under its section), as a",
        "command-line override (`gemini-ray distill train.lr=1e-3`), in `tune_spaces/*.yaml` and in logged",
        "metrics. Unknown keys are errors. `gemini-ray config [--config FILE] [overrides]` prints the",
        "effective config.",
        "",
        "Sections: " + ", ".join(f"[`{f.name}`](#{f.name})" for f in dataclasses.fields(root)) + ".",
    ]
    for f in dataclasses.fields(root):
        cls = sections[f.name]
        lines += ["", f"## {f.name}", ""]
        doc = ast.get_docstring(_class_node(cls))
        if doc:
            lines += [" ".join(doc.split()), ""]
        lines += _section_table(f.name, cls)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale, writing nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else None
        if current != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(PAGE, text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
