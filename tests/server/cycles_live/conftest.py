"""Run runcycles' own live integration suite against the decision service: start the
service on a free loopback port and point the suite's CYCLES_* variables at it. The
variables are set when this conftest is imported, which pytest does before it imports
the suite (the suite reads them at import time)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import policyengine as pe
from policyengine.server import Credentials, CyclesKey, ServiceConfig, create_app, hash_secret

from ..service_harness import free_port, serving

_PORT = free_port()
_ENV = {"CYCLES_BASE_URL": f"http://127.0.0.1:{_PORT}",
        "CYCLES_API_KEY": "live-suite-key",
        "CYCLES_TENANT": "integration-test"}
os.environ.update(_ENV)

# The suite reserves and commits USD_MICROCENTS for action llm.completion/test-model
# under subject {"tenant": CYCLES_TENANT}.
POLICY = """namespace live
budget tenant-usd: llm.completion:* limit 1000000000 USD_MICROCENTS per day per tenant
"""


@pytest.fixture(scope="module", autouse=True)
def live_service() -> Iterator[None]:
    creds = Credentials(cycles_keys=(CyclesKey(
        "live", hash_secret(_ENV["CYCLES_API_KEY"]), _ENV["CYCLES_TENANT"]),))
    app = create_app(pe.Engine.from_source(POLICY), credentials=creds,
                     config=ServiceConfig(access_log=False))
    with serving(app, _PORT):
        yield
    for name in _ENV:
        os.environ.pop(name, None)
