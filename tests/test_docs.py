"""The README's commands are the ones CI runs, and the docs the issues promise exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_readme_has_the_two_commands() -> None:
    cmds = _readme_commands()
    assert any(c.endswith("parley serve") for c in cmds), cmds
    assert any(c.endswith(".venv/bin/pytest") for c in cmds), cmds


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_cmd = next(c for c in _readme_commands() if c.endswith(".venv/bin/pytest"))
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci


def test_docs_exist() -> None:
    for name in ("architecture.md", "protocol.md", "operations.md", "performance.md"):
        assert (ROOT / "docs" / name).is_file(), name
    assert (ROOT / "CHANGELOG.md").is_file()


def test_operations_doc_lists_every_setting() -> None:
    from parley.config import settings_reference

    assert settings_reference() in (ROOT / "docs" / "operations.md").read_text(), (
        "docs/operations.md is out of date: paste `parley config reference` into it"
    )
