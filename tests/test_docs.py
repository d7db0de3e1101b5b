"""Every code block of README.md and docs/*.md runs.

```python blocks run in order, one shared namespace per file (a page reads top to
bottom, later blocks use what earlier ones defined), in a scratch directory that holds
the repository's policies/ and conformance/. A block may opt out only with a visible
first line ``# not run: REASON`` (a non-empty reason). Shell blocks run their
``policyengine ...`` commands through the command line, except ``serve`` (a server that
does not stop) and the lines of blocks that opt out the same way.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from policyengine.cli import main

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
OPT_OUT = re.compile(r"#\s*not run:(.*)")


def blocks(page: Path, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, source) of each fenced block in ``languages``."""
    text = page.read_text("utf-8")
    return [(text[:m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) in languages]


def opted_out(source: str, where: str) -> bool:
    first = source.lstrip("\n").splitlines()[0] if source.strip() else ""
    found = OPT_OUT.match(first.strip())
    if found is None:
        return False
    assert found.group(1).strip(), f"{where}: '# not run:' needs a reason"
    return True


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("policies", "conformance"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_pages_exist_and_hold_python() -> None:
    assert len(PAGES) > 5
    assert sum(len(blocks(p, ("python",))) for p in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_blocks_run(page: Path, scratch: Path) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    for line, source in blocks(page, ("python",)):
        where = f"{page.relative_to(REPO)}:{line}"
        if opted_out(source, where):
            continue
        code = compile(source, where, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:  # name the block, not this test
            raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc


def shell_commands(source: str) -> list[list[str]]:
    """The ``policyengine`` commands of a shell block (joined continuation lines, split
    on ``&&``), skipping ``serve``."""
    joined = source.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            if not part.strip().startswith("policyengine "):
                continue  # other programs, and lines inside another command's quotes
            words = shlex.split(part, comments=True)
            if words[1:2] != ["serve"]:
                out.append(words[1:])
    return out


SHELL = [(page, line, source) for page in PAGES
         for line, source in blocks(page, ("sh", "bash", "shell", "console"))]


@pytest.mark.parametrize(("page", "line", "source"), SHELL,
                         ids=[f"{p.name}:{n}" for p, n, _ in SHELL])
def test_shell_blocks_run(page: Path, line: int, source: str, scratch: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    where = f"{page.relative_to(REPO)}:{line}"
    if opted_out(source, where):
        return
    for argv in shell_commands(source):
        status = main(argv)
        out = capsys.readouterr()
        assert status == 0, f"{where}: policyengine {' '.join(argv)} -> {status}\n{out.err}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """`.ci/run` is the README's test command, so a newcomer runs what CI runs."""
    readme = (REPO / "README.md").read_text("utf-8")
    commands = [source.strip() for _, source in blocks(REPO / "README.md", ("sh",))
                if "pytest" in source]
    assert len(commands) == 1, commands
    ci_lines = (REPO / ".ci" / "run").read_text("utf-8").splitlines()
    assert commands[0] in ci_lines, (commands[0], ci_lines)
    assert "Run the whole test suite" in readme


def _architecture_tree() -> set[str]:
    """The modules docs/architecture.md's tree lists, as paths under policyengine/ (a
    folder line opens its folder; names sit before the two spaces that start the
    description; deeply indented lines continue a description)."""
    text = (REPO / "docs" / "architecture.md").read_text("utf-8")
    start = text.index("```\npolicyengine/") + 4
    listed: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in text[start:text.index("```", start)].splitlines()[1:]:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= 16:
            continue
        names = re.split(r"\s{2,}", line.strip())[0]
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if names.endswith("/"):
            folders.append((indent, names))
            continue
        prefix = "".join(name for _, name in folders)
        listed.update(prefix + n for n in re.findall(r"[\w.]+\.py", names))
    return listed


def test_the_architecture_tree_lists_every_module() -> None:
    """Every module of the package is in docs/architecture.md's tree, in its folder, and
    the tree names none that is gone (a subpackage's ``__init__.py`` is described once,
    below the tree)."""
    package = REPO / "policyengine"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    listed = _architecture_tree()
    unlisted = {m for m in modules - listed if not m.endswith("/__init__.py")}
    assert not unlisted, f"not in docs/architecture.md: {sorted(unlisted)}"
    assert not listed - modules, f"no such module: {sorted(listed - modules)}"


def _report_block(page: Path, first: str) -> str:
    """The text of the code block of ``page`` that starts with ``first``."""
    for _, source in blocks(page, ("",)):
        if source.startswith(first):
            return source
    raise AssertionError(f"{page.name}: no block starts with {first!r}")


def _check_output(tmp_path: Path, name: str, text: str, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> str:
    """What ``policyengine check NAME`` prints on stderr for a file NAME holding text."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text, "utf-8")
    assert main(["check", name]) == 1
    return capsys.readouterr().err


def test_the_schema_error_example_is_what_check_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """docs/language.md, "Context schemas": the page's schema block, and at the line the
    report names the rule it shows, give exactly the report the page prints."""
    page = REPO / "docs" / "language.md"
    report = _report_block(page, "policies/pay.policy:")
    schema = _report_block(page, "schema payments:refund, payments:charge {")
    line = int(report.split(":")[1])
    rule = report.splitlines()[1].split(" | ", 1)[1]
    lines = schema.splitlines()
    text = "\n".join(lines + [""] * (line - 1 - len(lines)) + [rule]) + "\n"
    assert _check_output(tmp_path, "policies/pay.policy", text, monkeypatch,
                         capsys) == report


def test_the_readme_error_example_is_what_check_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """README, "Errors people can act on": the shipped travel policy with the typo the
    report shows prints exactly that report."""
    block = _report_block(REPO / "README.md", "$ policyengine check policies/")
    report = block.split("\n", 1)[1]
    shown = report.splitlines()[1].split(" | ", 1)[1]
    source = (REPO / "policies" / "travel" / "travel.policy").read_text("utf-8")
    typo = source.replace(shown.replace("travell", "travel"), shown)
    assert typo != source
    name = "policies/travel/travel.policy"
    assert _check_output(tmp_path, name, typo, monkeypatch, capsys) == report
