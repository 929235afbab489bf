"""README, CONTRIBUTING and docs/ point only at what a user has (issue 10: README linked a
docs/quickstart.md that did not exist; docs/admin.md cited a "CONTRACT section 7" users never see).

Checked: every relative Markdown link resolves to a file (and, with ``#anchor``, to one of its
headings); every ``docs/NAME.md`` or ``examples/...`` written in the text exists; the project's
internal specs (CONTRACT, ARCHITECTURE, BENCHMARKS) are not cited.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
MENTION = re.compile(r"(?<![\w/.-])((?:docs|examples|scripts|tests)/[\w./-]*\w)")
INTERNAL = re.compile(r"\b(CONTRACT|ARCHITECTURE|BENCHMARKS)(\.md| section)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_dangling_references(page: Path) -> None:
    text = page.read_text()
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#") and not target[1:]:
            continue  # a URL
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"link to {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"link to {target}: no such heading")
    for mention in MENTION.findall(text):
        if not (ROOT / mention).exists() and not (ROOT / mention.rstrip(".")).exists():
            problems.append(f"mentions {mention}: no such file")
    problems += [f"cites {m.group(0)!r}, which users do not have" for m in INTERNAL.finditer(text)]
    assert problems == []


def test_the_checker_catches_a_dangling_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("see [the quickstart](docs/quickstart-missing.md) and CONTRACT section 7\n")
    with pytest.raises(AssertionError):
        test_no_dangling_references(page)
