"""A shared store's URL split into the store's own options and the driver's URL.

Budget, approval and revocation stores all open from ``postgresql://...?schema=...`` or
``redis://...?prefix=...``: the options a store reads are taken out of the query (each at
most once, converted), the rest stays for the driver. One parser, so the three kinds read
a URL alike; each caller turns :class:`StoreUrlError` into its own error code.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["POSTGRES_STORE_OPTIONS", "REDIS_TIMEOUT", "StoreUrlError", "check_memory_url",
           "check_postgres_url", "check_redis_url", "open_shared_store", "redact_url",
           "safe_reason", "scheme_of", "split_store_url"]

_T = TypeVar("_T")


class StoreUrlError(ValueError):
    """Why a store URL cannot be read (the caller raises it again under its own code)."""


def _check_string(url: object) -> None:
    if not isinstance(url, str):
        raise StoreUrlError(f"a store URL is a string, not {type(url).__name__}")


def scheme_of(url: object) -> str:
    """The lower-cased scheme of ``url`` (``""`` for a non-string or no scheme)."""
    return url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""


def split_store_url(url: str, own: Mapping[str, Callable[[str], Any]]
                    ) -> tuple[str, dict[str, Any]]:
    """``(url without the store's options, those options converted)``: ``own`` maps each
    option the store reads to its conversion. An option given twice, a value its
    conversion refuses or a URL ``urlsplit`` cannot read raise :class:`StoreUrlError`
    (its words never hold the URL's secrets: :func:`safe_reason`).
    Blank values are kept (``?prefix=`` is refused by the store, never silently lost)."""
    try:
        return _split_store_url(url, own)
    except StoreUrlError as exc:
        raise StoreUrlError(safe_reason(url, str(exc))) from None


def _split_store_url(url: str, own: Mapping[str, Callable[[str], Any]]
                     ) -> tuple[str, dict[str, Any]]:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreUrlError(_url_syntax(exc)) from None
    mine: dict[str, Any] = {}
    rest: list[str] = []
    for item in parts.query.split("&") if parts.query else ():
        # each option the store does not read is kept as written: encoded anew, a
        # password holding an unescaped ? would lose the @ that shows it is one
        # (redact_url), and a driver would read another text than the user's
        parsed = parse_qsl(item, keep_blank_values=True)
        if not parsed:  # an empty item (``a=1&&b=2``), which no one reads
            continue
        name, value = parsed[0]
        convert = own.get(name)
        if convert is None:
            rest.append(item)
            continue
        if name in mine:
            raise StoreUrlError(f"option {name} given twice")
        try:
            mine[name] = convert(value)
        except ValueError:
            raise StoreUrlError(f"option {name}={value!r} is not a value it takes"
                                ) from None
    return urlunsplit(parts._replace(query="&".join(rest))), mine


def open_shared_store(url: str, options: Mapping[str, Any], *, what: str,
                      refuse: Callable[[str], Exception], memory: Callable[[], _T],
                      postgres: Callable[..., _T], redis: Callable[..., _T],
                      own: Callable[[bool], Mapping[str, Callable[[str], Any]]]) -> _T:
    """The store ``url`` names, as the approval and revocation stores open theirs:
    ``memory()`` for ``memory:`` (nothing after it), ``postgres(plain, **options)`` for
    ``postgresql://`` / ``postgres://``, ``redis(plain, **options)`` for ``redis://`` /
    ``rediss://``: the options ``own(is_postgres)`` maps are taken out of the query and
    converted (:func:`split_store_url`), ``options`` (keyword arguments) over them.

    Each kind takes out its own options; any other is left for the driver's check, which
    refuses it (``?prefix=`` on PostgreSQL is no libpq option). A URL or option that
    cannot be read, another scheme, or a ``ValueError`` of the store's constructor (the
    driver cannot read the URL: a port that is no number) raises ``refuse(message)``,
    the store's own code; ``what`` names the store in the message (``"approval
    store"``). The store's own errors pass through as they are."""
    from policyengine.errors import PolicyEngineError
    scheme = scheme_of(url)
    try:
        if scheme == "memory":
            check_memory_url(url)
            return memory()
        if scheme not in ("postgresql", "postgres", "redis", "rediss"):
            article = "an" if what[:1] in "aeiou" else "a"
            raise refuse(f"{article} {what} URL is memory:, postgresql://... or "
                         "redis://...")
        is_postgres = scheme.startswith("postgres")
        plain, mine = split_store_url(url, own(is_postgres))
        return (postgres if is_postgres else redis)(plain, **{**mine, **options})
    except PolicyEngineError:
        raise
    except ValueError as exc:  # StoreUrlError, or the driver's (which may quote the URL)
        raise refuse(f"{what} URL: {safe_reason(url, str(exc))}") from None


def check_memory_url(plain: str) -> None:
    """Refuse anything after ``memory:`` once the store's own options are taken out (a
    typo such as ``memory:?durability=full`` or ``memory:ledger`` would otherwise open a
    store that silently ignores it)."""
    rest = plain.split(":", 1)[1] if ":" in plain else plain
    if rest.rstrip("?"):
        raise StoreUrlError(f"memory: takes no {rest.lstrip('?')!r} (write memory:, "
                            "with only the options the store reads)")


#: Longest time option of any store (ten years): beyond, a value is a typo, and a store's
#: arithmetic on it can fail on every call (Redis refuses a retention of 1e300 seconds).
MAX_SECONDS = 315_360_000


def seconds_ok(value: object, *, positive: bool = False) -> bool:
    """A time option every store takes: a finite number of seconds from 0 (above 0 with
    ``positive``) to :data:`MAX_SECONDS` (a NaN compares false everywhere, an infinity
    bounds nothing). Each store refuses any other with its own code."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and (value > 0 or (not positive and value == 0))
            and value <= MAX_SECONDS)


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        number = kind(value)
        if not seconds_ok(number, positive=True):
            raise ValueError(value)
        return number
    return convert


def flag(value: str) -> bool:
    """A yes/no option of a store URL (``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(value)
    return value.lower() in ("true", "yes", "1")


def _choice(*names: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.lower() not in names:
            raise ValueError(value)
        return value
    return convert


def _nonnegative_int(value: str) -> int:
    if not value.isdigit() or len(value) > 6:
        raise ValueError(value)
    return int(value)


def _text(value: str) -> str:
    if not value:
        raise ValueError(value)
    return value


class _DefaultSeconds(float):
    """A Redis store's default ``timeout``: a float like any, told apart (``is``) from
    one the caller gave."""

    __slots__ = ()


#: The Redis stores' default ``timeout`` (5 s), the default of their constructors: a
#: store takes ``timeout is not REDIS_TIMEOUT`` as "a timeout was given" (in its URL's
#: ``?timeout=`` or as the argument), which a URL's ``socket_timeout`` or
#: ``socket_connect_timeout`` may not be given beside (:func:`check_redis_url`).
REDIS_TIMEOUT: float = _DefaultSeconds(5.0)
#: redis-py's URL options for the waits a Redis store's own ``timeout`` sets.
_REDIS_WAITS = ("socket_connect_timeout", "socket_timeout")


#: The redis-py URL options a store passes on (to ``redis.Redis.from_url``), with what
#: each must read as. redis-py hands any other query option to its connection class as a
#: keyword argument, which fails with a ``TypeError`` at the first command, not at
#: construction: every other option is refused here.
_REDIS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": _nonnegative_int,
    "socket_timeout": _positive(float),
    "socket_connect_timeout": _positive(float),
    "socket_keepalive": flag,
    "health_check_interval": _positive(int),
    "client_name": _text,
}
_REDISS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _choice("none", "optional", "required"),
    "ssl_check_hostname": flag,
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
}


def _check_query(query: str, known: Mapping[str, Callable[[str], Any]], client: str,
                 also: tuple[str, ...] = ()) -> set[str]:
    """The names of ``query``'s options, each checked: one ``known`` does not hold, an
    option given twice or a value its conversion refuses raise :class:`StoreUrlError`
    (``client`` names whose options ``known`` are; ``also``, names a store's URL opener
    takes out before, is offered with them to a typo)."""
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True):
        convert = known.get(name)
        if convert is None and name in _REFUSED:
            raise StoreUrlError(f"option {name!r}: {_REFUSED[name]}")
        if convert is None and name in also:
            raise StoreUrlError(f"option {name!r} is not one this store takes in its URL "
                                "(another kind of store reads it; a store's class takes "
                                "its own options as arguments, not in the URL)")
        if convert is None:
            near = difflib.get_close_matches(name, [*known, *also], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise StoreUrlError(f"unknown option {name!r}{hint} (the store's own options, "
                                f"and {client}: {', '.join(sorted(known))})")
        if name in seen:
            raise StoreUrlError(f"option {name} given twice")
        seen.add(name)
        try:
            convert(value)
        except ValueError:
            raise StoreUrlError(f"option {name}={value!r} is not a value it takes"
                                ) from None
    return seen


def check_redis_url(plain: str, *, timeout_given: bool = False) -> None:
    """:func:`_check_redis_url`, its refusal's words without the URL's secrets
    (:func:`safe_reason`)."""
    try:
        _check_redis_url(plain, timeout_given=timeout_given)
    except StoreUrlError as exc:
        raise StoreUrlError(safe_reason(plain, str(exc))) from None


def _check_redis_url(plain: str, *, timeout_given: bool = False) -> None:
    """Refuse a Redis URL (the store's own options already taken out) that redis-py would
    read other than as written, or fail on only at the first command: a query option it
    does not know (``?foo=1``: a ``TypeError`` from its connection class), a value that
    option cannot take, an option given twice, a database that is no number
    (``redis://host/notadb`` silently meant database 0), or a database given both in the
    path and as ``?db=``. ``unix://`` takes the socket's path and ``?db=``; the TLS
    options are ``rediss://``'s alone. A URL of another scheme (or no string at all) is
    refused too. With ``timeout_given`` (the store's own ``timeout`` was given, in its
    URL or as an argument), ``socket_timeout`` and ``socket_connect_timeout`` are
    refused: the store's timeout sets both waits, and redis-py lets the URL's win over
    it without a word."""
    _check_string(plain)
    if scheme_of(plain) not in ("redis", "rediss", "unix"):
        raise StoreUrlError("a Redis URL starts with redis://, rediss:// or unix://")
    try:
        parts = urlsplit(plain)
        parts.port  # noqa: B018 - read for its ValueError (a port that is no number)
    except ValueError as exc:
        raise StoreUrlError(_url_syntax(exc)) from None
    scheme = parts.scheme.lower()
    known = {**_REDIS_OPTIONS, **(_REDISS_OPTIONS if scheme == "rediss" else {})}
    seen = _check_query(parts.query, known, "for the Redis client")
    both = [name for name in _REDIS_WAITS if name in seen]
    if timeout_given and both:
        raise StoreUrlError(f"option {both[0]} is given beside the store's timeout, which "
                            "sets the same wait: give timeout alone (it sets "
                            "socket_timeout and socket_connect_timeout), or "
                            f"{' and '.join(both)} without it")
    if scheme == "unix":
        if not parts.path:
            raise StoreUrlError("unix:// needs the socket's path (unix:///path/to.sock)")
        return
    path = parts.path.strip("/")
    if path:
        if "db" in seen:
            raise StoreUrlError("the database is given twice (in the path and as ?db=)")
        try:
            _nonnegative_int(path)
        except ValueError:
            raise StoreUrlError(f"database {path!r} is not a number (write "
                                "redis://host:6379/0)") from None


def _any(value: str) -> str:
    return value


def _exactly(*names: str) -> Callable[[str], str]:
    """One of ``names``, spelt as libpq compares it (case and all)."""
    def convert(value: str) -> str:
        if value not in names:
            raise ValueError(value)
        return value
    return convert


def _digits(value: str) -> int:
    if not value.isdigit() or len(value) > 9:
        raise ValueError(value)
    return int(value)


def _ports(value: str) -> str:
    """A port, or one per host of a list (``host=a,b&port=5432,5433``; empty: the
    default)."""
    for port in value.split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(value)
    return value


def _tls_version(value: str) -> str:
    if value.lower() not in ("", "tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3"):
        raise ValueError(value)
    return value


_ON_OFF = _exactly("0", "1")
#: Driver options a store never passes on, and why.
_REFUSED = {"replication": "a replication connection runs none of the store's statements"}
#: libpq's connection parameters (the PostgreSQL manual, "Connection Strings",
#: "Parameter Key Words"), which a store passes on in its URL, with what each must read
#: as where libpq takes a fixed set of values or a number. libpq refuses any other name
#: when it parses the URL, which the stores reported as unreachable
#: (``store_unavailable``...); a value libpq refuses (``sslmode=requried``) failed the
#: same way, at the first connection. Left out: ``replication`` (such a connection runs
#: none of the stores' statements) and ``connect_timeout``, which the stores take out of
#: the URL as their own option (:data:`POSTGRES_STORE_OPTIONS`: given to the driver
#: beside their own timeout, libpq's was overridden by it).
_LIBPQ_OPTIONS: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys((
        "host", "hostaddr", "dbname", "user", "password", "passfile", "require_auth",
        "client_encoding", "options", "application_name", "fallback_application_name",
        "sslcert", "sslkey", "sslkeylogfile", "sslpassword", "sslrootcert", "sslcrl",
        "sslcrldir", "requirepeer", "krbsrvname", "service", "scram_client_key",
        "scram_server_key", "oauth_issuer", "oauth_client_id", "oauth_client_secret",
        "oauth_scope"), _any),
    "port": _ports,
    "channel_binding": _exactly("disable", "prefer", "require"),
    "keepalives": _ON_OFF,
    "keepalives_idle": _digits,
    "keepalives_interval": _digits,
    "keepalives_count": _digits,
    "tcp_user_timeout": _digits,
    "gssencmode": _exactly("disable", "prefer", "require"),
    "sslmode": _exactly("disable", "allow", "prefer", "require", "verify-ca",
                        "verify-full"),
    "sslnegotiation": _exactly("postgres", "direct"),
    "sslcompression": _ON_OFF,
    "sslcertmode": _exactly("disable", "allow", "require"),
    "sslsni": _ON_OFF,
    "ssl_min_protocol_version": _tls_version,
    "ssl_max_protocol_version": _tls_version,
    "min_protocol_version": _exactly("3.0", "3.2", "latest"),
    "max_protocol_version": _exactly("3.0", "3.2", "latest"),
    "gsslib": _exactly("gssapi", "sspi"),
    "gssdelegation": _ON_OFF,
    "target_session_attrs": _exactly("any", "read-write", "read-only", "primary",
                                      "standby", "prefer-standby"),
    "load_balance_hosts": _exactly("disable", "random"),
}
#: The options a PostgreSQL store's URL opener takes out of the query (each kind reads
#: some of them; the others it refuses): offered to a typo beside libpq's.
POSTGRES_STORE_OPTIONS = ("schema", "durability", "pool_size", "max_clock_skew",
                          "retention", "connect_timeout", "refresh", "max_stale", "create")


def check_postgres_url(plain: str) -> None:
    """:func:`_check_postgres_url`, its refusal's words without the URL's secrets
    (:func:`safe_reason`)."""
    try:
        _check_postgres_url(plain)
    except StoreUrlError as exc:
        raise StoreUrlError(safe_reason(plain, str(exc))) from None


def _check_postgres_url(plain: str) -> None:
    """Refuse a PostgreSQL URL (the store's own options already taken out) that libpq
    would refuse, or read other than as written, only when the store connects: a query
    option that is not one of libpq's connection parameters (``?bogus=1``, a typo such as
    ``?sslmdoe=require``, or a store option of another kind, ``?prefix=``), a value
    libpq does not take for it (``sslmode=requried``, ``keepalives=yes``), an option
    given twice, a port that is no number, or a URL libpq's own parser refuses. Each is
    the caller's mistake, raised as the store's bad-input code, never reported as an
    unreachable server."""
    _check_string(plain)
    try:
        parts = urlsplit(plain)
    except ValueError as exc:
        raise StoreUrlError(_url_syntax(exc)) from None
    _check_query(parts.query, _LIBPQ_OPTIONS, "libpq's connection parameters",
                 POSTGRES_STORE_OPTIONS)
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # the store says which extra to install
        return
    try:
        read = conninfo_to_dict(plain)  # libpq's parser: the syntax, what this libpq knows
    except ProgrammingError:
        # libpq's words quote the URL, password and all: not repeated
        raise StoreUrlError("libpq cannot read it (a bad %-escape, an unclosed [ of an "
                            "IPv6 address, or an option this libpq does not know)"
                            ) from None
    try:
        _ports(str(read.get("port", "")))
    except ValueError:
        raise StoreUrlError("a port is no number from 1 to 65535") from None


# ------------------------------------------------------------------ what a message shows
#: libpq's connection parameters whose value is a secret.
_SECRET_LIBPQ = frozenset({"password", "sslpassword", "oauth_client_secret",
                           "scram_client_key", "scram_server_key"})
#: Query options whose values a message shows as written: the stores' own and the
#: drivers' options known to hold no secret. Any other option's value is masked (a
#: ``?password=``, an ``oauth_client_secret``, a typo such as ``?pasword=``, an HTTP
#: collector's ``?api_key=``).
_SHOWN_OPTIONS = frozenset({*_LIBPQ_OPTIONS, *_REDIS_OPTIONS, *_REDISS_OPTIONS,
                            *POSTGRES_STORE_OPTIONS, "prefix", "timeout", "busy_timeout"}
                           ) - _SECRET_LIBPQ
#: What stands for a masked secret.
MASK = "***"
#: Shortest secret :func:`safe_reason` looks for in a message: a shorter one (``?x=1``)
#: would mask every such character of the words (no refusal quotes a password: this is
#: the second line of defence, for a driver's words).
_SCRUBBED_LENGTH = 4


def _url_syntax(exc: ValueError) -> str:
    """The words for a URL ``urlsplit`` cannot read, never its own: those quote the text
    it took for the port, which is part of a password holding ``/``, ``?`` or ``#``
    (``redis://:pa/ss@host``: the port is ``pa``)."""
    if "Port" in str(exc) or "port" in str(exc):
        return ("a port is no number (a password holding / ? # or @ must be %-escaped: "
                "%2F %3F %23 %40)")
    return "the URL cannot be read (an unclosed [ of an IPv6 address?)"


def _redacted(url: str) -> tuple[str, list[str], bool]:
    """``(url with its secrets masked, the texts masked, whether an @ lies beyond the
    host)``. The user information is found by the last ``@`` before the path where
    there is one; an ``@`` only after it (a password holding ``/``, ``?`` or ``#``
    unescaped, which ``urlsplit`` reads as a host, port or path) masks everything up to
    the last ``@`` when a ``:`` comes before it: too much masked is a poorer message, too
    little a leaked password."""
    hidden: list[str] = []
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    at = rest.rfind("@", 0, end)
    # a password follows a ":" before its "@" (``?user=a@b`` alone holds none)
    beyond = at < 0 and bool(sep) and ":" in rest[:max(rest.rfind("@"), 0)]
    if beyond:
        at = rest.rfind("@")
    if at >= 0 and sep:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon, password = userinfo.partition(":")
        if beyond or scheme.lower() in ("http", "https"):
            hidden.append(userinfo)  # all of it: an HTTP user name may be a token
            shown_user = MASK
        else:
            shown_user = user
            if colon:
                hidden.append(password)
                shown_user = f"{user}:{MASK}"
        rest = f"{shown_user}@{rest}"
    head, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        kept = []
        for item in query.split("&"):
            name, equals, value = item.partition("=")
            if equals and value and _option_name(name) not in _SHOWN_OPTIONS:
                hidden.append(value)
                item = f"{name}={MASK}"
            kept.append(item)
        rest = f"{head}?{'&'.join(kept)}{hash_}{fragment}"
    return (f"{scheme}{sep}{rest}", [h for h in hidden if h], beyond)


def _option_name(name: str) -> str:
    from urllib.parse import unquote_plus
    return unquote_plus(name)


def redact_url(url: object) -> str:
    """``url`` as a message may show it: a password (``user:***@host``), every query value
    but those of options known to hold no secret (``?password=***``) and, for
    ``http(s)://``, the whole user information (``***@host``: a token) masked. Not a
    string: its type only; text with no ``scheme://`` (but ``memory:``), which is no URL
    (a password, or a ``user:password`` pair, given where the URL belongs; ``host:port``
    with its scheme left out): its length only. A ``:`` alone is no scheme: it may be
    the one between a user and a password."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    if "://" not in url and scheme_of(url) != "memory":
        return f"<{len(url)} characters, no URL scheme>"
    return _redacted(url)[0]


def safe_reason(url: object, why: str) -> str:
    """``why``, a refusal's words about ``url``, with every secret of the URL (as written,
    %-decoded or %-encoded anew) masked. When an ``@`` lies beyond the host (the user information
    cannot be told apart from the rest), words that quote the URL's parts could quote a
    piece of a password: then only a fixed hint is given. Secrets shorter than
    :data:`_SCRUBBED_LENGTH` are not looked for."""
    if not isinstance(url, str):
        return why
    from urllib.parse import quote, unquote
    _, hidden, beyond = _redacted(url)
    if beyond:
        return ("the URL is not quoted: an @ after its host may end a password holding "
                "/ ? or # (%-escape them: %2F %3F %23 %40)")
    forms = {form for h in hidden  # as written, %-decoded, and %-encoded anew
             for form in (h, unquote(h), quote(unquote(h)), quote(unquote(h), safe=""))}
    for secret in sorted(forms, key=len, reverse=True):
        if len(secret) >= _SCRUBBED_LENGTH:
            why = why.replace(secret, MASK)
    return why
