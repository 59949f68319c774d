"""Every code block of the docs runs: docs/*.md and README.md.

For each markdown file, in a fresh subprocess started from the repo root:

- ```` ```python ```` blocks run in order, in one shared namespace (like a script);
- ```` ```python no-run ```` blocks are skipped (pseudo-code; use sparingly);
- ```` ```python file=PATH ```` blocks are written to PATH (at that point of the
  order) instead of run; a doc with such blocks runs in a scratch project
  directory rather than the repo root, and if the project has ``test_*.py``
  files, pytest runs there at the end (a user's own test suite, with the plugin
  loaded from the installed package);
- ```` ```pycon ```` blocks run as doctests: with ``module=M`` in M's namespace
  (``doc=KEY`` groups the examples of one docstring), else all of the file's
  plain pycon blocks share one namespace.

Shell and other blocks are not run. Also checked: docs/api.md is what
docs/gen_api.py generates now, the docs index links every guide, and relative
links point at files that exist.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

#: Guides other engineers write; linked from docs/README.md before they land.
PENDING_GUIDES = {"security.md", "telemetry.md", "operations.md", "hot-reload.md"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    lang: str
    source: str
    line: int  # line number (1-based) of the block's first code line
    flags: set[str] = field(default_factory=set)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return "no-run" not in self.flags


def extract(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, with their info strings parsed."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        words = m.group("info").split()
        lang = words[0].lower() if words else ""
        flags = {w for w in words[1:] if "=" not in w}
        options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = lines[j].strip()
            if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
                break
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            j += 1
        blocks.append(Block(lang, "\n".join(body) + "\n", i + 2, flags, options))
        i = j + 1
    return blocks


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [REPO / "README.md"]


# -- what runs in the subprocess ----------------------------------------------------------


def run_doc(path: Path) -> int:
    """Run every runnable block of ``path``; returns the number of failures."""
    sys.path.insert(0, str(REPO))
    rel = str(path.relative_to(REPO))
    blocks = extract(path.read_text())
    failures = 0
    files = [b for b in blocks if b.lang in ("python", "py") and "file" in b.options]
    with tempfile.TemporaryDirectory(prefix="docs-project-") as project:
        if files:  # a doc that writes files runs in a scratch project, never in the repo
            os.chdir(project)
        ns = {"__name__": "__main__", "__file__": rel}
        for b in blocks:
            if b.lang not in ("python", "py") or not b.runs:
                continue
            if "file" in b.options:
                target = Path(project) / b.options["file"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(b.source)
                continue
            print(f"--- {rel}:{b.line}", flush=True)
            # Padding keeps traceback line numbers equal to the markdown's.
            exec(compile("\n" * (b.line - 1) + b.source, rel, "exec"), ns)
        if any(Path(b.options["file"]).name.startswith("test_") for b in files):
            print(f"--- {rel}: pytest in the project of its {len(files)} files", flush=True)
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                cwd=project, stdin=subprocess.DEVNULL, timeout=240,
            )
            failures += proc.returncode != 0
        os.chdir(REPO)

    groups: dict[tuple[str, str], list[Block]] = {}
    for b in blocks:
        if b.lang == "pycon" and b.runs:
            key = (b.options.get("module", ""), b.options.get("doc", "") if "module" in b.options else "")
            groups.setdefault(key, []).append(b)
    for (module, key), group in groups.items():
        globs = dict(vars(importlib.import_module(module))) if module else {"__name__": "__main__"}
        # a docstring example uses the public names as a user types them
        globs.setdefault("sandbox", importlib.import_module("sandbox"))
        name = f"{rel}:{group[0].line}" + (f" ({key})" if key else "")
        text = "\n".join(b.source for b in group)
        test = doctest.DocTestParser().get_doctest(text, globs, name, rel, group[0].line - 1)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        result = runner.run(test)
        failures += result.failed
        globs.clear()
    return failures


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_code_blocks_run(path: Path) -> None:
    blocks = extract(path.read_text())
    runnable = [b for b in blocks if b.lang in ("python", "py", "pycon") and b.runs]
    if not runnable:
        pytest.skip(f"{path.name} has no runnable code block")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (
        f"code blocks of {path.relative_to(REPO)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}"
    )


def test_extract_reads_info_strings_and_skips_no_run():
    text = "\n".join([
        "# t", "```python", "x = 1", "```", "text", "```python no-run", "nope(", "```",
        "  ```python file=app/a.py", "  y = 2", "  ```", "```bash", "ls", "```",
        "````pycon module=sandbox.testing doc=k", ">>> 1", "1", "````",
    ])
    blocks = extract(text)
    assert [(b.lang, b.line, b.runs) for b in blocks] == [
        ("python", 3, True), ("python", 7, False), ("python", 10, True), ("bash", 13, True),
        ("pycon", 16, True),
    ]
    assert blocks[0].source == "x = 1\n" and blocks[2].source == "y = 2\n"
    assert blocks[2].options == {"file": "app/a.py"}
    assert blocks[4].options == {"module": "sandbox.testing", "doc": "k"}


def _gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_api_reference_is_current():
    text = _gen_api().generate()
    current = (DOCS / "api.md").read_text()
    assert current == text, "docs/api.md is out of date: run `python docs/gen_api.py`"


def test_api_reference_covers_runtime_all():
    import runtime

    text = (DOCS / "api.md").read_text()
    for name in runtime.__all__:
        assert f"`{name}`" in text, name


def test_docs_index_links_every_guide():
    index = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(\./?([\w.-]+\.md)\)", index)) | set(
        re.findall(r"\]\(([\w.-]+\.md)\)", index)
    )
    guides = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert not guides - linked, f"docs/README.md does not link {sorted(guides - linked)}"
    assert PENDING_GUIDES <= linked


def test_relative_links_point_at_existing_files():
    broken = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http:, mailto:, ...
            resolved = (path.parent / target).resolve()
            if not resolved.exists() and resolved.name not in PENDING_GUIDES:
                broken.append(f"{path.relative_to(REPO)} -> {target}")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def _demo_lines(text: str) -> set[str]:
    """Demo output lines without what changes from run to run (times, pids, paths)."""
    lines = set()
    for line in text.splitlines():
        line = re.sub(r"^\[\s*\d+\.\d+s\] ", "", line.strip())
        line = line.replace(str(REPO), "REPO")
        line = re.sub(r"/\S*/examples/counter", "REPO/examples/counter", line)
        line = re.sub(r"\b\d{2,}\b", "N", line)
        if line:
            lines.add(line)
    return lines


@pytest.mark.timeout(120)
def test_readme_shows_what_sandbox_demo_prints(tmp_path):
    readme = (REPO / "README.md").read_text()
    shown = re.search(r"<!-- demo-output -->\s*```text\n(.*?)```\s*<!-- /demo-output -->",
                      readme, re.S)
    assert shown, "README.md lost its demo-output block"
    script = Path(sys.executable).parent / "sandbox"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "sandbox.cli"]
    proc = subprocess.run([*cmd, "demo"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=100, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _demo_lines(proc.stdout) == _demo_lines(shown.group(1)), (
        "sandbox demo prints something else than README.md shows: update the README "
        f"with a real run\n--- now:\n{proc.stdout}"
    )


if __name__ == "__main__":  # python tests/test_docs.py DOC.md: what test_code_blocks_run runs
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]  # tests/ modules must not shadow anything
    sys.exit(1 if run_doc(Path(sys.argv[1]).resolve()) else 0)
