"""Runs the plain Python blocks of one document inside its snippet project.

Started by tests/test_doc_snippets.py in the project's directory (a subprocess, so that
the project's own settings and `shop` app are the ones Django sets up). It reads one JSON
object per line on stdin, ``{"where": "docs/x.md:12", "line": 12, "code": "..."}``, runs
the code in one namespace shared by the document's blocks (as a reader's shell would be),
and answers each with a line ``RESULT {"ok": ..., "error": ...}`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types

MARK = "@@doc-snippet-result@@ "


def main() -> None:
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    import django

    django.setup()
    # A real module, so that dataclasses and pickle-free reprs can find their classes.
    module = types.ModuleType("doc_snippets_namespace")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for line in sys.stdin:
        request = json.loads(line)
        # Pad with newlines so a traceback names the line in the Markdown file.
        source = "\n" * request["line"] + request["code"]
        try:
            exec(compile(source, request["document"], "exec"), namespace)  # noqa: S102
            if "DJANGO_EVENTS" in namespace:
                # A settings fragment: validated as start-up would validate it.
                from django_events.conf import parse

                parse(namespace.pop("DJANGO_EVENTS"))
        except BaseException:
            answer = {"ok": False, "error": traceback.format_exc()}
        else:
            answer = {"ok": True, "error": ""}
        sys.stdout.write(MARK + json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
