"""Every ```python block of README.md and docs/*.md runs (issue 20 item 1): the docs cannot drift from the API.

Convention (also stated in docs/api.md): the blocks of one file run top to bottom in one namespace, on
the bundled example (``sp.datasets.example()``), from a temporary working directory. A block that is
not meant to run (it needs data the package does not ship) is preceded by the line

    <!-- docs-test: skip (the reason) -->

and a block whose last line should be checked is plain Python: an ``assert`` inside it is a check too.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[^\S\n]*$")
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\b.*-->\s*$")


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """``(first line number, code, skipped)`` of every ```python fence of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[tuple[int, str, bool]] = []
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i].strip()) and not lines[i].startswith(" "):
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            blocks.append((start + 1, "\n".join(lines[start:j]), bool(SKIP.match(prev.strip()))))
            i = j + 1
        else:
            i += 1
    return blocks


DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def test_every_docs_page_is_scanned():
    names = {p.name for p in DOCS}
    assert {"README.md", "index.md", "api.md"} <= names
    # the quick starts of README.md and docs/index.md are python blocks that run
    for page in ("README.md", "index.md"):
        blocks = python_blocks(next(p for p in DOCS if p.name == page))
        assert blocks and not any(skip for _, _, skip in blocks), page


def test_fence_parser(tmp_path):
    import textwrap

    text = textwrap.dedent(
        """\
        intro
        ```python
        x = 1
        ```
        <!-- docs-test: skip (needs a Space Ranger folder) -->

        ```python
        raise SystemExit
        ```
        ```bash
        ls
        ```
        """
    )
    tmp = tmp_path / "probe.md"
    tmp.write_text(text)
    assert python_blocks(tmp) == [(3, "x = 1", False), (8, "raise SystemExit", True)]


@pytest.mark.parametrize("page", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import spared_tools as sp

    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks")
    saved = copy.copy(sp.settings.__dict__)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARED_TOOLS_DATA", str(tmp_path / "cache"))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for line, code, skipped in blocks:
            if skipped:
                continue
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as err:  # report the page and line of the failing block
                raise AssertionError(
                    f"{page.relative_to(ROOT)} block at line {line} failed: {err!r}"
                ) from err
    finally:
        plt.close("all")
        sp.settings.__dict__.update(saved)
        sp.settings.verbosity = saved["_verbosity"]  # re-applies the logger level
