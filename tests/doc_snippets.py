"""Find and classify the code blocks of README.md and docs/*.md for test_doc_snippets.

Why not Sybil: its evaluators run each example inside the test process, whose Django is
already configured with the test settings. The doc snippets instead *are* a Django project:
a settings module, a ``shop`` app with models, ``events.py`` found at start-up, and
``manage.py`` commands. Django can be set up once per process, so every document runs in
projects of its own, in subprocesses; this module only parses the Markdown and says what
each block is. The rules are in docs/contributing.md ("Code blocks in the docs").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[^`]*)$")
SKIP = re.compile(r"^<!-- doc-test: skip(?: (?P<reason>.*?))? -->$")
# `# shop/events.py`, `# mysite/settings.py: ...`: the block (or the part of it below
# such a line) is that file of the snippet project.
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.py)\b(?P<note>.*)$")
# Languages that run, languages that are checked as data, and labels that say "not code".
RUN = {"python", "console"}
DATA = {"json", "ini", "yaml"}
NOT_CODE = {"text"}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # 1-based line of the opening fence
    info: str
    body: str
    skip_reason: str | None  # set by a `<!-- doc-test: skip REASON -->` line above it

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info else ""

    def files(self) -> list[tuple[str, str]]:
        """(path, text) for each `# path.py` section, or [] for a block of plain code."""
        lines = self.body.splitlines()
        if not lines or not FILE_HEADER.match(lines[0]):
            return []
        sections: list[tuple[str, list[str]]] = []
        for line in lines:
            header = FILE_HEADER.match(line)
            if header:
                sections.append((header["path"], []))
            else:
                sections[-1][1].append(line)
        return [(path, "\n".join(body).strip("\n") + "\n") for path, body in sections]


def blocks(document: Path) -> list[Block]:
    """Every fenced block of one document, directives (```{toctree}) left out."""
    found: list[Block] = []
    lines = document.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line[len(indent) :] for line in lines[index + 1 : end])
        above = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        skip = SKIP.match(above)
        if not info.startswith("{"):
            found.append(
                Block(
                    document=document,
                    line=index + 1,
                    info=info,
                    body=body,
                    skip_reason=(skip["reason"] or "") if skip else None,
                )
            )
        index = end + 1
    return found


def commands(block: Block) -> list[str]:
    """The command lines of a console block: `$ ` lines if it has any (the rest is
    output), else every line; `\\` continuations joined."""
    lines = block.body.splitlines()
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [line for line in joined if line.strip()]


def splice_settings(text: str) -> str:
    """A settings snippet's `...` in a list stands for what the list already holds:
    `INSTALLED_APPS = [..., "x"]` and a `# ...` line inside `INSTALLED_APPS = [` both
    become `*INSTALLED_APPS`, so the snippet can be appended to a real settings.py."""
    text = re.sub(r"^(\w+) = \[\.\.\., ", r"\1 = [*\1, ", text, flags=re.M)
    return re.sub(r"^(\w+) = \[\n(\s*)# \.\.\.\n", r"\1 = [\n\2*\1,\n", text, flags=re.M)
