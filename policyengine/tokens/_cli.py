"""``policyengine token ...``: keygen, mint, attenuate, verify, revoke, jwks.

:func:`register` adds the ``token`` command to an argparse sub-parser set; the parsed
namespace carries ``handler`` (:func:`run`). Output is JSON on stdout; an error prints
``policyengine token CMD: error: <code>: <message>`` on stderr (every command's error
line) and returns exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyengine import tokens  # grants and keys (PyJWT, cryptography) load on first use
from policyengine._visible import error_of, say_error
from policyengine.money._money import MoneyError
from policyengine.money._rates import JsonFileRates, RateError
from policyengine.tokens.errors import TokenError
from policyengine.tokens.revocation import JsonFileRevocationStore, revoke

if TYPE_CHECKING:
    from policyengine.tokens.keys import KeySet

__all__ = ["main", "parse_duration", "register", "run"]

# At most 15 digits: int() of over 4300 raises ValueError (a traceback, not a code), and
# no lifetime needs more (a ttl past year 9999 is refused as invalid_time_claim anyway).
_DURATION = re.compile(r"([0-9]{1,15})([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``"3600"``, ``"90s"``, ``"30m"``, ``"1h"``, ``"7d"`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) <= 0:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise TokenError("invalid_option", f"bad duration {shown!r} (e.g. 3600, 30m, 1h, 7d)")
    return int(match.group(1)) * _UNIT[match.group(2)]


def _amount(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.max_amount is None:
        return None
    parts = args.max_amount.split()
    if len(parts) == 2:
        return parts[0], parts[1]
    if args.currency is None:
        raise TokenError("invalid_amount", 'give --max-amount "500 EUR" or --currency EUR')
    return args.max_amount, args.currency


def _permissions(args: argparse.Namespace) -> list[str]:
    perms: list[str] = []
    for item in args.permission or []:
        perms.extend(p.strip() for p in item.split(",") if p.strip())
    if not perms:
        raise TokenError("invalid_permission", "give at least one --permission")
    return perms


def _token(args: argparse.Namespace) -> str:
    """``--token``: the token, or ``-`` for stdin. The JSON that ``mint`` and
    ``attenuate`` print (``{"token": ...}``) is accepted too, so they pipe into each
    other."""
    text: str = sys.stdin.read() if args.token == "-" else args.token
    text = text.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # deep nesting: RecursionError
            raise TokenError("malformed", "--token: neither a token nor the JSON output of "
                             "mint/attenuate") from None
        if not isinstance(doc, dict) or type(doc.get("token")) is not str:
            raise TokenError("malformed", '--token: JSON input needs a "token" string')
        return str(doc["token"]).strip()
    return text


def _issued(keys: KeySet, token: str) -> dict[str, Any]:
    """What mint/attenuate print: the token and the ids to revoke it by."""
    from policyengine.tokens.grants import load_hop
    hop = load_hop(keys, token)
    return {"token": token, "grant_id": hop.grant_id, "jti": hop.jti,
            "chain": list(hop.chain), "expires_at": hop.expires_at}


def _keys(args: argparse.Namespace) -> KeySet:
    return tokens.KeySet.from_file(args.keys, allow_hmac=args.allow_hmac,
                                   issuer=getattr(args, "key_issuer", None))


#: ``--revocations`` values read as a store URL (as ``serve --revocations`` takes them);
#: anything else without ``://`` is a JSON file path, as before.
_STORE_SCHEMES = ("memory", "postgresql", "postgres", "redis", "rediss")


def open_revocations(value: str) -> Any:
    """A ``--revocations`` value opened: a revocation store URL (``memory:``,
    ``postgresql://...``, ``redis://...``, with ``?schema=`` / ``?prefix=``) or a JSON
    file path. One reading for every command taking the option (``token verify``,
    ``attenuate``, ``revoke``, ``eval``, ``explain``): a bad URL or option is
    ``invalid_revocations`` before any connection, never a file named after it."""
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in _STORE_SCHEMES and "://" not in value:
        return JsonFileRevocationStore(value)
    from policyengine.tokens import revocations_from_url
    return revocations_from_url(value)  # an unknown scheme: invalid_revocations


def opened_revocations(args: argparse.Namespace) -> Any:
    """``--revocations`` opened (:func:`open_revocations`); a store is closed when the
    command ends (``args.opened``)."""
    store = open_revocations(args.revocations)
    getattr(args, "opened", []).append(store)
    return store


def _extras(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if getattr(args, "revocations", None):
        extra["revocations"] = opened_revocations(args)
    if getattr(args, "rates", None):
        extra["rates"] = JsonFileRates(args.rates)
    if getattr(args, "now", None) is not None:
        extra["now"] = args.now
    return extra


def _keygen(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.keys)
    if path.exists():
        if not args.rotate:
            raise TokenError("invalid_option", f"{path} exists; pass --rotate to add a new key")
        keys = tokens.KeySet.from_file(path, allow_hmac=args.allow_hmac).rotate(args.alg)
    else:
        keys = tokens.KeySet.generate(args.alg, kid=args.kid)
    keys.save(path)
    key = keys.active_key
    return {"kid": key.kid, "alg": key.alg, "keys": str(path), "kids": list(keys.kids)}


def _mint(args: argparse.Namespace) -> dict[str, Any]:
    extra = _extras(args)
    keys = _keys(args)
    token = tokens.mint(
        keys, issuer=args.issuer, acting_for=args.acting_for, agent=args.agent,
        permissions=_permissions(args), ttl=parse_duration(args.ttl),
        max_amount=_amount(args), audience=args.audience, max_depth=args.max_depth,
        now=extra.get("now"),
    )
    return _issued(keys, token)


def _attenuate(args: argparse.Namespace) -> dict[str, Any]:
    keys = _keys(args)
    token = tokens.attenuate(
        keys, _token(args), agent=args.agent, permissions=_permissions(args),
        ttl=parse_duration(args.ttl) if args.ttl else None, max_amount=_amount(args),
        max_depth=args.max_depth, **_extras(args),
    )
    return _issued(keys, token)


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    grant = tokens.verify(
        _keys(args), _token(args), issuer=args.issuer, audience=args.audience,
        leeway=args.leeway, max_depth=args.max_depth,
        max_ttl=parse_duration(args.max_ttl) if args.max_ttl else None, **_extras(args),
    )
    return grant.to_dict()


def _revoke(args: argparse.Namespace) -> dict[str, Any]:
    if args.revocations.split("?", 1)[0].lower() == "memory:":
        # A memory store dies with this command: the revocation would be lost unseen.
        raise TokenError("invalid_revocations", "memory: lasts only as long as this "
                         "command; revoke into a shared store URL or a JSON file")
    revoke(opened_revocations(args), args.id)
    return {"revoked": args.id}


def _jwks(args: argparse.Namespace) -> dict[str, Any]:
    return _keys(args).public_jwks()


REVOCATIONS_HELP = ('a store URL as serve takes it (postgresql://...?schema=..., '
                     'redis://...?prefix=..., memory:) or a JSON file {"revoked": [...]}')


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``token`` (with its sub-commands) to ``subparsers``
    (the object ``ArgumentParser.add_subparsers()`` returns)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "token", help="mint, attenuate, verify and revoke delegation tokens"
    )
    sub = parser.add_subparsers(dest="token_command", required=True)

    def command(name: str, help_text: str, keys: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        if keys:
            p.add_argument("--keys", required=True, help="JWKS (.json) or PEM key file")
            p.add_argument("--allow-hmac", action="store_true", help="accept HS256 keys")
            p.add_argument("--key-issuer", default=None, metavar="ISSUER",
                           help="the issuer every key of the file belongs to (a JWK's "
                           "own iss member says it per key)")
        return p

    p = command("keygen", "create a key file (or --rotate in a new active key)")
    p.add_argument("--alg", default="EdDSA", choices=["EdDSA", "ES256", "RS256"],
                   help="the new key's signing algorithm (default EdDSA)")
    p.add_argument("--kid", default=None, help="the new key's id (default: its RFC 7638 "
                   "thumbprint)")
    p.add_argument("--rotate", action="store_true",
                   help="the --keys file exists: add a new active key to it, keeping the "
                   "old ones to verify tokens they signed")

    def grant_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--agent", required=True, help="holder of the new token")
        p.add_argument("--permission", action="append", help="pattern; repeat or comma-join")
        p.add_argument("--max-amount", default=None, help='"500 EUR", or 500 with --currency')
        p.add_argument("--currency", default=None,
                       help="the currency of a bare --max-amount number (EUR)")
        p.add_argument("--now", type=float, default=None,
                       help="issue at this time, POSIX seconds (tests)")

    p = command("mint", "mint a root delegation token")
    grant_args(p)
    p.add_argument("--issuer", required=True,
                   help="the token's iss, which verifiers compare with their --issuer")
    p.add_argument("--acting-for", required=True, help="the principal delegating")
    p.add_argument("--ttl", required=True, help="lifetime: 3600, 30m, 1h, 7d")
    p.add_argument("--audience", default=None,
                   help="the token's aud: only a verifier expecting it accepts the token "
                   "(default: none)")
    p.add_argument("--max-depth", type=int, default=3,
                   help="how many hops of attenuation may follow (default 3)")

    p = command("attenuate", "derive a narrower child token")
    grant_args(p)
    p.add_argument("--token", required=True, help="parent token, or - for stdin")
    p.add_argument("--ttl", default=None, help="lifetime: 3600, 30m, 1h, 7d (default: "
                   "the parent's expiry; never past it)")
    p.add_argument("--max-depth", type=int, default=None,
                   help="lower the parent's max_depth (default: the parent's)")
    p.add_argument("--revocations", default=None, help=REVOCATIONS_HELP)
    p.add_argument("--rates", default=None, help="rates JSON for cross-currency amounts")

    p = command("verify", "verify a token and print its grant")
    p.add_argument("--token", required=True, help="token, or - for stdin")
    p.add_argument("--issuer", default=None,
                   help="the only issuer trusted (default: any the keys verify)")
    p.add_argument("--audience", default=None,
                   help="this verifier's audience; a token naming another, or one when "
                   "this is not given, is refused")
    p.add_argument("--leeway", type=float, default=60,
                   help="seconds of clock skew allowed at nbf, exp and iat, 0 to 60 "
                   "(default 60)")
    p.add_argument("--max-depth", type=int, default=None,
                   help="refuse a token more hops deep than this")
    p.add_argument("--max-ttl", default=None,
                   help="refuse a hop whose lifetime is longer: 3600, 30m, 1h, 7d")
    p.add_argument("--revocations", default=None, help=REVOCATIONS_HELP)
    p.add_argument("--rates", default=None,
                   help="rates JSON for a chain whose amounts are in several currencies")
    p.add_argument("--now", type=float, default=None,
                   help="verify at this time, POSIX seconds (tests)")

    p = command("revoke", "revoke a grant_id or jti (and every token derived from it)",
                keys=False)
    p.add_argument("id", help="grant_id or jti")
    p.add_argument("--revocations", required=True,
                   help=REVOCATIONS_HELP + " (a file is created if missing)")

    command("jwks", "print the public JWKS to publish for verifiers")
    parser.set_defaults(handler=run)
    return parser


_COMMANDS = {
    "keygen": _keygen, "mint": _mint, "attenuate": _attenuate, "verify": _verify,
    "revoke": _revoke, "jwks": _jwks,
}


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``token`` command; 0 on success, 1 on any error (code on stderr)."""
    opened: list[Any] = []
    args.opened = opened
    try:
        result = _COMMANDS[args.token_command](args)
    except (TokenError, MoneyError, RateError, OSError) as exc:
        # Coded as every command codes a failure (error_of): an error of the package by
        # its own code, a file error of the operating system (writing a key or revocation
        # file) io_error.
        say_error(f"token {args.token_command}", *error_of(exc))
        return 1
    finally:
        for store in opened:  # connections to a shared revocation store
            close = getattr(store, "close", None)
            if close is not None:
                close()
    print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m policyengine.tokens._cli token verify ...``)."""
    parser = argparse.ArgumentParser(prog="policyengine")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
