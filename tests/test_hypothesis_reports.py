"""A failing property must say which example broke it: the suite's pytest set-up keeps
hypothesis's falsifying example readable (a plugin once printed it blank)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAILING = '''
from hypothesis import given, settings, strategies as st

@settings(database=None, derandomize=True)
@given(st.integers())
def test_small(x):
    assert x < 1234
'''


def test_a_failing_property_prints_its_falsifying_example(tmp_path: Path) -> None:
    (tmp_path / "test_failing.py").write_text(FAILING)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         str(tmp_path / "test_failing.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "x=1234," in run.stdout, run.stdout
