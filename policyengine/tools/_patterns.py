"""Tool-call normalisation and the host / route / name patterns tool bindings use.

Everything here is pure and compiled once: ``*.compile`` runs at policy compile time,
``matches`` / ``match`` run on the hot path and do no parsing and no regex compilation.
Requests are normalised *before* matching, and anything ambiguous is rejected (fail
closed) rather than guessed: see ``docs/tools.md`` for the rules.

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import unquote

from policyengine.errors import PolicyEngineError

__all__ = [
    "MAX_HOST_LENGTH",
    "MAX_METHOD_LENGTH",
    "MAX_PATH_LENGTH",
    "HostPattern",
    "NamePattern",
    "RoutePattern",
    "ToolPatternError",
    "ToolRequestError",
    "ODD_CASES",
    "normalize_host",
    "normalize_method",
    "fold_case",
    "fold_path",
    "host_without_port",
    "normalize_path",
    "normalize_scheme",
    "is_short_name",
    "short_name_form",
    "split_path",
]

MAX_METHOD_LENGTH: Final = 32
MAX_HOST_LENGTH: Final = 253
MAX_PATH_LENGTH: Final = 2048


class ToolRequestError(PolicyEngineError, ValueError):
    """A tool request field is malformed. ``code`` is stable.

    Codes: ``invalid_method``, ``invalid_host``, ``invalid_scheme``, ``invalid_path``,
    ``path_traversal``, ``ambiguous_path``.
    """


class ToolPatternError(PolicyEngineError, ValueError):
    """A host / route / name pattern in a policy is malformed. ``code`` is
    ``invalid_pattern``."""

    def __init__(self, message: str, code: str = "invalid_pattern") -> None:
        super().__init__(code, message)


# ---------------------------------------------------------------------------- method

# RFC 9110 token: 1*tchar.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def normalize_method(method: str) -> str:
    """Upper-case an HTTP method; only RFC 9110 token characters, 1-32 of them.

    >>> normalize_method("post")
    'POST'
    """
    if (not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH
            or _TOKEN_RE.fullmatch(method) is None):
        raise ToolRequestError("invalid_method",
                               f"HTTP method {method!r} is not an RFC 9110 token")
    return method.upper()


# ------------------------------------------------------------------------------ host

_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_NUMERICISH_RE: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _bad_host(host: object, why: str) -> ToolRequestError:
    return ToolRequestError("invalid_host", f"host {host!r}: {why}")


def _split_port(host: str, original: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise _bad_host(original, "unterminated IPv6 literal")
        rest = host[end + 1:]
        if rest and not rest.startswith(":"):
            raise _bad_host(original, "junk after IPv6 literal")
        return host[:end + 1], (rest[1:] if rest else None)
    if host.count(":") > 1:
        return host, None  # a bare IPv6 address (httpx gives ``::1`` without brackets)
    name, sep, port = host.partition(":")
    return name, (port if sep else None)


def _normalize_port(port: str, original: str) -> str:
    if _PORT_RE.fullmatch(port) is None or not 0 < int(port) <= 65535:
        raise _bad_host(original, "port must be 1-65535")
    return str(int(port))


def _normalize_name(name: str, original: str) -> str:
    """Host without port: IP literal or DNS name, canonical form."""
    if name.startswith("[") or ":" in name:
        inner = name[1:-1] if name.startswith("[") else name
        try:
            address = ipaddress.IPv6Address(inner)
        except ValueError:
            raise _bad_host(original, "not a valid IPv6 address") from None
        # One address, one spelling: an IPv4-mapped address is the IPv4 host the socket
        # connects to, so egress and host patterns for that IPv4 address apply to it.
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
            raise _bad_host(original, "an IPv6 spelling of an IPv4 address (IPv4-compatible "
                            "or NAT64); write the IPv4 address")
        return f"[{address.compressed}]"
    if name.endswith("."):
        name = name[:-1]  # one trailing dot: the fully-qualified form of the same name
    if not name:
        raise _bad_host(original, "empty")
    labels = name.split(".")
    # WHATWG URL rule: a host whose last label is numeric is an IPv4 address. Only the
    # strict dotted-quad form is accepted (no octal, hex, or shortened ``127.1``).
    if _NUMERICISH_RE.fullmatch(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _bad_host(original, "not a dotted-quad IPv4 address") from None
    if len(name) > MAX_HOST_LENGTH:
        raise _bad_host(original, f"longer than {MAX_HOST_LENGTH} characters")
    for label in labels:
        if _LABEL_RE.fullmatch(label) is None:
            raise _bad_host(original, f"label {label!r} is not letters, digits, '-' or '_'")
    return name


def normalize_host(host: str) -> str:
    """Canonical host: lower-case, one trailing dot dropped, IP literals canonical.

    ``host`` is a host name or IP literal with an optional ``:port``; the port is kept
    (canonical decimal) because a pattern without a port matches only requests without
    one. Userinfo, non-ASCII (pass the IDNA ``xn--`` form), whitespace, empty labels and
    non-canonical IPv4 (``127.1``, ``0x7f.0.0.1``, ``010.0.0.1``) are ``invalid_host``.

    >>> normalize_host("API.Stripe.com.")
    'api.stripe.com'
    >>> normalize_host("::1")
    '[::1]'
    """
    if not isinstance(host, str) or not host:
        raise _bad_host(host, "empty")
    if not host.isascii():
        raise _bad_host(host, "non-ASCII; use the IDNA (xn--) form")
    if "@" in host:
        raise _bad_host(host, "userinfo (user@host) is not accepted")
    if any(c in host for c in " \t\r\n/\\?#%"):
        raise _bad_host(host, "contains characters a host cannot have (IPv6 zone ids too)")
    lowered = host.lower()
    name, port = _split_port(lowered, host)
    canon = _normalize_name(name, host)
    if port is None:
        return canon
    return f"{canon}:{_normalize_port(port, host)}"


# ------------------------------------------------------------------------- case fold

#: Letters a server that compares text case-insensitively takes for another one, under
#: that one: char-by-char upper then lower case mapping (Java's
#: ``String.equalsIgnoreCase``, .NET's ``ToUpperInvariant``) reads U+0130 (I with dot
#: above) and U+0131 (dotless i) as ``i``, U+212A (Kelvin sign) as ``k``, U+017F (long
#: s) as ``s`` and U+212B (Angstrom sign) as U+00E5. :func:`fold_case` folds by this
#: table (Unicode case folding alone keeps U+0131 apart and makes U+0130 two
#: characters), and the key guard spells names with it (``tools._redaction``).
ODD_CASES: Final = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f", "\u00e5": "\u212b"}
_TO_LETTER: Final = str.maketrans({odd: letter for letter, odds in ODD_CASES.items()
                                   for odd in odds})


def fold_case(text: str) -> str:
    """``text`` case-folded so that two texts fold alike whenever a server comparing them
    case-insensitively could take one for the other: Unicode case folding
    (``str.casefold``: ``ß`` is ``ss``) after the letters of :data:`ODD_CASES`, so also
    wherever Java's ``equalsIgnoreCase`` (upper, then lower case, char by char) or an
    upper- or lower-case mapping makes them equal (``adm\u0131n``, ``ADM\u0130N`` and
    ``admin`` fold alike). Only deny routes and the key guard use it: folding more
    denies or refuses more, never allows more.

    >>> fold_case("ADM\u0130N"), fold_case("Stra\u00dfe")
    ('admin', 'strasse')
    """
    if text.isascii():
        return text.lower()
    return text.translate(_TO_LETTER).casefold()


# ------------------------------------------------------------------------------ path

_HEX: Final = "0123456789ABCDEFabcdef"
_DOUBLE_ESCAPE: Final = re.compile(r"%25[0-9A-Fa-f]{2}")
_UNRESERVED: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@" (RFC 3986), minus ``;``
# (path parameters, which some servers strip) and plus ``/``.
_PATH_LITERAL: Final = _UNRESERVED | frozenset("!$&'()*+,=:@/")


def _bad_path(code: str, path: object, why: str) -> ToolRequestError:
    return ToolRequestError(code, f"path {path!r}: {why}")


def normalize_path(path: str) -> str:
    """Canonical request path: the path the upstream acts on; rejects anything that
    could reach another route.

    * must start with ``/``; at most 2048 characters; the query (``?...``) is dropped;
    * ``%XX`` of any character a path may hold as it is (unreserved, sub-delims except
      ``;``, ``:``, ``@``) is decoded (``%7E`` -> ``~``, ``%3A`` -> ``:``, ``%40`` ->
      ``@``); other escapes are upper-cased (``%3f`` -> ``%3F``); characters outside
      RFC 3986 ``pchar`` (space, non-ASCII ...) are percent-encoded as UTF-8;
    * ``path_traversal``: a ``.`` or ``..`` segment (also when percent-encoded), a segment
      of only dots and spaces (``...``, ``.%20``, ``%20``: Windows trims them to one of
      those or to nothing), an encoded ``/`` (``%2F``) or ``\\`` (``%5C``), a raw
      backslash;
    * ``ambiguous_path``: double encoding (``%25`` before two hex digits), percent-encoded
      bytes that are not UTF-8 (an overlong ``%C0%AE``);
    * ``invalid_path``: an empty segment (``//``, except a trailing ``/``), ``;`` (raw or
      encoded), ``#``, NUL or other control characters, a bad ``%`` escape.

    >>> normalize_path("/v1/%7Euser/a%3ab?x=1")
    '/v1/~user/a:b'
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise _bad_path("invalid_path", path, "must start with '/'")
    q = path.find("?")
    if q >= 0:
        path = path[:q]
    if len(path) > MAX_PATH_LENGTH:
        raise _bad_path("invalid_path", path[:64] + "...",
                        f"longer than {MAX_PATH_LENGTH} characters")
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == "%":
            h = path[i + 1:i + 3]
            if len(h) != 2 or h[0] not in _HEX or h[1] not in _HEX:
                raise _bad_path("invalid_path", path, "bad percent escape")
            byte = int(h, 16)
            if byte >= 0x80:
                i = _utf8_run(path, i, out)
                continue
            ch = chr(byte)
            if ch in ("/", "\\"):
                raise _bad_path("path_traversal", path, "encoded '/' or '\\' is not accepted")
            if byte < 0x20 or byte == 0x7F:
                raise _bad_path("invalid_path", path, "encoded control character")
            if ch == ";":
                raise _bad_path("invalid_path", path, "an encoded ';' is not accepted (servers "
                                "that decode before stripping path parameters differ)")
            # What the upstream acts on: every character a path may hold as it is is
            # decoded, so '%3A', '%40', '%2B' ... route like ':', '@', '+'.
            out.append(ch if ch in _PATH_LITERAL else "%" + h.upper())
            i += 3
            continue
        if c in _PATH_LITERAL:
            out.append(c)
        elif c == "\\":
            raise _bad_path("path_traversal", path, "backslash is not accepted")
        elif c in ";#":
            raise _bad_path("invalid_path", path, f"{c!r} is not accepted in a path")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            raise _bad_path("invalid_path", path, "control character")
        else:
            try:
                raw = c.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad_path("invalid_path", path, "lone surrogate") from None
            out.append("".join(f"%{b:02X}" for b in raw))
        i += 1
    result = "".join(out)
    if "%25" in result and _DOUBLE_ESCAPE.search(result):
        raise _bad_path("ambiguous_path", path, "double percent-encoding ('%25' before two "
                        "hex digits): decoded twice it is another path")
    segments = result[1:].split("/")
    for k, seg in enumerate(segments):
        if not seg:
            if k != len(segments) - 1:
                raise _bad_path("invalid_path", path, "empty segment ('//')")
        elif seg[0] in ".%" and not seg.replace("%20", "").strip("."):
            if seg in (".", ".."):
                raise _bad_path("path_traversal", path,
                                "'.' and '..' segments are not accepted")
            # Windows path normalisation trims a segment's trailing dots and spaces:
            # '...', '. ', ' ' are '..', '.' or an empty segment to it.
            raise _bad_path("path_traversal", path, "a segment of only dots and spaces "
                            "is '.', '..' or empty to Windows path normalisation")
    return result


def _utf8_run(path: str, i: int, out: list[str]) -> int:
    """Append the run of ``%XX`` escapes of non-ASCII bytes starting at ``i`` (upper-case)
    and return the index after it. The bytes must be UTF-8: an overlong ``%C0%AE`` is a
    ``.`` to some decoders and garbage to others (``ambiguous_path``)."""
    start = i
    data = bytearray()
    n = len(path)
    while i + 2 < n and path[i] == "%" and path[i + 1] in _HEX and path[i + 2] in _HEX:
        byte = int(path[i + 1:i + 3], 16)
        if byte < 0x80:
            break
        data.append(byte)
        i += 3
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_path("ambiguous_path", path, "percent-encoded bytes that are not UTF-8 "
                        "(decoders read them differently)") from None
    out.append(path[start:i].upper())
    return i


_ESCAPE_RUN: Final = re.compile(r"(?:%[0-9A-F]{2})+")


def _encode_path_char(c: str) -> str:
    return c if c in _PATH_LITERAL and c != "/" else "".join(
        f"%{b:02X}" for b in c.encode("utf-8"))


#: ``i`` and the combining dot above (U+0307, UTF-8 CC 87) after it, in a folded path.
_DOTTED_I: Final = re.compile(r"i(?:%CC%87)+")
#: An NTFS attribute type name after its ``$`` (case-folded): ``data``,
#: ``index_allocation``, ``index_root``, ``bitmap`` ... Any such name counts: one NTFS
#: does not know is an error there, so taking it for the segment only denies more.
_STREAM_TYPE: Final = re.compile(r"[a-z0-9_]+")


def _trim_segment(seg: str) -> str:
    """One (case-folded) segment without its trailing dots, spaces (``%20``) and NTFS
    stream suffixes naming an attribute of the segment itself, in any order: ``::$type``
    (the unnamed stream of any type: ``::$data`` the file, ``::$index_allocation`` the
    directory, ``::$index_root``, ``::$bitmap`` ... parts of it) and ``:name:$type`` of a
    type other than ``$data`` (``:$i30:$index_allocation`` the directory, ``:$i30:$bitmap``
    its index bitmap). ``:name`` and ``:name:$data`` stay: another, named, data stream
    (and an API's custom method, ``items:search``). Read from the end, each step removing
    one suffix: linear in the segment."""
    end = len(seg)
    while end:
        if seg.endswith(".", 0, end):
            end -= 1
        elif seg.endswith("%20", 0, end):
            end -= 3
        else:
            c = seg.rfind(":$", 0, end)
            if c < 1 or _STREAM_TYPE.fullmatch(seg, c + 2, end) is None:
                break
            if seg[c - 1] == ":":                       # ::$type
                end = c - 1
                continue
            n = seg.rfind(":", 0, c)                    # :name:$type
            if n < 0 or seg[c + 2:end] == "data":
                break
            end = n
    return seg[:end]


def _trim_segments(path: str) -> str:
    """``path`` with each segment's trailing dots and spaces removed, as Windows path
    normalisation (Win32 path APIs: IIS, any upstream serving through them) removes
    them: ``/admin. /x.`` -> ``/admin/x``; and an NTFS stream suffix that names an
    attribute of the segment itself removed with them, before or after them
    (:func:`_trim_segment`): ``/admin::$data.`` -> ``/admin``. ``path`` is case-folded
    already."""
    if ":$" in path or path.endswith((".", "%20")) or "./" in path or "%20/" in path:
        return "/".join([_trim_segment(seg) for seg in path.split("/")])
    return path


def fold_path(path: str) -> str:
    """A *normalised* path with letters case-folded by :func:`fold_case` (also inside
    percent-encoded UTF-8) and each segment's trailing dots and spaces (``%20``) removed:
    how a server that routes case-insensitively, or through Windows path normalisation,
    reads it. Deny routes match on this form, so ``/V1/Accounts`` cannot escape
    ``deny "/v1/accounts"``, nor ``/adm%C4%B1n`` (a dotless i, U+0131) or ``/admin.%20``
    ``deny "/admin"``. An ``i`` followed by U+0307 (combining dot above) folds to ``i``
    too: Unicode case folding reads U+0130 (I with dot above) as that pair. A segment's
    NTFS stream suffix that names an attribute of the segment itself (any case,
    ``%3A%3A%24DATA`` too once normalised) is removed with its trailing dots and
    spaces: on NTFS ``name::$DATA`` names the unnamed default data stream of ``name``,
    i.e. the file itself, ``dir::$INDEX_ALLOCATION`` or ``dir:$I30:$INDEX_ALLOCATION``
    the directory itself, and ``dir::$INDEX_ROOT``, ``dir:$I30:$BITMAP`` (any
    ``::$TYPE``, any ``:NAME:$TYPE`` but ``$DATA``) parts of it, so ``/admin::$DATA``
    and ``/admin::$INDEX_ROOT/x`` cannot escape ``deny "/admin/**"``. Other ``:``
    suffixes stay (``/v1/items:search`` is not ``/v1/items``, ``/a:s:$DATA`` is the data
    stream ``s``). Leading spaces stay too: no Windows normalisation removes them.

    >>> fold_path("/V1/Caf%C3%89/adm%C4%B1n.%20"), fold_path("/Admin::$DATA/x:Search")
    ('/v1/caf%C3%A9/admin', '/admin/x:search')
    >>> fold_path("/Admin::$Index_Root/Logs:$I30:$BITMAP/x:s:$DATA")
    '/admin/logs/x:s:$data'
    """
    try:  # (a try costs nothing until it catches: no check per call)
        if "%" not in path:
            return _trim_segments(path.lower())
    except (TypeError, AttributeError):
        raise _not_a_path(path) from None
    out: list[str] = []
    pos = 0
    for m in _ESCAPE_RUN.finditer(path):
        out.append(path[pos:m.start()].lower())
        text = bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "replace")
        out.append("".join(_encode_path_char(c) for c in fold_case(text)))
        pos = m.end()
    out.append(path[pos:].lower())
    folded = "".join(out)
    return _trim_segments(_DOTTED_I.sub("i", folded) if "i%CC%87" in folded else folded)


def split_path(path: str) -> tuple[str, ...]:
    """Segments of a *normalised* path: ``/`` -> ``()``, ``/a/`` -> ``("a", "")``."""
    try:
        return () if path == "/" else tuple(path[1:].split("/"))
    except (TypeError, AttributeError):
        raise _not_a_path(path) from None


# ----------------------------------------------------------------- 8.3 short names

#: A (percent-decoded) segment that may be an NTFS 8.3 short name: a base of 1-8
#: characters, an optional extension of 1-3, and ``~`` then a digit in it (``admini~1``,
#: ``gi7eba~1.con``, ``ab~12345``, ``x~1y``).
_SHORT_NAME: Final = re.compile(r"(?=.*~[0-9])[^.]{1,8}(?:\.[^.]{1,3})?")


def is_short_name(segment: str) -> bool:
    """Whether the (normalised) path ``segment`` may be an NTFS 8.3 short name, which a
    Windows upstream with short names enabled opens as the long name it was given: an
    8.3-sized name (a base of 1-8 characters, an optional extension of 1-3, once
    percent-decoded) with ``~`` and a digit in it. Which long name that is cannot be
    told from the path: the number depends on what else the directory holds, the hashed
    form (``GI7EBA~1`` for ``.gitmodules``) on a hash, the characters on the volume's
    code page, and a short name set by hand (``SetFileShortNameW``) may be anything. So
    deny routes take such a segment for any literal segment at its position (fail
    closed); other segments with ``~`` are ordinary names.

    >>> is_short_name("ADMINI~1"), is_short_name("~user"), is_short_name("ADMINIS~1")
    (True, False, False)
    """
    if "%" in segment:
        segment = unquote(segment)
    return _SHORT_NAME.fullmatch(segment) is not None


def short_name_form(path: str) -> str:
    """A *normalised* ``path`` as :func:`is_short_name` reads it besides
    :func:`fold_path`: lower-cased (ASCII letters; other letters are lower-cased once
    decoded) with each segment's trailing dots, spaces and stream suffixes removed, but
    not case-folded, so a short name holding a letter that folding lengthens (``ß``)
    keeps its length."""
    return _trim_segments(path.lower())


def _not_a_path(path: object) -> ToolRequestError:
    return ToolRequestError("invalid_path", f"a path is a string, not {type(path).__name__}")


# --------------------------------------------------------------------------- patterns

SCHEMES: Final = ("https", "http")


def normalize_scheme(scheme: str | None) -> str:
    """``https`` (also for None: callers that do not say) or ``http``, lower-cased;
    anything else is ``invalid_scheme``."""
    if scheme is None:
        return "https"
    if isinstance(scheme, str):
        lowered = scheme.lower()
        if lowered in SCHEMES:
            return lowered
    raise ToolRequestError("invalid_scheme", f"scheme {scheme!r}: only https and http")


def host_without_port(host: str) -> str:
    """The name part of a *normalised* host (``[::1]:8443`` -> ``[::1]``)."""
    if host.startswith("["):
        return host[:host.index("]") + 1]
    return host.partition(":")[0]


class HostPattern:
    """``api.stripe.com`` (exact) or ``*.example.com`` (one or more labels under it, not
    ``example.com`` itself); an optional ``:port`` must then match exactly. A pattern
    matches HTTPS calls only, unless it starts with ``http://``: then plain-HTTP calls
    only (``https://`` is not written: it is the default).

    >>> HostPattern.compile("*.example.com").matches("a.b.example.com")
    True
    >>> HostPattern.compile("*.example.com").matches("example.com")
    False
    """

    __slots__ = ("_exact", "_suffix", "has_port", "scheme", "text")

    def __init__(self, text: str, exact: str | None, suffix: str | None,
                 scheme: str = "https") -> None:
        self.text = text
        self._exact = exact
        self._suffix = suffix
        self.scheme = scheme
        canon = exact if exact is not None else (suffix or "")
        #: Whether the pattern names a port (a deny without one covers every port).
        self.has_port = ":" in canon.rpartition("]")[2]

    @classmethod
    def compile(cls, text: str) -> HostPattern:
        if not isinstance(text, str):
            raise ToolPatternError(f"host pattern {text!r} must be a string")
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() == "http":
            scheme = "http"
        elif sep:  # https is the default and is not written; no other scheme is known
            raise ToolPatternError(f"host pattern {text!r} is a URL: write the host "
                                   "without the scheme (plain HTTP: 'http://host')")
        else:
            scheme, rest = "https", text
        if rest.startswith("*."):
            base = rest[2:]
            if "*" in base:
                raise ToolPatternError(f"host pattern {text!r}: '*' only as the first label")
            try:
                canon = normalize_host(base)
            except ToolRequestError as exc:
                raise ToolPatternError(f"host pattern {text!r}: {exc.message}") from None
            name = canon.rsplit(":", 1)[0] if not canon.startswith("[") else canon
            if canon.startswith("[") or "." not in name or name.replace(".", "").isdigit():
                raise ToolPatternError(f"host pattern {text!r}: a wildcard needs a domain of "
                                       "two labels or more (not an IP, not '*.com')")
            return cls(text, None, "." + canon, scheme)
        if "*" in rest:
            raise ToolPatternError(f"host pattern {text!r}: '*' only as a whole first label")
        try:
            return cls(text, normalize_host(rest), None, scheme)
        except ToolRequestError as exc:
            raise ToolPatternError(f"host pattern {text!r}: {exc.message}") from None

    @property
    def is_wildcard(self) -> bool:
        return self._suffix is not None

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised (:func:`normalize_host`). The scheme is
        the caller's to compare (:attr:`scheme`)."""
        if self._exact is not None:
            return host == self._exact
        suffix = self._suffix
        assert suffix is not None
        return len(host) > len(suffix) and host.endswith(suffix)

    def covers(self, host: str) -> bool:
        """Deny-list matching: like :meth:`matches`, but a pattern without a port covers
        the host on every port (and the caller ignores the scheme)."""
        return self.matches(host if self.has_port else host_without_port(host))

    def __repr__(self) -> str:
        return f"HostPattern({self.text!r})"


_PARAM_RE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ONE, _ANY, _PARAM = "*", "**", "{}"


class RoutePattern:
    """``/v1/refunds/{id}/**``: ``*`` one segment, ``**`` any number of segments
    (including none, at most one ``**`` per pattern), ``{name}`` one segment captured;
    other segments are literal (case-sensitive, compared after :func:`normalize_path`).
    ``*`` and ``{name}`` never match an empty segment (a trailing ``/``); ``**`` does.

    >>> RoutePattern.compile("/v1/refunds/{id}").match("/v1/refunds/re_1")
    {'id': 're_1'}
    """

    __slots__ = ("_has_any", "_head", "_names", "_short", "_tail", "specificity", "text")

    def __init__(self, text: str, segments: list[tuple[str, str]],
                 short: bool = False) -> None:
        self.text = text
        any_at = next((k for k, (kind, _) in enumerate(segments) if kind == _ANY), None)
        self._has_any = any_at is not None
        if any_at is None:
            self._head = tuple(segments)
            self._tail: tuple[tuple[str, str], ...] = ()
        else:
            self._head = tuple(segments[:any_at])
            self._tail = tuple(segments[any_at + 1:])
        #: Deny routes only: :meth:`covers_short_name` takes a short name for a literal.
        self._short = short
        self._names = tuple(v for k, v in segments if k == _PARAM)
        literal = sum(1 for k, _ in segments if k == "lit")
        single = sum(1 for k, _ in segments if k in (_ONE, _PARAM))
        #: Higher is more specific: (literal segments, ``*``/``{}`` segments, no ``**``).
        #: Use it to pick among several *allow* routes; deny routes should win whenever
        #: any of them matches.
        self.specificity: tuple[int, int, int] = (literal, single, 0 if self._has_any else 1)

    @classmethod
    def compile(cls, text: str, *, fold: bool = False) -> RoutePattern:
        """``fold=True`` folds literal segments like :func:`fold_path` (for deny routes,
        matched against folded request paths)."""
        if not isinstance(text, str) or not text.startswith("/"):
            raise ToolPatternError(f"route {text!r} must start with '/'")
        raw = () if text == "/" else tuple(text[1:].split("/"))
        segments: list[tuple[str, str]] = []
        names: set[str] = set()
        for k, seg in enumerate(raw):
            if seg == "**":
                if any(kind == _ANY for kind, _ in segments):
                    raise ToolPatternError(f"route {text!r}: at most one '**'")
                segments.append((_ANY, ""))
            elif seg == "*":
                segments.append((_ONE, ""))
            elif (m := _PARAM_RE.fullmatch(seg)) is not None:
                if m.group(1) in names:
                    raise ToolPatternError(f"route {text!r}: parameter {m.group(1)!r} twice")
                names.add(m.group(1))
                segments.append((_PARAM, m.group(1)))
            elif "*" in seg or "{" in seg or "}" in seg:
                raise ToolPatternError(f"route {text!r}: '*', '**' and '{{name}}' must be "
                                       "whole segments")
            else:
                if not seg and k != len(raw) - 1:
                    raise ToolPatternError(f"route {text!r}: empty segment")
                try:
                    canon = normalize_path("/" + seg)[1:]
                except ToolRequestError as exc:
                    raise ToolPatternError(f"route {text!r}: {exc.message}") from None
                if "?" in seg:
                    raise ToolPatternError(f"route {text!r}: no query in a route")
                segments.append(("lit", fold_path(canon) if fold else canon))
        return cls(text, segments, fold)

    @staticmethod
    def _match_fixed(pattern: tuple[tuple[str, str], ...], segs: tuple[str, ...],
                     out: dict[str, str]) -> bool:
        for (kind, value), seg in zip(pattern, segs, strict=True):
            if kind == "lit":
                if seg != value:
                    return False
            elif not seg:
                return False  # ``*`` / ``{name}`` need a non-empty segment
            elif kind == _PARAM:
                out[value] = seg
        return True

    def match(self, path: str) -> dict[str, str] | None:
        """Captured parameters if the *normalised* ``path`` matches, else None.

        Captured values are normalised segments (still percent-encoded, except
        unreserved characters).
        """
        segs = split_path(path)
        head, tail = self._head, self._tail
        if self._has_any:
            if len(segs) < len(head) + len(tail):
                return None
        elif len(segs) != len(head):
            return None
        out: dict[str, str] = {}
        if not self._match_fixed(head, segs[:len(head)], out):
            return None
        if tail and not self._match_fixed(tail, segs[len(segs) - len(tail):], out):
            return None
        return out

    @staticmethod
    def _short_fixed(pattern: tuple[tuple[str, str], ...], segs: tuple[str, ...]) -> bool:
        for (kind, value), seg in zip(pattern, segs, strict=True):
            if kind == "lit":
                if seg != value and not ("~" in seg and is_short_name(seg)):
                    return False
            elif not seg:
                return False
        return True

    def covers_short_name(self, path: str) -> bool:
        """Deny matching of a *folded* ``path`` with a ``~`` in it: like :meth:`match`,
        but a literal segment also matches a path segment that may be an NTFS 8.3 short
        name (:func:`is_short_name`), since a Windows upstream with short names enabled
        opens a long name for it (``/ADMINI~1`` is ``/administrator`` there) and which
        one cannot be told (fail closed). Only for patterns compiled with ``fold=True``
        (False for others); allow routes never match this way."""
        if not self._short:
            return False
        segs = split_path(path)
        head, tail = self._head, self._tail
        if self._has_any:
            if len(segs) < len(head) + len(tail):
                return False
        elif len(segs) != len(head):
            return False
        if not self._short_fixed(head, segs[:len(head)]):
            return False
        return not tail or self._short_fixed(tail, segs[len(segs) - len(tail):])

    def __repr__(self) -> str:
        return f"RoutePattern({self.text!r})"


class NamePattern:
    """A glob for MCP tool / function names: ``*`` any run, ``?`` one character; every
    other character literal (``[`` too); case-sensitive. Linear-time matching, no regex.

    >>> NamePattern.compile("github.*").matches("github.create_issue")
    True
    """

    __slots__ = ("_kind", "_prefix", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ToolPatternError(f"a name pattern is a string, not {type(text).__name__}")
        self.text = text
        if "*" not in text and "?" not in text:
            self._kind = "exact"
        elif "?" not in text and text.count("*") == 1 and text.endswith("*"):
            self._kind = "prefix"
        else:
            self._kind = "glob"
        self._prefix = text[:-1] if self._kind == "prefix" else text

    @classmethod
    def compile(cls, glob: str) -> NamePattern:
        if not isinstance(glob, str) or not glob or len(glob) > 256:
            raise ToolPatternError(f"name pattern {glob!r} must be 1-256 characters")
        return cls(glob)

    def matches(self, name: str) -> bool:
        if not isinstance(name, str):
            return False
        if self._kind == "exact":
            return name == self.text
        if self._kind == "prefix":
            return name.startswith(self._prefix)
        # Greedy two-pointer glob with backtracking to the last '*': O(len(p) * len(n)).
        p, s = self.text, name
        pi = si = 0
        star = -1
        mark = 0
        while si < len(s):
            if pi < len(p) and (p[pi] == "?" or (p[pi] != "*" and p[pi] == s[si])):
                pi += 1
                si += 1
            elif pi < len(p) and p[pi] == "*":
                star = pi
                mark = si
                pi += 1
            elif star >= 0:
                pi = star + 1
                mark += 1
                si = mark
            else:
                return False
        while pi < len(p) and p[pi] == "*":
            pi += 1
        return pi == len(p)

    def __repr__(self) -> str:
        return f"NamePattern({self.text!r})"
