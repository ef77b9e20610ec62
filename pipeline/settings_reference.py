"""docs/settings_reference.md, generated from the settings dataclasses: every key, its type, its
default in each profile and one line of meaning, read from the comment its dataclass writes
beside (or just above) the field. tests/test_settings.py fails when the file and the code
disagree; rewrite it with

    .venv/bin/python -m pipeline.settings_reference --write
"""
from __future__ import annotations

import argparse
import ast
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
import typing
from typing import Dict, List, Optional

from common import storage
from pipeline import configs
from pipeline.overrides import field_type, setting_keys, to_plain
from pipeline.settings_checks import setting_value

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_PATH = os.path.join(REPO, "docs", "settings_reference.md")


def field_comments(cls) -> Dict[str, str]:
    """Field name -> its comment: the comment lines right above it, then the one beside it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: Dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments
                  and not lines[n - 1].strip().startswith("#")]
        found[node.target.id] = " ".join(above + beside)
    return found


def _owner(key: str):
    """(the dataclass that holds the key's field, the field name)."""
    cls = configs.PipelineConfig
    *parents, name = key.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    return cls, name


def meaning(key: str) -> str:
    """The field's comment, with the choice list it names ("one of VARIANTS") spelled out."""
    cls, name = _owner(key)
    text = field_comments(cls).get(name, "")
    choices = configs.CHOICES.get(key)
    if not choices:
        return text
    spelled = "one of " + ", ".join(choices)
    if re.search(r"one of [A-Z_]+", text):
        return re.sub(r"one of [A-Z_]+", spelled, text, count=1)
    return f"{text}; {spelled}" if text else spelled


def _cell(value) -> str:
    text = "null" if value is None else str(value).replace("'", "")
    if isinstance(value, bool):
        text = str(value).lower()
    return f"`{text}`".replace("|", "\\|")


def _type_name(key: str) -> str:
    return str(field_type(key)).replace("typing.", "").replace("<class '", "").replace("'>", "")


def render() -> str:
    """The whole reference file."""
    profiles = {name: to_plain(configs.profile_config(name)) for name in configs.PROFILES}
    out: List[str] = [
        "# Settings reference",
        "",
        "Generated from the settings dataclasses by `python -m pipeline.settings_reference "
        "--write`; do not edit by hand (tests/test_settings.py compares). Set any key with "
        "`--set KEY=VALUE` or in a `--config FILE.yaml` (docs/settings.md); paths default to "
        "under `--output_dir`.",
        "",
    ]
    section: Optional[str] = None
    for key in setting_keys():
        head = key.split(".")[0] if "." in key else "run"
        if head != section:
            section = head
            cls = (typing.get_type_hints(configs.PipelineConfig)[head] if "." in key
                   else configs.PipelineConfig)
            if out[-1]:
                out.append("")
            out += [f"## `{head}`" if head != "run" else "## The run", "",
                    f"Defined in `{_source(cls)}` ({cls.__name__}).", "",
                    "| key | type | " + " | ".join(configs.PROFILES) + " | meaning |",
                    "|---|---|" + "---|" * len(configs.PROFILES) + "---|"]
        defaults = " | ".join(_cell(setting_value(profiles[p], key)) for p in configs.PROFILES)
        out.append(f"| `{key}` | {_type_name(key)} | {defaults} | {meaning(key)} |")
    return "\n".join(out) + "\n"


def _source(cls) -> str:
    return os.path.relpath(inspect.getsourcefile(cls), REPO)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"write {REFERENCE_PATH}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    text = render()
    if args.write:
        storage.write_text(REFERENCE_PATH, text)
        print(f"wrote {REFERENCE_PATH}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
