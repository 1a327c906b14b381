"""Every relative link in README.md and docs/*.md points at a file that exists and, with a
`#fragment`, at a heading of that file.

Links to the internet are not checked: the test machines reach package registries only,
so `sphinx-build -b linkcheck` cannot run here (docs/contributing.md). Sphinx with `-W`
(`make docs`) also fails on a broken cross-reference between pages; this test covers
README.md, which Sphinx does not build, and links to files outside docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .doc_snippets import DOCUMENTS, ROOT

LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^(?P<level>#{1,6}) +(?P<title>.+?) *#*$")
FENCE = re.compile(r"^ *(`{3,})")
CODE_SPAN = re.compile(r"(`+).*?\1")
# conf.py: myst_heading_anchors = 3. GitHub (README.md) anchors every level.
SPHINX_ANCHOR_LEVELS = 3


def prose_lines(document: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fence = ""
    for number, line in enumerate(document.read_text().splitlines(), start=1):
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1).startswith(fence):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            continue
        lines.append((number, line))
    return lines


def slug(title: str) -> str:
    """The GitHub-style anchor myst-parser and GitHub give a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link: keep its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    levels = 6 if document.parent == ROOT else SPHINX_ANCHOR_LEVELS
    found = set()
    for _, line in prose_lines(document):
        heading = HEADING.match(line)
        if heading and len(heading["level"]) <= levels:
            found.add(slug(heading["title"]))
    return found


def broken_links(document: Path) -> list[str]:
    problems = []
    for number, line in prose_lines(document):
        for link in LINK.finditer(CODE_SPAN.sub("``", line)):
            target = link["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path_part, _, fragment = target.partition("#")
            resolved = (document.parent / path_part).resolve() if path_part else document
            name = document.relative_to(ROOT) if document.is_relative_to(ROOT) else document
            where = f"{name}:{number}: ({target})"
            if not resolved.exists():
                problems.append(f"{where} no such file {resolved}")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                problems.append(f"{where} {resolved.name} has no heading #{fragment}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda document: document.name)
def test_relative_links_resolve(document: Path):
    assert broken_links(document) == []


def test_a_broken_link_is_reported(tmp_path: Path):
    """The checker itself: a missing file and a missing heading are both caught."""
    page = ROOT / "docs" / "quickstart.md"
    broken = tmp_path / "page.md"
    broken.write_text(
        "# Title\n\nSee [a](missing.md), [b](#title), [c](#nope) and\n"
        f"[d]({page}#install), [e]({page}#no-such-heading).\n"
    )
    problems = broken_links(broken)
    assert len(problems) == 3, problems
    assert "no such file" in problems[0]
    assert "#nope" in problems[1]
    assert "#no-such-heading" in problems[2]


def test_slugs_match_myst():
    assert slug("From a shell: `dead_letters`") == "from-a-shell-dead_letters"
    assert slug("SQLite: let writers wait") == "sqlite-let-writers-wait"
