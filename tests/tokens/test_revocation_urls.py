"""Revocation store URLs everywhere a revocation store is taken: ``token revoke`` and
``token verify --revocations`` take the URLs ``serve --revocations`` takes (a plain path
is still a JSON file), and a bad URL or option is ``invalid_revocations``, never a bare
ValueError (a NaN ``refresh`` or an infinite ``max_stale`` used to get through or fail
uncoded)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import POSTGRES_URL, REDIS_URL, drop_namespace, require_service, unique_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.errors import PolicyEngineError
from policyengine.tokens import (
    PostgresRevocationStore,
    RedisRevocationStore,
    TokenError,
    revocations_from_url,
)
from policyengine.tokens._cli import main as cli_main

ISSUER = "https://auth.example"
# Nothing listens on port 1: a store that tried to connect would fail
# revocation_unavailable, so these show the option is refused before any connection.
NO_PG = "postgresql://u:s3cret@127.0.0.1:1/db"
NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(params=["postgres", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A revocation store URL in a namespace of its own, dropped afterwards."""
    require_service(request.param)
    base = unique_name("revcli")
    url = (f"{POSTGRES_URL}?schema={base}" if request.param == "postgres"
           else f"{REDIS_URL}?prefix={base}:")
    revocations_from_url(url, create=True).close()  # a first use: its dataset made
    yield url
    drop_namespace(request.param, base)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_token_revoke_and_verify_take_a_store_url(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = str(tmp_path / "keys.json")
    assert _cli(capsys, "token", "keygen", "--keys", keys)[0] == 0
    code, out, err = _cli(capsys, "token", "mint", "--keys", keys, "--issuer", ISSUER,
                          "--acting-for", "besar", "--agent", "bot", "--permission",
                          "docs:*", "--ttl", "1h")
    assert code == 0, err
    token = json.loads(out)["token"]
    verify = ["token", "verify", "--keys", keys, "--token", token, "--revocations", store_url]
    code, out, err = _cli(capsys, *verify)
    assert code == 0, err
    grant_id = json.loads(out)["hops"][0]["grant_id"]
    code, out, err = _cli(capsys, "token", "revoke", grant_id, "--revocations", store_url)
    assert (code, json.loads(out)) == (0, {"revoked": grant_id}), err
    # Another host (a fresh store on the same URL) sees it; the CLI refuses the token.
    other = revocations_from_url(store_url)
    try:
        assert other.is_revoked(grant_id)
    finally:
        other.close()
    code, _, err = _cli(capsys, *verify)
    assert code == 1 and err.startswith("policyengine token verify: error: revoked: "), err


def test_a_plain_path_is_still_a_json_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a:b.json"  # a colon, no scheme: a file
    assert _cli(capsys, "token", "revoke", "g-1", "--revocations", str(path))[0] == 0
    assert json.loads(path.read_text()) == {"revoked": ["g-1"]}


@pytest.mark.parametrize("url", [
    "sqlite:///revoked.db", "file:///revoked.json", "mysql://db/x",
    f"{NO_REDIS}?refresh=nan", f"{NO_REDIS}?refresh=-1", f"{NO_REDIS}?max_stale=inf",
    f"{NO_REDIS}?refresh=10&max_stale=5", f"{NO_REDIS}?prefix=",
    f"{NO_REDIS}?refresh=1&refresh=2", "redis://127.0.0.1:port/0",
    f"{NO_PG}?schema=Bad-Name", f"{NO_PG}?refresh=nan", f"{NO_PG}?max_stale=1e300",
])
def test_a_bad_revocation_url_is_refused_with_its_code(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TokenError) as info:
        revocations_from_url(url)
    assert info.value.code == "invalid_revocations", str(info.value)
    code, out, err = _cli(capsys, "token", "revoke", "g-1", "--revocations", url)
    assert (code, out) == (1, "") and err.startswith(
        "policyengine token revoke: error: invalid_revocations: "), err
    assert "s3cret" not in err
    assert list(tmp_path.iterdir()) == []  # no file made under a URL's name


@pytest.mark.parametrize("make", [
    lambda: PostgresRevocationStore(NO_PG, schema="Bad-Name"),
    lambda: PostgresRevocationStore(NO_PG, refresh=float("nan")),
    lambda: PostgresRevocationStore(NO_PG, connect_timeout=0),
    lambda: RedisRevocationStore(NO_REDIS, prefix=""),
    lambda: RedisRevocationStore(NO_REDIS, max_stale=float("inf")),
    lambda: RedisRevocationStore(NO_REDIS, refresh=True),
])
def test_store_constructors_refuse_the_same_options(make: Any) -> None:
    with pytest.raises(TokenError) as info:
        make()
    assert info.value.code == "invalid_revocations"


_NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1", "0", "1", "2.5", "5", "1e300",
                     "315360000", "", "none", " 3", "1_0"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=5),
)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_option_value_opens_or_gives_the_code(kind: str, store_namespace: str,
                                                  data: st.DataObject) -> None:
    require_service(kind)
    name = "schema" if kind == "postgres" else "prefix"
    bad = ["", "Bad-Name", "1abc", "a" * 64] if kind == "postgres" else [""]
    options = data.draw(st.fixed_dictionaries({}, optional={
        "refresh": _NUMBERS, "max_stale": _NUMBERS,
        name: st.one_of(st.text(max_size=5).map(lambda t: store_namespace + t),
                        st.sampled_from(bad))}))
    options.setdefault(name, store_namespace)
    options["create"] = "true"  # a Redis prefix of the test's own: made here
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
    url = f"{POSTGRES_URL if kind == 'postgres' else REDIS_URL}?{query}"
    try:
        store = revocations_from_url(url)
    except PolicyEngineError as err:
        assert isinstance(err, TokenError) and err.code == "invalid_revocations", err
        return
    try:  # what opened answers (the namespace is dropped after)
        store.revoke("g-1")
        assert store.is_revoked("g-1") and not store.is_revoked("g-2")
    finally:
        store.close()


@pytest.mark.parametrize("url", ["memory:", "MEMORY:", "memory:?refresh=1"])
def test_token_revoke_refuses_a_memory_store_it_would_lose(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """A one-shot ``token revoke`` into ``memory:`` would report success and forget it."""
    code, out, err = _cli(capsys, "token", "revoke", "g-1", "--revocations", url)
    assert (code, out) == (1, "") and err.startswith(
        "policyengine token revoke: error: invalid_revocations: "), err
