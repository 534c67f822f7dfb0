"""The documentation stays true: its Python examples run, its commands match CI.

Every ```python fenced block of the files in ``EXECUTED`` runs, the blocks of
one file in order and in one fresh namespace (as a reader pasting them into
one session would), with the working directory set to a temporary one.
Examples that need packages bulkreset does not install are fenced ```py
instead, and are not run.
"""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXECUTED = [
    "README.md",
    "docs/tutorial.md",
    "docs/howto/notebook.md",
    "docs/howto/own-database.md",
]
"""Documents whose Python examples must run as written."""

DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/bulkreset demo"
"""The README's first command: install, then run the main job on a fresh clone."""

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """Return ``(line_number, source)`` for each ```python block of *path*."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


def ci_test_command() -> str:
    """The line of ``.ci/run`` that creates the venv and runs the test suite."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    found = [line for line in lines if line.startswith("python3 -m venv")]
    assert 1 == len(found), "expected one 'python3 -m venv' line in .ci/run"
    return found[0]


def readme_first_code_lines() -> list[str]:
    """The lines of the README's first fenced code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "README.md has no fenced code block"
    return match.group(1).splitlines()


@pytest.mark.parametrize("document", EXECUTED)
def test_python_examples_run(
    document: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Python example of the document runs, in order, in one namespace."""
    path = ROOT / document
    blocks = python_blocks(path)
    assert blocks, f"{document} has no ```python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for line, source in blocks:
        name = f"{document} (block at line {line})"
        # Let tracebacks quote the failing line of the example.
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        code = compile(source, name, "exec")
        exec(code, namespace)  # noqa: S102 - the examples are this repository's own text


def test_readme_opens_with_the_demo_and_the_ci_test_command() -> None:
    """The README's first code block is the demo command, then exactly the CI test command."""
    lines = readme_first_code_lines()
    assert 2 == len(lines)
    demo, tests = lines
    assert DEMO_COMMAND == demo
    assert ci_test_command() == tests


def test_readme_opens_right_after_the_title_and_tagline() -> None:
    """Title, one tagline paragraph, then the two commands: nothing else comes first."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    title, tagline, fence = (part for part in text.split("\n\n")[:3])
    assert title.startswith("# ")
    assert "\n" not in title
    assert tagline
    assert not tagline.startswith(("#", "```"))
    assert fence.startswith("```")


def test_changelog_has_an_unreleased_section() -> None:
    """CHANGELOG.md follows Keep a Changelog with an Unreleased section listing additions."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## ", 1)[0]
    assert "### Added" in unreleased


def test_reference_names_every_public_name() -> None:
    """docs/reference.md names everything in the ``__all__`` of bulkreset, its errors and ports."""
    import bulkreset
    import bulkreset.errors
    import bulkreset.ports

    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    public = [*bulkreset.__all__, *bulkreset.errors.__all__, *bulkreset.ports.__all__]
    missing = [name for name in public if f"`{name}" not in text]
    assert [] == missing


def test_relative_links_in_the_docs_resolve() -> None:
    """Every relative Markdown link of README.md and docs/ points to an existing file."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for document in documents:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            if not (document.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert [] == broken
