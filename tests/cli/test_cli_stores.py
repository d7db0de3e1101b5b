"""``eval`` and ``explain`` decide against the shared stores a service would, chosen by
URL (issue 14: a store chosen by URL everywhere a store is taken): ``--revocations``
(a store URL or a JSON file, as ``token revoke`` writes it) and ``--approvals``. A token
revoked on a shared store is refused by the command line; an approval granted on one is
honoured; a bad URL is refused with the store's code before any connection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, REDIS_URL, drop_namespace, require_service, unique_name

from policyengine.cli import main
from policyengine.decide import approvals_from_url
from policyengine.tokens import KeySet, mint, revocations_from_url

POLICY = """namespace shop
currency EUR
role buyer: shop:*
agent "bot": buyer
approval big: shop:buy over 50 EUR
delegation {
  issuer "https://a.example"
}
"""
NO_PG = "postgresql://u:s3cret@127.0.0.1:1/db"  # nothing listens on port 1
NO_REDIS = "redis://127.0.0.1:1/0"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "shop.policy"
    p.write_text(POLICY)
    return p


@pytest.fixture(params=["file", "postgres", "redis"])
def revocations(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where revocations are kept: a JSON file, or a shared store URL of its own."""
    kind = request.param
    if kind == "file":
        yield str(tmp_path / "revoked.json")
        return
    require_service(kind)
    base = unique_name("clirev")
    url = f"{POSTGRES_URL}?schema={base}" if kind == "postgres" else f"{REDIS_URL}?prefix={base}:"
    if kind == "redis":  # a Redis prefix's first use: its dataset made once (store init)
        revocations_from_url(url, create=True).close()
    yield url
    drop_namespace(kind, base)


@pytest.fixture(params=["postgres", "redis"])
def approvals(request: pytest.FixtureRequest) -> Iterator[str]:
    kind = request.param
    require_service(kind)
    base = unique_name("cliapr")
    yield f"{POSTGRES_URL}?schema={base}" if kind == "postgres" else f"{REDIS_URL}?prefix={base}:"
    drop_namespace(kind, base)


@pytest.mark.parametrize("command", ["eval", "explain"])
def test_a_token_revoked_on_a_store_is_refused_by_eval(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path, revocations: str,
    command: str,
) -> None:
    keys = KeySet.generate(issuer="https://a.example")
    keys.save(tmp_path / "keys.json")
    token = mint(keys, issuer="https://a.example", acting_for="besar", agent="bot",
                 permissions=["shop:*"], ttl=600)
    ask = [command, str(policy), "--principal", "bot", "--permission", "shop:buy",
           "--context", '{"amount": "5", "currency": "EUR"}', "--token", token,
           "--keys", str(tmp_path / "keys.json"), "--revocations", revocations, "--json"]

    def decided() -> dict[str, object]:
        code, out, err = run(capsys, *ask)
        assert code == 0, err
        answer: dict[str, object] = json.loads(out)
        return answer["decision"] if command == "explain" else answer  # type: ignore[return-value]

    if not revocations.endswith(".json"):  # a store URL: nothing revoked yet
        assert decided()["status"] == "allowed"
    code, out, err = run(capsys, "token", "verify", "--keys", str(tmp_path / "keys.json"),
                         "--token", token)
    assert code == 0, err
    grant_id = json.loads(out)["hops"][0]["grant_id"]
    code, _, err = run(capsys, "token", "revoke", grant_id, "--revocations", revocations)
    assert code == 0, err
    refused = decided()
    assert (refused["status"], refused["reasonCode"]) == ("denied", "invalid_token")
    assert "revoked" in [d["code"] for d in refused["diagnostics"]]  # type: ignore[attr-defined]
    # Without the option the command decides on its own empty store, as before.
    code, out, err = run(capsys, *ask[:-3], "--json")
    answer = json.loads(out)
    assert (answer["decision"] if command == "explain" else answer)["status"] == "allowed"


@pytest.mark.parametrize("command", ["eval", "explain"])
def test_an_approval_granted_on_a_store_is_honoured_by_eval(
    capsys: pytest.CaptureFixture[str], policy: Path, approvals: str, command: str,
) -> None:
    body = {"principal": "bot", "permission": "shop:buy",
            "context": {"amount": "80", "currency": "EUR"}}
    code, out, err = run(capsys, "eval", str(policy), "--request", json.dumps(body),
                         "--approvals", approvals)
    assert code == 0, err
    pending = json.loads(out)
    assert pending["status"] == "pending_approval"
    approval_id = pending["approvalId"]
    store = approvals_from_url(approvals)  # another host approves it
    try:
        store.approve(approval_id, by="alice")
    finally:
        store.close()
    ask = [str(policy), "--request", json.dumps({**body, "approval_id": approval_id})]
    code, out, err = run(capsys, "eval", *ask)  # the command's own empty store
    assert code == 0 and json.loads(out)["status"] != "allowed", err
    code, out, err = run(capsys, command, *ask, "--approvals", approvals, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["decision"] if command == "explain" else answer)["status"] == "allowed"


@pytest.mark.parametrize(("flag", "url", "code"), [
    ("--revocations", "sqlite:///revoked.db", "invalid_revocations"),
    ("--revocations", "mysql://db/x", "invalid_revocations"),
    ("--revocations", f"{NO_REDIS}?refresh=nan", "invalid_revocations"),
    ("--revocations", f"{NO_REDIS}?prefix=", "invalid_revocations"),
    ("--revocations", f"{NO_PG}?schema=Bad-Name", "invalid_revocations"),
    ("--revocations", "memory:?bogus=1", "invalid_revocations"),
    ("--approvals", "sqlite:///a.db", "invalid_approval_store"),
    ("--approvals", f"{NO_PG}?schema=Bad-Name", "invalid_approval_store"),
    ("--approvals", f"{NO_REDIS}?prefix=", "invalid_approval_store"),
    ("--approvals", "memory:?bogus=1", "invalid_approval_store"),
    ("--approvals", "revoked.json", "invalid_approval_store"),
])
@pytest.mark.parametrize("command", ["eval", "explain"])
def test_a_bad_store_url_is_refused_with_its_code(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, command: str, flag: str, url: str, code: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, command, str(policy), "--principal", "bot",
                           "--permission", "shop:buy", flag, url)
    what = flag[2:]
    assert (status, out) == (2, ""), err
    assert err.startswith(f"policyengine {command}: error: {code}: --{what}: "), err
    assert "s3cret" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.policy"]  # no file made


def test_memory_stores_are_taken(capsys: pytest.CaptureFixture[str], policy: Path) -> None:
    status, out, err = run(capsys, "eval", str(policy), "--principal", "bot",
                           "--permission", "shop:buy", "--revocations", "memory:",
                           "--approvals", "memory:", "--context",
                           '{"amount": "5", "currency": "EUR"}')
    assert status == 0 and json.loads(out)["status"] == "allowed", err
