"""The RedisStore reads its budget scripts' replies off the socket itself: whatever a
server (or something posing as one) sends back, the reader returns exactly one well-formed
reply or raises, so the call fails closed (``store_unavailable``) and the connection is
dropped; it never returns a half-read or misread answer. No server is needed here."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyengine.budgets.redis import _exchange


class ScriptedSocket:
    """A socket whose ``recv`` hands out the given chunks in turn, then end of stream."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_a_bulk_string_a_nil_and_an_error_reply_are_read_as_such() -> None:
    assert _exchange(ScriptedSocket(b"$5\r\nhello\r\n"), b"CMD") == b"hello"
    assert _exchange(ScriptedSocket(b"$-1\r\n"), b"CMD") is None
    assert _exchange(ScriptedSocket(b"-NOSCRIPT No matching script\r\n"), b"CMD") == (
        "NOSCRIPT No matching script")
    sock = ScriptedSocket(b"$0\r\n\r\n")
    assert _exchange(sock, b"*1\r\n$4\r\nPING\r\n") == b""
    assert sock.sent == b"*1\r\n$4\r\nPING\r\n"


def test_a_reply_split_across_reads_is_put_together() -> None:
    assert _exchange(ScriptedSocket(b"$1", b"1\r\nhello", b" world\r", b"\n"), b"C") == (
        b"hello world")


def test_a_payload_holding_crlf_is_read_by_its_length() -> None:
    assert _exchange(ScriptedSocket(b"$4\r\na\r\nb\r\n"), b"C") == b"a\r\nb"


@pytest.mark.parametrize("reply", [
    b":1\r\n",                      # an integer: no budget script answers one
    b"+OK\r\n",                     # a status
    b"*1\r\n$1\r\na\r\n",           # an array
    b"$3\r\nabc\r\n$3\r\nxyz\r\n",  # two replies where one was asked
    b"$3\r\nabcd\r\n",              # longer than announced
    b"$3\r\nabcXY",                 # no CRLF after the payload
    b"-ERR x\r\ntrailing",          # bytes after an error
    b"$-1\r\n+OK\r\n",              # bytes after a nil
    b"$x\r\n",                      # a length that is not a number
    b"$-5\r\n",                     # a negative length other than a nil's
    b"$ 5\r\nhello\r\n",            # a length int() would take, RESP would not
    b"$5_0\r\n",                    # the same
    b"x" * 70_000,                  # a first line that never ends
    b"$999999999999\r\n",           # a length no script's reply comes near
])
def test_anything_else_is_refused(reply: bytes) -> None:
    with pytest.raises(ValueError):
        _exchange(ScriptedSocket(reply), b"C")


@pytest.mark.parametrize("chunks", [(), (b"$5\r\nhel",), (b"$5",)])
def test_a_connection_closed_mid_reply_is_an_error(chunks: tuple[bytes, ...]) -> None:
    with pytest.raises(ConnectionError):
        _exchange(ScriptedSocket(*chunks), b"C")


@given(st.binary(max_size=64), st.integers(1, 8))
def test_any_bytes_give_one_exact_reply_or_an_error(data: bytes, cut: int) -> None:
    """Random replies, delivered in random pieces: a bulk string comes back only when the
    bytes are exactly one well-formed bulk string of that payload."""
    chunks = [data[i:i + cut] for i in range(0, len(data), cut)]
    try:
        got = _exchange(ScriptedSocket(*chunks), b"C")
    except (ValueError, ConnectionError):
        return
    if isinstance(got, bytes):
        assert data == b"$%d\r\n%s\r\n" % (len(got), got)
    elif got is None:
        assert data == b"$-1\r\n"
    else:
        assert data[:1] == b"-" and data.endswith(b"\r\n")
        assert got == data[1:-2].decode("utf-8", "replace") and b"\r\n" not in data[1:-2]
