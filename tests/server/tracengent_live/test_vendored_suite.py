"""The vendored suite is the published file, byte for byte (see README.md)."""

import hashlib
from pathlib import Path

SUITE_SHA256 = "25c6c8ac41e9eda1be4b88abb2693b4c69cddb54f425d8cd9f1ede510dc0bc39"


def test_the_vendored_suite_is_unchanged() -> None:
    data = (Path(__file__).parent / "test_live_platform.py").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SUITE_SHA256
