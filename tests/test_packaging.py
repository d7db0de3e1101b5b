"""A non-editable install works from another directory and ships the grammar inside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SMOKE = (
    "import policyengine\n"
    "e = policyengine.Engine.from_source('role r: a:*\\nagent \"bot\": r')\n"
    "assert e.authorize('bot', 'a:b').allowed\n"
    "print(policyengine.__file__)\n"
)


def _pip_install(target: Path) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
            "--disable-pip-version-check", "--target", str(target)]
    done = subprocess.run([*base, "--no-build-isolation", str(REPO)], capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0 and "hatchling" in (done.stderr + done.stdout):
        # hatchling is not installed here: let pip fetch it into an isolated build env
        done = subprocess.run([*base, str(REPO)], capture_output=True, text=True,
                              timeout=300)
    return done


def test_non_editable_install_imports_from_elsewhere(tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = _pip_install(target)
    if done.returncode != 0:
        pytest.fail(f"pip install failed:\n{done.stdout}\n{done.stderr}")
    grammar = target / "policyengine" / "lang" / "_grammar" / "policy.lark"
    assert grammar.is_file()
    assert grammar.read_text("utf-8") == (REPO / "grammar" / "policy.lark").read_text("utf-8")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, "
                          f"{str(target)!r}); exec({SMOKE!r})"],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).resolve().is_relative_to(target.resolve())
    # The installed package must not be able to fall back to the repository's grammar/.
    check = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
         "from importlib import resources; "
         "print(resources.files('policyengine.lang').joinpath('_grammar/policy.lark').is_file())"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "True", check.stderr
