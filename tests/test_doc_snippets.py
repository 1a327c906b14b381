"""Every code block of README.md and docs/*.md, run as a reader would run it.

Each document gets a snippet project (docs/contributing.md has the rules):

- docs/quickstart.md starts from an empty directory: its own blocks make the project
  (`django-admin startproject`, the `shop` app, its models, `events.py`, `services.py`)
  and its console blocks migrate, publish and consume.
- README.md starts from a bare `startproject mysite .` with a `startapp shop`, the state
  its "Use it" section assumes.
- Every other page runs in a copy of the quickstart's finished project.

A `# path.py` block writes that file (`settings.py` blocks are appended to the project's
settings), a console block runs its `python manage.py ...`, `django-admin` and
`python -m pytest` lines (a worker gets `--once`), a plain
Python block runs in one interpreter per document (tests/doc_snippet_runner.py), JSON, INI
and YAML blocks must parse, and `text` blocks are output, not code. A block that is not
meant to run has `<!-- doc-test: skip REASON -->` right above it.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from .doc_snippets import (
    DATA,
    DOCUMENTS,
    NOT_CODE,
    ROOT,
    RUN,
    Block,
    blocks,
    commands,
    splice_settings,
)

RUNNER = Path(__file__).resolve().parent / "doc_snippet_runner.py"
MARK = "@@doc-snippet-result@@ "
SETTINGS = "mysite/settings.py"
# Workers run until SIGTERM; in a snippet they handle what is waiting and exit.
WORKERS = {"consume_events", "relay_events"}

pytestmark = pytest.mark.skipif(
    connection.vendor != "sqlite",
    reason="the snippet projects have their own SQLite files: once is enough, in the SQLite run",
)


def environment() -> dict[str, str]:
    """The reader's shell: this interpreter's scripts first, none of the test settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class SnippetProject:
    """One directory built from snippets, with at most one live block runner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runner: subprocess.Popen[str] | None = None

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stdin.close()  # type: ignore[union-attr]
            self.runner.wait(timeout=60)
            self.runner = None

    def write(self, block: Block) -> None:
        """A file block: new files need a fresh interpreter, so the runner stops."""
        self.close()
        for path, text in block.files():
            if path in ("settings.py", SETTINGS):
                target = self.path / SETTINGS
                assert target.exists(), f"{block.where}: no {SETTINGS} to add settings to"
                with target.open("a") as settings:
                    settings.write(f"\n# --- {block.where}\n{splice_settings(text)}")
            else:
                target = self.path / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)

    def run(self, argv: list[str], where: str) -> str:
        done = subprocess.run(
            argv,
            cwd=self.path,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (
            f"{where}: `{shlex.join(argv)}` exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def console(self, block: Block) -> None:
        self.close()
        for line in commands(block):
            argv = shlex.split(line, comments=True)
            if argv[:2] == ["python", "manage.py"]:
                argv = [sys.executable, *argv[1:]]
                if argv[2] in WORKERS and "--once" not in argv:
                    argv.append("--once")
            elif argv[:1] == ["django-admin"]:
                argv = [sys.executable, "-m", "django", *argv[1:]]
            elif argv[:3] == ["python", "-m", "pytest"]:
                argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv[3:]]
            else:
                pytest.fail(
                    f"{block.where}: `{line}` is not a manage.py, django-admin or pytest command; "
                    "mark the block with <!-- doc-test: skip REASON --> if it is not "
                    "meant to run here"
                )
            self.run(argv, block.where)

    def execute(self, block: Block) -> None:
        if self.runner is None:
            self.runner = subprocess.Popen(
                [sys.executable, str(RUNNER)],
                cwd=self.path,
                env=environment(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        request = {
            "document": str(block.document),
            "line": block.line,
            "code": block.body,
        }
        assert self.runner.stdin is not None and self.runner.stdout is not None
        self.runner.stdin.write(json.dumps(request) + "\n")
        self.runner.stdin.flush()
        for line in self.runner.stdout:
            if line.startswith(MARK):
                answer = json.loads(line[len(MARK) :])
                assert answer["ok"], f"{block.where} raised:\n{answer['error']}"
                return
        pytest.fail(f"{block.where}: the block runner died (exit {self.runner.wait()})")

    def check(self, where: str) -> None:
        self.run([sys.executable, "manage.py", "check"], where)


def run_block(project: SnippetProject, block: Block) -> None:
    if block.skip_reason is not None:
        assert block.skip_reason.strip(), f"{block.where}: a skipped block needs a reason"
        return
    language = block.language
    if language == "python":
        if block.files():
            project.write(block)
        else:
            project.execute(block)
    elif language == "console":
        project.console(block)
    elif language == "json":
        json.loads(block.body)
    elif language == "ini":
        configparser.ConfigParser(interpolation=None).read_string(block.body)
    elif language == "yaml":
        yaml = pytest.importorskip("yaml")
        yaml.safe_load(block.body)
    elif language not in NOT_CODE:
        pytest.fail(
            f"{block.where}: a ```{block.info} block is neither code that runs "
            f"({', '.join(sorted(RUN))}), data that parses ({', '.join(sorted(DATA))}) nor "
            "`text`; label it, or mark it <!-- doc-test: skip REASON -->"
        )


def run_document(project: SnippetProject, document: Path) -> None:
    try:
        for block in blocks(document):
            run_block(project, block)
        project.close()
        project.check(f"{document.relative_to(ROOT)} (manage.py check at the end)")
    finally:
        project.close()


@pytest.fixture(scope="module")
def quickstart_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The quickstart followed to its end, in a directory of its own."""
    path = tmp_path_factory.mktemp("quickstart")
    run_document(SnippetProject(path), ROOT / "docs" / "quickstart.md")
    yield path


def test_the_quickstart_builds_a_project_whose_handler_ran(quickstart_project: Path):
    project = SnippetProject(quickstart_project)
    figures = project.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from shop.models import SalesFigure; "
            "print(list(SalesFigure.objects.values_list('total', flat=True)))",
        ],
        "after the quickstart",
    )
    assert figures.splitlines()[-1] == "[Decimal('19.90')]"


def test_the_readme_runs_in_a_fresh_project(tmp_path: Path):
    project = SnippetProject(tmp_path)
    project.run([sys.executable, "-m", "django", "startproject", "mysite", "."], "setup")
    project.run([sys.executable, "manage.py", "startapp", "shop"], "setup")
    run_document(project, ROOT / "README.md")
    # The README shows place_order() but does not call it: call it as a view would.
    manage = [sys.executable, "manage.py"]
    place = "from shop.services import place_order; place_order('ada@example.com', '9.50')"
    project.run([*manage, "shell", "-c", place], "after the README")
    project.run([*manage, "consume_events", "--once"], "after the README")
    count = "from shop.models import ConfirmationEmail; print(ConfirmationEmail.objects.count())"
    emails = project.run([*manage, "shell", "-c", count], "after the README")
    assert emails.splitlines()[-1] == "1"


OTHERS = [
    document
    for document in DOCUMENTS
    if document.name not in ("README.md", "quickstart.md") and any(True for _ in blocks(document))
]


@pytest.mark.parametrize("document", OTHERS, ids=lambda document: document.name)
def test_the_page_runs_on_the_quickstart_project(
    document: Path, quickstart_project: Path, tmp_path: Path
):
    project_path = tmp_path / "project"
    shutil.copytree(quickstart_project, project_path)
    run_document(SnippetProject(project_path), document)


def test_every_block_is_run_checked_or_skipped_with_a_reason():
    """The rules themselves: no unlabelled fence, no skip without a reason."""
    problems = []
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.skip_reason is not None and not block.skip_reason.strip():
                problems.append(f"{block.where}: skipped without a reason")
            elif block.skip_reason is None and block.language not in RUN | DATA | NOT_CODE:
                problems.append(f"{block.where}: ```{block.info} is not a known kind")
    assert problems == []
