"""The documentation cannot go stale: every ```python block in docs/ and README.md runs as a test
module, and the site builds with ``mkdocs build --strict``.

A block passes when its module imports and none of its tests fails or errors, or, when the line just
before the block is ``<!-- pytest-outcomes: passed=2 failed=1 -->``, when its outcomes are exactly
those (keys as in ``RunResult.assert_outcomes``; unnamed ones are 0). All blocks run in one pytest
subprocess (importing torch once); op namespaces must be unique per page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```python\s*$")
_OUTCOMES = re.compile(r"^<!--\s*pytest-outcomes:(.*?)-->\s*$")
_KEYS = ("passed", "skipped", "failed", "errors", "xpassed", "xfailed")


@dataclass
class Block:
    """One ```python block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    expected: dict[str, int] | None = None  # None: no failures and no errors
    module: str = field(init=False)

    def __post_init__(self) -> None:
        slug = re.sub(r"\W+", "_", str(self.page.relative_to(ROOT).with_suffix(""))).strip("_").lower()
        self.module = f"test_doc_{slug}_L{self.line}"

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _parse_outcomes(text: str, where: str) -> dict[str, int]:
    expected = {}
    for part in text.split():
        key, _, value = part.partition("=")
        if key not in _KEYS or not value.isdigit():
            raise ValueError(f"{where}: bad pytest-outcomes entry {part!r}; keys: {', '.join(_KEYS)}")
        expected[key] = int(value)
    return expected


def extract_blocks(page: Path) -> list[Block]:
    """Every ```python block of ``page``, with its expected outcomes."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if _FENCE.match(lines[index].strip()) and not lines[index].startswith(" "):
            start = index
            body = []
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            previous = lines[start - 1].strip() if start > 0 else ""
            match = _OUTCOMES.match(previous)
            expected = _parse_outcomes(match.group(1), f"{page}:{start}") if match else None
            blocks.append(Block(page, start + 1, "\n".join(body) + "\n", expected))
        index += 1
    return blocks


def documented_pages() -> list[Path]:
    pages = sorted((ROOT / "docs").rglob("*.md"))
    readme = ROOT / "README.md"
    return ([readme] if readme.exists() else []) + pages


BLOCKS = [block for page in documented_pages() for block in extract_blocks(page)]


@pytest.fixture(scope="session")
def docs_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Counter], dict[str, list[str]], str]:
    """Run every block once, in one pytest subprocess: outcomes and failure texts per module."""
    directory = tmp_path_factory.mktemp("doc_blocks")
    for block in BLOCKS:
        (directory / f"{block.module}.py").write_text(block.code, encoding="utf-8")
    (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # stop rootdir search here
    junit = directory / "junit.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTEST_ADDOPTS", None)
    # A block that registers hooks of its own (pytest_plugins = [__name__], where a project would use
    # conftest.py) is loaded as a plugin at start-up, as a conftest would be.
    plugins = [arg for b in BLOCKS if "pytest_plugins = [__name__]" in b.code for arg in ("-p", b.module)]
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            *plugins,
            "--customop-seed=1234",
            "-q",
            f"--junitxml={junit}",
            ".",
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    outcomes: dict[str, Counter] = {}
    messages: dict[str, list[str]] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            module = (case.get("classname") or case.get("name") or "").split(".")[0]
            kind = "passed"
            for child in case:
                if child.tag == "failure":
                    kind = "failed"
                elif child.tag == "error":
                    kind = "errors"
                elif child.tag == "skipped":
                    kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                if child.tag in ("failure", "error", "skipped"):
                    messages.setdefault(module, []).append(f"{case.get('name')}: {child.get('message', '')}\n{child.text or ''}")
            outcomes.setdefault(module, Counter())[kind] += 1
    return outcomes, messages, completed.stdout + completed.stderr


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_example_runs(block: Block, docs_run) -> None:
    outcomes, messages, output = docs_run
    if not outcomes:
        pytest.fail(f"the docs' examples did not run:\n{output[-4000:]}")
    got = outcomes.get(block.module, Counter())
    details = "\n".join(messages.get(block.module, []))[-4000:]
    if block.expected is None:
        assert got["failed"] == 0 and got["errors"] == 0, f"{block.id}: {dict(got)}\n{details}"
    else:
        wanted = {key: block.expected.get(key, 0) for key in _KEYS}
        actual = {key: got.get(key, 0) for key in _KEYS}
        assert actual == wanted, f"{block.id}: expected outcomes {wanted}, got {actual}\n{details}"


def test_every_page_is_in_the_nav() -> None:
    """A page left out of mkdocs.yml's nav is unreachable; --strict only warns about it as info."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [
        str(page.relative_to(ROOT / "docs"))
        for page in sorted((ROOT / "docs").rglob("*.md"))
        if str(page.relative_to(ROOT / "docs")) not in config
    ]
    assert not missing, f"pages missing from mkdocs.yml nav: {missing}"


def test_options_reference_lists_every_option() -> None:
    from pytest_customop.options import OPTIONS

    page = (ROOT / "docs" / "reference" / "options.md").read_text(encoding="utf-8")
    names = [name for option in OPTIONS for name in (option.flag, option.env, option.ini)]
    names += ["--customop-namespace", "CUSTOMOP_NAMESPACES", "customop_namespaces", "--customop-list"]
    missing = [name for name in names if not re.search(rf"`{re.escape(name)}[`= ]", page)]
    assert not missing, f"docs/reference/options.md does not document {missing}"


def test_docs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')")
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
