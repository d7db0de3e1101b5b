"""The real, unmodified runcycles 0.1.3 against the live service. Two versions of one
package cannot share an interpreter, so the test command installs 0.1.3 into
``.sdk/runcycles-0.1.3`` (``pip install --target``, README and .ci/run; git-ignored) and
this test runs the old client in a subprocess with that folder first on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret

from .service_harness import serving

HERE = Path(__file__).parent
OLD = HERE.parent.parent / ".sdk" / "runcycles-0.1.3"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engine = pe.Engine.from_path(str(HERE / "cycles"))
    creds = Credentials(cycles_keys=(CyclesKey("acme", hash_secret("old-key"), "acme"),))
    app = create_app(engine, credentials=creds, config=ServiceConfig(access_log=False))
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def test_runcycles_0_1_3_decorator_client_async_and_heartbeat(url: str) -> None:
    if not (OLD / "runcycles" / "__init__.py").exists():
        message = (f"runcycles 0.1.3 is not installed in {OLD}: run the README's test "
                   "command")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "PYTHONPATH": str(OLD), "CYCLES_BASE_URL": url,
           "CYCLES_API_KEY": "old-key", "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run([sys.executable, str(HERE / "cycles" / "sdk_0_1_3.py"), str(OLD)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["version_path"].startswith(str(OLD))
    assert seen["decorator"] == "abc" * 5
    assert seen["exceeded"] is True
    assert seen["heartbeat"] == "extended"
    assert seen["release"] == 200
    assert seen["async_commit"] == 200
    # 15 committed by the decorator, 20 by the heartbeat run, 10 by the async client.
    assert seen["spent"] == 15 + 20 + 10
    assert seen["reserved"] == 0
