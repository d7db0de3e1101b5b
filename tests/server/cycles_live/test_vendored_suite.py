"""The vendored suite is the published file, byte for byte (see README.md)."""

import hashlib
from pathlib import Path

SUITE_SHA256 = "ee0ad980ba39421c626336676b1e8a5a6d4b9602117ec8710e22342a38a4df94"


def test_the_vendored_suite_is_unchanged() -> None:
    data = (Path(__file__).parent / "test_live_server.py").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SUITE_SHA256
