"""The :class:`Engine`: what users keep. It loads policy text, holds the compiled policy,
and answers ``authorize``, ``explain``, ``tool_authorize`` and budget questions.

An engine is safe to share between threads. Its compiled policy is immutable; ``reload()``
builds a new one from the same sources and swaps a single reference, so a request sees
either the old policy or the new one, never a mix.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyengine.decide._approvals import (
    ApprovalStore,
    MemoryApprovalStore,
    as_approval_store,
)
from policyengine.decide._compiled import CompileCache, CompiledPolicy, compile_policy
from policyengine.decide._evaluator import Explanation
from policyengine.decide._pipeline import Pipeline, Trace
from policyengine.decision import (
    ApprovalRequired,
    Decision,
    NotAuthorized,
    ToolDecision,
    frozen,
)
from policyengine.errors import PolicyEngineError
from policyengine.lang import ast
from policyengine.lang._checker import CheckCache, check
from policyengine.lang._parser import ParseCache, parse_many
from policyengine.lang._source import PolicyError, Problem, SourceSet
from policyengine.permissions import MAX_PRINCIPAL_ID

if TYPE_CHECKING:
    from policyengine.audit import DecisionLog
    from policyengine.budgets import Ledger
    from policyengine.decide._query import FilteredTools, Permissions, Principals

perf_counter_ns = time.perf_counter_ns

__all__ = ["Engine", "EngineOptionError", "QueryError", "load_policy"]

PolicyFiles = list[tuple[str, "str | bytes"]]
#: Statements ``_config_warnings`` looks into (those that may redact with ``hash``).
_REDACTING = frozenset({ast.HttpTool, ast.NamedTool, ast.LogRedact})
#: ``tools._egress.tool_authorize``, imported on the first tool call.
_tool_authorize: Callable[..., ToolDecision] | None = None


# How to give an engine its HMAC key, from Python or from the command line (W204, W205).
_HMAC_HINT = ("Engine.from_path(..., hmac_key=secret_bytes); on the command line, "
              "--hmac-key KEY (serve: --hmac-key-file FILE)")

class EngineOptionError(PolicyEngineError, TypeError):
    """An :class:`Engine` option of the wrong kind (``keys`` that is not a ``KeySet``, a
    ``clock`` that is not a callable returning seconds, ...), code ``invalid_option``.

    Raised when the engine is built (or the option replaced), never on a request: the
    decision path reads these options on every request and does not check them again,
    so an option it could not use would fail every request instead of denying one.
    """

    def __init__(self, message: str) -> None:
        super().__init__("invalid_option", message)


def _checked_keys(keys: Any) -> Any:
    """``keys`` if it is None or a ``KeySet`` (the verifier reads its private cache)."""
    if keys is None:
        return None
    from policyengine.tokens import KeySet
    if not isinstance(keys, KeySet):
        raise EngineOptionError(f"keys must be a policyengine.tokens.KeySet or None, not "
                                f"{type(keys).__name__}")
    return keys


def _checked_revocations(revocations: Any) -> Any:
    """``revocations`` if it has the ``RevocationStore`` methods every token check calls."""
    from policyengine.tokens import RevocationStore
    if not isinstance(revocations, RevocationStore):
        raise EngineOptionError("revocations must be a RevocationStore (revoke, is_revoked, "
                                f"any_revoked) or its URL, not {type(revocations).__name__}")
    return revocations


def _checked_budget_store(store: Any) -> Any:
    """``store`` opened if it is a URL, as it is if it is None or has the ``BudgetStore``
    methods a ledger calls: anything else would deny every budgeted request
    ``budget_unavailable``. The check is the budgets' own (``as_budget_store``, also
    the ``Ledger``'s); only the code is the engine's."""
    from policyengine.budgets.urls import as_budget_store
    return as_budget_store(store, "budget_store", refuse=EngineOptionError)


def _opened_approvals(approvals: Any) -> Any:
    """``approvals`` opened if it is a URL (``memory:``, ``postgresql://``, ``redis://``),
    then checked (:func:`_checked_approvals`): at construction and on replacement alike."""
    if isinstance(approvals, str):
        from policyengine.decide import approvals_from_url
        approvals = approvals_from_url(approvals)
    return _checked_approvals(approvals)


def _checked_approvals(approvals: Any) -> Any:
    """``approvals`` if it keeps the ``ApprovalStore`` protocol (else each approval rule
    would deny ``approval_store_error`` on every request). The check is the protocol's
    own (``as_approval_store``); only the code is the engine's."""
    return as_approval_store(approvals, "approvals", refuse=EngineOptionError)


def _checked_rates(rates: Any) -> Any:
    """``rates`` if it is None or a ``RateSource`` (has ``rate``): anything else would
    deny every converted request ``no_rate``."""
    if rates is None:
        return None
    from policyengine.money import RateSource
    if not isinstance(rates, RateSource):
        raise EngineOptionError(f"rates must be a RateSource (rate(from, to, now)), not "
                                f"{type(rates).__name__}")
    return rates


def _checked_hmac_key(key: Any) -> bytes | None:
    """``key`` if it is None or bytes of at least 16 (``check_hmac_key``): with a short
    key every ``hash`` redaction would fail and its tool calls be denied."""
    if key is None:
        return None
    from policyengine.tools import check_hmac_key
    return check_hmac_key(key)  # RedactionError invalid_hash_key


def _checked_clock(clock: Any) -> Callable[[], float] | None:
    """``clock`` if it is None or a callable returning POSIX seconds as an int or float
    (asked once here; every time-dependent answer reads it)."""
    if clock is None:
        return None
    if not callable(clock):
        raise EngineOptionError(f"clock must be a callable returning POSIX seconds, not "
                                f"{type(clock).__name__}")
    now = clock()
    if type(now) is bool or not isinstance(now, (int, float)):
        raise EngineOptionError(f"clock() must return POSIX seconds as an int or float, "
                                f"not {type(now).__name__}")
    return clock  # type: ignore[no-any-return]


def _checked_path(path: Any) -> str:
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        if isinstance(name, str):
            return name
    raise EngineOptionError(f"a policy path must be a str or os.PathLike, not "
                            f"{type(path).__name__}")


def _checked_files(files: Any) -> PolicyFiles:
    """``files`` if it is a list of ``(name, text)`` pairs with string names (the text is
    the parser's to judge)."""
    if not isinstance(files, list) or not all(
            isinstance(f, tuple) and len(f) == 2 and isinstance(f[0], str) for f in files):
        raise EngineOptionError("policy files are (name, text) pairs with a string name; "
                                f"got {_shape(files)}")
    return files


def _shape(files: Any) -> str:
    if not isinstance(files, list):
        return type(files).__name__
    bad = next(f for f in files if not (isinstance(f, tuple) and len(f) == 2
                                        and isinstance(f[0], str)))
    if isinstance(bad, tuple) and len(bad) == 2:
        return f"a name of type {type(bad[0]).__name__}"
    return f"an item of type {type(bad).__name__}"


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    for name in options:
        if name not in _OPTIONS:
            import difflib
            close = difflib.get_close_matches(name, _OPTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise EngineOptionError(f"unknown option {name[:100]!r}{hint}; the options are "
                                    f"{', '.join(_OPTIONS)}")
    return options


class QueryError(PolicyEngineError, TypeError, ValueError):
    """A reverse query (``permissions_of``, ``principals_with``, ``filter_tools``) given
    an argument it cannot take: ``invalid_principal`` (a principal id or role name that
    is not a string of 1 to 256 characters) or ``invalid_argument`` (a bad ``limit``,
    ``transport`` or ``tools``; both or neither of a principal and ``role=``). Also a
    ``TypeError`` and a ``ValueError``, which these calls raised before."""




def _query_name(value: object, what: str) -> str:
    if type(value) is not str or not 1 <= len(value) <= MAX_PRINCIPAL_ID:
        shown = (f"{type(value).__name__}" if type(value) is not str
                 else "an empty string" if not value else f"{len(value)} characters")
        raise QueryError("invalid_principal", f"{what} must be a string of 1 to "
                         f"{MAX_PRINCIPAL_ID} characters, not {shown}")
    return value


def _query_limit(limit: object) -> None:
    if limit is not None and (type(limit) is not int or limit < 0):
        raise QueryError("invalid_argument",
                         f"limit must be a whole number >= 0 or None, not {limit!r}")


def read_paths(paths: Iterable[str | os.PathLike[str]]) -> PolicyFiles:
    """The bytes of every ``.policy`` file the paths name. A path that does not exist,
    a directory without a policy file and a file the operating system will not read are
    ``PolicyError`` E010 at no position (line and column 0: the path is no place in a
    policy)."""
    files: PolicyFiles = []
    for raw in paths:
        p = Path(raw)
        where = p
        try:
            if p.is_dir():
                found = sorted(x for x in p.rglob("*.policy") if x.is_file())
                if not found:
                    raise PolicyError([Problem("E010", f"no .policy files in {p}", str(p),
                                               0, 0)])
                for x in found:
                    where = x
                    files.append((str(x), x.read_bytes()))
            elif p.is_file():
                files.append((str(p), p.read_bytes()))
            else:
                raise PolicyError([Problem("E010", f"no such policy file or directory: {p}",
                                           str(p), 0, 0)])
        except OSError as exc:
            raise PolicyError([Problem("E010", f"cannot read {where}: "
                                       f"{exc.strerror or exc}", str(where), 0, 0)]) from None
    return files


def build_rates(files: list[ast.PolicyFile], base_dirs: Mapping[str, str]) -> dict[str, Any]:
    """One :class:`~policyengine.money.RateSource` per file with a base currency, from its
    ``rate`` statements and its optional ``rates "file.json" [max_age D]`` table."""
    from policyengine.money._rates import JsonFileRates, RateError, StaticRates

    out: dict[str, Any] = {}
    for f in files:
        if ast.CurrencyDecl not in f.kinds:
            continue
        base = next(st.code for st in f.statements if isinstance(st, ast.CurrencyDecl))
        inline = {st.code: st.value for st in f.statements if isinstance(st, ast.RateDecl)}
        table = next((st for st in f.statements if isinstance(st, ast.RatesDecl)), None)
        if table is None:
            out[f.name] = StaticRates(base, inline)
            continue
        path = Path(table.path)
        if not path.is_absolute():
            path = Path(base_dirs.get(f.name, ".")) / path
        where = (f.name, table.span.line, table.span.column)
        try:
            loaded = JsonFileRates(path, max_age=table.max_age)
        except RateError as exc:
            raise PolicyError([Problem("E127", f"cannot load rates: {exc}", *where)]) from None
        if loaded.base != base:
            raise PolicyError([Problem("E127", f"rates file is in {loaded.base} but the "
                                       f"file's base currency is {base}", *where)])
        merged = {c: loaded.rate(c, base, loaded.as_of) for c in loaded.codes if c != base}
        for code, value in inline.items():
            if code in merged and merged[code] != value:
                raise PolicyError([Problem("E132", f"rate for {code} differs from the rates "
                                           "file", *where)])
            merged[code] = value
        out[f.name] = StaticRates(base, merged, as_of=loaded.as_of, max_age=table.max_age)
    return out


def revision_of(files: PolicyFiles) -> str:
    """``sha256:`` and 16 hex digits of the policy files' names and bytes, in load order
    (the same value the decision service reports for the same paths)."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        h.update(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()[:16]


class LoadCache:
    """What ``reload`` can reuse from the previous load: the parse of every file whose
    bytes did not change, its own checks and its compiled rules (the checks across files
    always run again, over every file). One per engine."""

    def __init__(self) -> None:
        self.parsed = ParseCache()
        self.checked = CheckCache()
        self.compiled = CompileCache()
        self.lock = threading.Lock()


def load_policy(files: PolicyFiles, *, rates: Mapping[str, Any] | None = None,
                base_dirs: Mapping[str, str] | None = None, cache: LoadCache | None = None
                ) -> tuple[CompiledPolicy, tuple[Problem, ...]]:
    """Parse, check and compile ``files``. Raises :class:`PolicyError` on any error.

    Returns the compiled policy and the warnings. ``cache`` (see :class:`LoadCache`)
    makes a second load of mostly unchanged files cheap.
    """
    if cache is not None:
        with cache.lock:
            return _load_policy_paused(files, rates, base_dirs, cache)
    return _load_policy_paused(files, rates, base_dirs, None)


def _load_policy_paused(files: PolicyFiles, rates: Mapping[str, Any] | None,
                        base_dirs: Mapping[str, str] | None, cache: LoadCache | None
                        ) -> tuple[CompiledPolicy, tuple[Problem, ...]]:
    # Building tens of thousands of AST nodes triggers the cyclic garbage collector over
    # and over (it sees only new objects, none of them garbage); pausing it while the
    # policy is built cuts compile time of large sets by about 40%. Reference counting
    # still frees everything as usual.
    #
    # The policy is long-lived. Left in the young generations, its objects would be
    # scanned by the next young collections (the first reload after a load of 10,000
    # rules spent three quarters of its time there); freeze() + unfreeze() moves every
    # live object to the oldest generation in one step instead, where a full collection
    # still examines it as usual. Skipped when the program froze objects itself
    # (unfreeze would undo that).
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load_policy(files, rates, base_dirs, cache)
    finally:
        if paused:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _load_policy(files: PolicyFiles, rates: Mapping[str, Any] | None,
                 base_dirs: Mapping[str, str] | None, cache: LoadCache | None
                 ) -> tuple[CompiledPolicy, tuple[Problem, ...]]:
    sources = SourceSet()
    parsed, problems = parse_many(files, sources, cache.parsed if cache is not None else None)
    # A syntax error does not hide the other statements' problems.
    problems.extend(check(parsed, sources, partial=bool(problems),
                          cache=cache.checked if cache is not None else None))
    problems.sort(key=lambda p: (p.file, p.line, p.column))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise PolicyError(problems)
    if rates is None:
        rates = build_rates(parsed, base_dirs or {})
    policy = compile_policy(parsed, rates=rates,
                            cache=cache.compiled if cache is not None else None)
    return policy, tuple(problems)


class Engine:
    """A compiled policy set and the services around it.

    >>> engine = Engine.from_source('role r: docs:*\\nagent "bot": r')
    >>> engine.authorize("bot", "docs:read").allowed
    True

    Build one with :meth:`from_path`, :meth:`from_source` or :meth:`from_sources`; every
    keyword option below is accepted by all three (docs/engine.md has examples):

    * ``budget_store``: where budget spend is recorded: a ``BudgetStore`` or a URL
      (``memory:``, ``sqlite:///path``, ``postgresql://...``, ``redis://...``). Default:
      a fresh ``MemoryStore``. Kept across :meth:`reload`.
    * ``clock``: a callable returning POSIX seconds, used for every time-dependent
      answer (windows, token expiry, approval expiry, stale rates). Default: the real
      clock.
    * ``rates``: one ``RateSource`` used by every file instead of the files' own
      ``rate`` / ``rates`` statements. Default: each file's own rates.
    * ``approvals``: the ``ApprovalStore`` (or a URL) of pending approvals. Default: a
      ``MemoryApprovalStore`` on ``clock``. Share one store between engines and workers
      so an approval granted through one is usable through another.
    * ``keys``: the ``KeySet`` that verifies delegation tokens (``token=``). Without it
      every token is ``invalid_token`` (``no_keys``).
    * ``revocations``: the ``RevocationStore`` (or a URL) consulted for every hop of every
      token. Default: an empty ``MemoryRevocationStore``.
    * ``hmac_key``: the secret (bytes, at least 16) for ``hash`` redactions. Without it
      calls through a tool with a ``hash`` redaction are denied (warning W204 at load).
      Checked here, once (``RedactionError``, ``invalid_hash_key``): no tool call checks
      it again, and ``engine.hmac_key`` is read-only.
    * ``base_dir``: where relative paths in policy text (``rates "fx.json"``) resolve
      for sources held in memory. Default: each file's own directory.
    * ``decision_log``: a :class:`~policyengine.audit.DecisionLog` (or a sink URL for
      one) that records every decision and operation (docs/decision-log.md). Default:
      none. :meth:`close` flushes and closes it.

    ``keys``, ``clock``, ``revocations``, ``budget_store``, ``approvals``, ``rates`` and
    ``decision_log`` of the wrong kind raise :class:`EngineOptionError`
    (``invalid_option``) here, not on every request; so do ``keys``, ``revocations`` and
    ``approvals`` of the wrong kind assigned later (``engine.approvals = store``).
    """

    def __init__(self, files: PolicyFiles, *, paths: tuple[str, ...] = (),
                 rates: Any = None, clock: Callable[[], float] | None = None,
                 approvals: ApprovalStore | str | None = None, keys: Any = None,
                 revocations: Any = None, budget_store: Any = None,
                 hmac_key: bytes | None = None, base_dir: str | None = None,
                 decision_log: Any = None) -> None:
        self._paths = paths
        self._files = _checked_files(files)
        self._base_dir = base_dir
        self._rates_override = _checked_rates(rates)
        self._clock = clock = _checked_clock(clock)
        self._approvals: ApprovalStore = _opened_approvals(
            approvals if approvals is not None else MemoryApprovalStore(clock or time.time))
        self._keys = _checked_keys(keys)
        if revocations is None:
            from policyengine.tokens import MemoryRevocationStore
            revocations = MemoryRevocationStore()
        elif isinstance(revocations, str):  # a URL: memory:, postgresql://, redis://
            from policyengine.tokens import revocations_from_url
            revocations = revocations_from_url(revocations)
        self._revocations = _checked_revocations(revocations)
        self._verify_options: tuple[Any, ...] | None = None
        self._hmac_key = _checked_hmac_key(hmac_key)
        # a URL (memory:, sqlite:///, postgresql://, redis://) is opened here
        self._budget_store = _checked_budget_store(budget_store)
        self._load_cache = LoadCache()  # what reload() can reuse
        self.decision_log: DecisionLog | None = None
        self._log_view: Any = None
        if decision_log is not None:
            self._attach_log(decision_log)
        self._policy, self.warnings = self._build(files)
        self.warnings += self._config_warnings()
        self.revision = revision_of(files)
        self._set_log_view()
        self.budgets = self._ledger(self._policy)
        self._pipeline = self._new_pipeline(self._policy, self.budgets,
                                            self._limiter(self._policy))

    def _new_pipeline(self, policy: CompiledPolicy, ledger: Any, limiter: Any) -> Pipeline:
        return Pipeline(policy, ledger, self._approvals, self._verify, self._clock, limiter,
                        self._revocations, self.decision_log, self._hmac_key)

    def _renew_pipeline(self) -> None:
        """The same policy, ledger and rate limits in a new pipeline: nothing it kept
        (verified grants) outlives the keys or revocation store they were verified with."""
        if hasattr(self, "_pipeline"):
            self._pipeline = self._new_pipeline(self._policy, self.budgets,
                                                self._pipeline.limiter)

    @property
    def hmac_key(self) -> bytes | None:
        """The secret of ``hash`` redactions (None without one): checked when the engine
        was built, and read-only (tool calls do not check it again)."""
        return self._hmac_key

    @property
    def keys(self) -> Any:
        """The :class:`~policyengine.tokens.KeySet` delegation tokens are verified with
        (None: tokens are refused). Replacing it takes effect on the next request."""
        return self._keys

    @keys.setter
    def keys(self, keys: Any) -> None:
        self._keys = _checked_keys(keys)
        self._renew_pipeline()

    @property
    def revocations(self) -> Any:
        """The :class:`~policyengine.tokens.RevocationStore` every token check asks.
        Replacing it takes effect on the next request."""
        return self._revocations

    @revocations.setter
    def revocations(self, revocations: Any) -> None:
        self._revocations = _checked_revocations(revocations)
        self._renew_pipeline()

    @property
    def approvals(self) -> ApprovalStore:
        """The :class:`~policyengine.ApprovalStore` of pending approvals (with a decision
        log, wrapped so that each operation is recorded). Replacing it (a store or its
        URL) is checked as at construction and takes effect on the next request; with a
        decision log the new store is recorded as the old one was."""
        return self._approvals

    @approvals.setter
    def approvals(self, approvals: ApprovalStore | str) -> None:
        if approvals is self._approvals:  # already this engine's (wrapped when logged)
            return
        store = _opened_approvals(approvals)
        if self.decision_log is not None:
            from policyengine.audit._ops import LoggedApprovals
            store = LoggedApprovals(store, self.decision_log, self._current_view)
        self._approvals = store
        self._renew_pipeline()

    def _attach_log(self, decision_log: Any) -> None:
        from policyengine.audit import DecisionLog
        from policyengine.audit._ops import LoggedApprovals
        if isinstance(decision_log, str):  # a sink URL: file path, stdout:, http(s)://
            decision_log = DecisionLog(decision_log)
        if not isinstance(decision_log, DecisionLog):
            raise EngineOptionError("decision_log must be a DecisionLog or a sink URL, not "
                                    f"{type(decision_log).__name__}")
        if decision_log.keys is None:  # checkpoints are signed with the engine's keys
            decision_log.keys = self.keys
        self.decision_log = decision_log
        self._approvals = LoggedApprovals(self._approvals, decision_log, self._current_view)

    def _current_view(self) -> Any:
        return self._log_view

    def _set_log_view(self) -> None:
        if self.decision_log is not None:
            from policyengine.audit import LogView
            self._log_view = LogView(self.revision, self._policy.log_redactions,
                                     self.hmac_key)
            self.decision_log.view = self._log_view

    # ---- construction ----
    @classmethod
    def from_path(cls, *paths: str | os.PathLike[str], **options: Any) -> Engine:
        """Load every ``.policy`` file under the given files and directories.

        No path, a path that is not a ``str`` or ``os.PathLike``, or an unknown option
        raises :class:`EngineOptionError`; a path that holds no policy or cannot be
        read, ``PolicyError`` (E010).
        """
        if not paths:
            raise EngineOptionError("from_path() needs at least one path")
        names = tuple(_checked_path(p) for p in paths)
        return cls(read_paths(names), paths=names, **_checked_options(options))

    @classmethod
    def from_source(cls, text: str | bytes, name: str = "inline.policy", **options: Any
                    ) -> Engine:
        """Compile policy text held in memory (``name`` is the file name problems and
        decisions show)."""
        if not isinstance(name, str):
            raise EngineOptionError(f"name must be a string, not {type(name).__name__}")
        return cls([(name, text)], **_checked_options(options))  # __init__ checks files

    @classmethod
    def from_sources(cls, sources: Mapping[str, str | bytes], **options: Any) -> Engine:
        """Compile several named texts as one policy set."""
        if not isinstance(sources, Mapping):
            raise EngineOptionError("sources must be a mapping of file name -> policy text, "
                                    f"not {type(sources).__name__}")
        return cls(list(sources.items()), **_checked_options(options))  # __init__ checks files

    def _build(self, files: PolicyFiles) -> tuple[CompiledPolicy, tuple[Problem, ...]]:
        # Relative paths in a file (``rates "fx.json"``) resolve against base_dir when
        # given (sources held in memory), else against the file's own directory.
        base_dirs = {name: self._base_dir or str(Path(name).parent) for name, _ in files}
        rates = None
        if self._rates_override is not None:  # one user-supplied RateSource for every file
            rates = {name: self._rates_override for name, _ in files}
        return load_policy(files, rates=rates, base_dirs=base_dirs, cache=self._load_cache)

    def _ledger(self, policy: CompiledPolicy) -> Ledger:
        from policyengine.budgets import Ledger, MemoryStore
        if self._budget_store is None:
            self._budget_store = MemoryStore()
        if self.decision_log is not None:
            from policyengine.audit._ops import LoggedLedger
            return LoggedLedger(policy.budgets, self._budget_store, clock=self._clock,
                                budget_rates=policy.budget_rates, log=self.decision_log,
                                view=self._current_view, prices=policy.prices,
                                shadow=policy.shadow_budgets,
                                default_currency=policy.default_currency)
        return Ledger(policy.budgets, self._budget_store, clock=self._clock,
                      budget_rates=policy.budget_rates, prices=policy.prices,
                      shadow=policy.shadow_budgets, default_currency=policy.default_currency)

    def _limiter(self, policy: CompiledPolicy) -> Any:
        """The policy's rate limits over the budget store (its state, like spend,
        survives a reload), or None without any."""
        if not policy.rate_limits:
            return None
        from policyengine.budgets.ratelimit import RateLimiter
        return RateLimiter(policy.rate_limits, self._budget_store, clock=self._clock)

    def _config_warnings(self) -> tuple[Problem, ...]:
        out = []
        if self.hmac_key is None:
            for f in self._policy.files:
                if f.kinds.isdisjoint(_REDACTING):
                    continue
                for st in f.statements:
                    if isinstance(st, ast.LogRedact) and st.strategy == "hash":
                        out.append(Problem(
                            "W205", "'log redact ... hash' needs an HMAC key: until the "
                            "engine has one, the decision log erases the whole input",
                            f.name, st.span.line, st.span.column,
                            _HMAC_HINT, "warning"))
                    for item in getattr(st, "items", ()):
                        if isinstance(item, ast.Redact) and item.strategy == "hash":
                            out.append(Problem(
                                "W204", "'hash' redaction needs an HMAC key: calls through "
                                "this tool are denied until the engine has one",
                                f.name, item.span.line, item.span.column,
                                _HMAC_HINT, "warning"))
        return tuple(out)

    def reload(self) -> None:
        """Re-read the paths (or recompile the sources) and swap atomically.

        On error the old policy stays in force and :class:`PolicyError` is raised.
        Files whose bytes did not change are not parsed, checked or compiled again (their
        rules are reused when their rates did not change either); the checks across
        files run on the whole set every time.
        """
        previous = self.revision
        try:
            files = read_paths(self._paths) if self._paths else self._files
            policy, warnings = self._build(files)
        except PolicyError as exc:
            if self.decision_log is not None:
                self.decision_log.event("policy.reload", {
                    "status": "failed", "previous_revision": previous,
                    "errors": sorted({p.code for p in exc.problems})}, self._log_view)
            raise
        self._files = files
        self._policy, self.warnings = policy, warnings
        self.revision = revision_of(files)
        self._set_log_view()
        ledger = self._ledger(policy)  # same store: recorded spend survives a reload
        self.budgets = ledger
        self.warnings += self._config_warnings()
        self._pipeline = self._new_pipeline(policy, ledger, self._limiter(policy))
        if self.decision_log is not None:
            self.decision_log.event("policy.reload", {
                "status": "ok", "previous_revision": previous}, self._log_view)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush and close the decision log (if any): True when every record reached
        its sink. The engine answers no decision afterwards that its log did not take:
        with a closed log, decisions are denied (``decision_log_unavailable``)."""
        if self.decision_log is None:
            return True
        return self.decision_log.close(timeout)

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    @property
    def pipeline(self) -> Pipeline:
        """The decision pipeline in use now (read-only; replaced whole on reload and when
        the keys or revocations change). For the package's own callers that decide
        without the facade's side effects (replay, the service's AuthZEN searches): not
        API, it may change. The facade's own methods read the attribute directly."""
        return self._pipeline

    def _now(self) -> float | None:
        """The injected clock's time, or None to let each component read the real one."""
        return self._clock() if self._clock is not None else None

    # ---- authorize ----
    def authorize(self, principal: str, permission: str,
                  context: dict[str, Any] | None = None, *, token: str | None = None,
                  approval_id: str | None = None, partition: str | None = None,
                  partition_agent: bool = False, acting_for: str | None = None) -> Decision:
        """May ``principal`` exercise ``permission`` given ``context``?

        ``token``: a delegation token the principal acts under. ``approval_id``: an
        approval granted for this same request. ``partition``: the tenant whose counters
        the budgets and rate limits read: every bucket the request's own values name
        (``per context.NAME``, ``per tenant``, the hierarchy levels) is that tenant's,
        so two partitions never share one; ``""`` is the empty tenant's (a caller
        without a tenant: ``tenant:/NAME:VALUE``, the budget wires' names for a key
        without one); None (the default) reads the values as sent, today's buckets
        (docs/engine.md, "Partitions"). ``partition_agent``: the principal is the
        caller's choice too (an AuthZEN subject), so ``per agent`` and ``per
        acting_for`` count it in the partition as well, ``tenant:acme/agent:alice``
        (needs a partition). ``acting_for``: for a request without a token, the name
        its ``per acting_for`` budgets and rate limits count, as the ledger's
        ``acting_for`` (a wire that binds the person acted for itself: actguard's
        ``user_id`` as ``tenant:acme/user_id:alice``); the rules read no grant
        (``grant.delegated`` is false), and with a token it is ``invalid_request``.
        The rules always read the
        context as sent. Never raises for request data: a malformed request is a denied
        decision with code ``invalid_request`` whose reason names the argument at fault
        (and the type it takes). See docs/semantics.md for the rules.
        """
        log = self.decision_log
        if log is None:
            if (partition is not None or partition_agent is not False
                    or acting_for is not None):  # (checked by the run: True or False)
                return self._pipeline.run(principal, permission, context, token,
                                          approval_id, True, None, None, partition,
                                          partition_agent, acting_for)
            return self._pipeline.run(principal, permission, context, token, approval_id)
        started = perf_counter_ns()
        decision = self._pipeline.run(principal, permission, context, token, approval_id,
                                      True, None, None, partition, partition_agent,
                                      acting_for)
        inp: dict[str, Any] = {
            "principal": principal, "permission": permission,
            "context": dict(context) if type(context) is dict else context}
        if approval_id is not None:
            inp["approval_id"] = approval_id
        if partition is not None:
            inp["partition"] = partition
        if partition_agent is True:
            inp["partition_agent"] = True
        if acting_for is not None:
            inp["acting_for"] = acting_for
        return log.decision("authorize", decision, inp, token, self._log_view,
                            started)  # type: ignore[return-value]

    # ---- delegation ----
    def verify_token(self, token: str) -> Any:
        """Verify a delegation token under this policy's ``delegation`` block.

        Returns the :class:`~policyengine.tokens.Grant`; raises ``TokenError``.
        """
        return self._verify(token, self._policy, self._now())

    def _verify(self, token: str, policy: CompiledPolicy, now: float | None) -> Any:
        options = self._verify_options
        if (options is None or options[0] is not policy or options[1] is not self._keys
                or options[2] is not self._revocations):
            options = self._verify_options = self._options(policy)
        (_, keys, revocations, verify, issuer, audience, max_depth, max_ttl, child_max_ttl,
         rates) = options
        return verify(keys, token, now=now, issuer=issuer, audience=audience,
                      max_depth=max_depth, max_ttl=max_ttl, child_max_ttl=child_max_ttl,
                      revocations=revocations, rates=rates)

    def _options(self, policy: CompiledPolicy) -> tuple[Any, ...]:
        """``tokens.verify`` and this policy's ``delegation`` options, worked out once per
        (policy, keys, revocations) instead of on every request."""
        if self.keys is None:
            from policyengine.tokens import TokenError
            raise TokenError("no_keys", "this engine has no keys to verify tokens with "
                             "(Engine.from_path(..., keys=KeySet...))")
        from policyengine.tokens import verify
        block = policy.delegation
        if block is None:
            return (policy, self.keys, self.revocations, verify, None, None, None, None,
                    None, policy.delegation_rates)
        return (policy, self.keys, self.revocations, verify, block.issuer, block.audience,
                block.max_depth, block.max_ttl, block.child_max_ttl, policy.delegation_rates)

    def mint_token(self, *, issuer: str, acting_for: str, agent: str,
                   permissions: Any, ttl: Any, **options: Any) -> str:
        """:func:`policyengine.tokens.mint` with this engine's keys and clock, recorded in
        the decision log (``token.mint``: the new grant's ids, never the token)."""
        from policyengine.tokens import mint
        options.setdefault("now", self._now())
        token: str = mint(self.keys, issuer=issuer, acting_for=acting_for, agent=agent,
                          permissions=permissions, ttl=ttl, **options)
        self._log_token("token.mint", token, None)
        return token

    def attenuate_token(self, token: str, *, agent: str, permissions: Any,
                        **options: Any) -> str:
        """:func:`policyengine.tokens.attenuate` of ``token`` with this engine's keys,
        clock, delegation rates and revocations, recorded in the decision log
        (``token.attenuate``: parent and child ids)."""
        from policyengine.tokens import attenuate
        options.setdefault("now", self._now())
        options.setdefault("rates", self._policy.delegation_rates)
        options.setdefault("revocations", self.revocations)
        child: str = attenuate(self.keys, token, agent=agent, permissions=permissions,
                               **options)
        self._log_token("token.attenuate", child, token)
        return child

    def _log_token(self, kind: str, token: str, parent: str | None) -> None:
        if self.decision_log is None:
            return
        from policyengine.audit._record import token_ids
        from policyengine.tokens._jws import split
        claims = split(token).claims
        fields: dict[str, Any] = {
            "principal": claims.get("sub"), "acting_for": claims.get("acting_for"),
            "chain": claims.get("delegation_chain"),
            "grant": {k: v for k, v in token_ids(token).items() if k != "present"},
            "permissions": claims.get("delegated_permissions")}
        if parent is not None:
            fields["parent"] = {k: v for k, v in token_ids(parent).items() if k != "present"}
        self.decision_log.event(kind, fields, self._log_view)

    def revoke(self, grant_or_jti: str) -> None:
        """Revoke a grant (by ``grant_id`` or ``jti``); its descendants stop verifying."""
        self.revocations.revoke(grant_or_jti)
        if self.decision_log is not None:
            self.decision_log.event("token.revoke", {"grant": {"id": grant_or_jti}},
                                    self._log_view)

    def ensure_authorized(self, principal: str, permission: str,
                          context: dict[str, Any] | None = None, *, token: str | None = None,
                          approval_id: str | None = None, partition: str | None = None,
                          partition_agent: bool = False, acting_for: str | None = None
                          ) -> Decision:
        """Like :meth:`authorize`, but raise :class:`NotAuthorized` or
        :class:`ApprovalRequired` unless the decision is ``allowed``. (Its keywords are
        spelled out, not passed on as ``**kwargs``: a misspelt one is a ``TypeError``
        that names this method, not ``authorize``.)"""
        decision = self.authorize(principal, permission, context, token=token,
                                  approval_id=approval_id, partition=partition,
                                  partition_agent=partition_agent, acting_for=acting_for)
        if decision.status == "allowed":
            return decision
        if decision.status == "pending_approval":
            raise ApprovalRequired(decision)
        raise NotAuthorized(decision)

    # ---- tools ----
    def tool_authorize(self, principal: str, *, transport: str, method: str | None = None,
                       host: str | None = None, path: str | None = None,
                       query: Mapping[str, Any] | None = None,
                       headers: Mapping[str, Any] | None = None, body: Any = None,
                       tool_name: str | None = None, function_name: str | None = None,
                       token: str | None = None, context: dict[str, Any] | None = None,
                       approval_id: str | None = None, scheme: str | None = None,
                       redaction_check: Callable[[Any, Any], Any] | None = None,
                       partition: str | None = None, acting_for: str | None = None,
                       **wire: Any) -> ToolDecision:
        """May this outbound tool call leave, and with which fields redacted?

        Takes the ``/v1/tool-authorize`` request fields (``toolName`` / ``functionName``
        are accepted as spelled on the wire). Never raises for request data; see
        docs/tools.md. A keyword it does not take is such data, a denial
        (``invalid_request``) that names it and the keyword it resembles, as an argument of
        the wrong type is named with the type it takes. ``result.body`` is a redacted
        copy; ``body`` is never mutated.

        ``redaction_check``: for a caller that applies the redactions itself (the
        service, for an SDK): ``redaction_check(body, redacted)`` is called when the copy
        that would leave differs from ``body`` as given, and answers None when the
        caller cannot make that change; the call is then denied
        ``redaction_unsupported`` by the run's redaction step, before any rate-limit
        call, approval use or approval request (docs/tools.md).

        ``partition``, ``acting_for``: as for :meth:`authorize` (``acting_for``: the
        name ``per acting_for`` counts for a call without a token; with a token, empty
        or not a string, ``invalid_request``).
        """
        log = self.decision_log
        started = 0 if log is None else perf_counter_ns()
        result = self._tool(principal, None, transport, method, host, path, query, headers,
                            body, tool_name, function_name, token, context, approval_id,
                            scheme, wire, redaction_check, partition, acting_for)
        if log is None:
            return result
        # The body logged is a frozen copy of the redacted body the decision holds (None
        # when denied): the log records it on its own thread after this returns, and the
        # decision's body shares the caller's unredacted objects, which the caller may
        # change by then. Headers are never logged (they carry credentials).
        inp = {"principal": principal, "transport": transport, "method": method,
               "host": host, "path": path,
               "tool_name": tool_name or wire.get("toolName"),
               "function_name": function_name or wire.get("functionName"),
               "query": dict(query) if isinstance(query, Mapping) else None,
               "context": dict(context) if type(context) is dict else context,
               "body": frozen(result.body)}
        if partition is not None:
            inp["partition"] = partition
        if acting_for is not None:
            inp["acting_for"] = acting_for
        return log.decision("tool_authorize", result, inp, token, self._log_view,
                            started)  # type: ignore[return-value]

    def _tool(self, principal: Any, trace: Trace | None, transport: Any, method: Any,
              host: Any, path: Any, query: Any, headers: Any, body: Any, tool_name: Any,
              function_name: Any, token: Any, context: Any, approval_id: Any, scheme: Any,
              wire: dict[str, Any], redaction_check: Callable[[Any, Any], Any] | None = None,
              partition: str | None = None, acting_for: str | None = None
              ) -> ToolDecision:
        """The one path of :meth:`tool_authorize` and :meth:`explain_tool` (``trace``):
        the wire's spellings read, then ``tools._egress.tool_authorize`` on the pipeline
        in use (its ``hmac_key`` the engine's, checked when built)."""
        global _tool_authorize
        tool_authorize = _tool_authorize
        if tool_authorize is None:  # imported on first use: authorize never needs it
            from policyengine.tools._egress import tool_authorize as imported
            tool_authorize = _tool_authorize = imported
        pipeline = self._pipeline
        if wire:
            wire = dict(wire)
            tool_name = wire.pop("toolName", tool_name)
            function_name = wire.pop("functionName", function_name)
            approval_id = wire.pop("approvalId", approval_id)
            wire.pop("traceId", None)
            if wire:  # an unknown keyword: named, after the fact (a good call never asks)
                from policyengine.tools._egress import invalid_call
                return invalid_call(principal, _unknown_keywords(
                    "tool_authorize" if trace is None else "explain_tool", wire), trace)
        return tool_authorize(pipeline, principal, transport=transport, method=method,
                              host=host, path=path, query=query, headers=headers, body=body,
                              tool_name=tool_name, function_name=function_name, token=token,
                              context=context, approval_id=approval_id, scheme=scheme,
                              trace=trace, redaction_check=redaction_check,
                              partition=partition, acting_for=acting_for)

    # ---- reverse queries ----
    def permissions_of(self, principal: str | None = None, *, role: str | None = None,
                       limit: int | None = None) -> Permissions:
        """Every permission pattern ``principal`` may exercise (or, with ``role=``, a
        principal holding only that role), each with its status (``allowed``,
        ``pending_approval``) and the residual conditions a request still decides, as
        policy text. Complete unless ``limit`` is given (then ``truncated`` says whether
        lines were left out). See docs/queries.md."""
        from policyengine.decide._query import permissions_of
        _query_limit(limit)
        if (principal is None) == (role is None):
            raise QueryError("invalid_argument", "give exactly one of a principal or role=")
        if principal is not None:
            _query_name(principal, "principal")
        else:
            _query_name(role, "role")
        return permissions_of(self._policy, principal, role=role, limit=limit)

    def principals_with(self, permission: str, *, limit: int | None = None) -> Principals:
        """Every principal that may exercise ``permission``: declared agents, roles, and
        ``anyone`` when an unscoped permit grants it to principals the policy does not
        declare; each with its status and residual conditions. See docs/queries.md."""
        from policyengine.decide._query import principals_with
        _query_limit(limit)
        return principals_with(self._policy, permission, limit=limit)

    def filter_tools(self, principal: str, tools: Iterable[Any], *,
                     transport: str = "mcp") -> FilteredTools:
        """The tools (MCP tool descriptors with a ``name``, objects with ``.name``, or
        names) that ``principal`` may call through ``transport`` (``mcp`` or
        ``function``), for a ``tools/list`` answer. See docs/queries.md."""
        from policyengine.decide._query import filter_tools
        _query_name(principal, "principal")
        if transport not in ("mcp", "function"):
            raise QueryError("invalid_argument",
                             f"transport must be 'mcp' or 'function', not {transport!r}")
        if isinstance(tools, (str, bytes, Mapping)):  # iterable, but not as a list of tools
            raise QueryError("invalid_argument", "tools must be a list of tools (MCP "
                             "descriptors, objects with .name, or names), not a "
                             f"{type(tools).__name__} (for a tools/list result, pass its "
                             "'tools')")
        try:
            each = iter(tools)
        except TypeError:
            raise QueryError("invalid_argument", "tools must be a list of tools, not "
                             f"{type(tools).__name__}") from None
        return filter_tools(self._policy, principal, each, transport=transport)

    # ---- explain ----
    def explain(self, principal: str, permission: str,
                context: dict[str, Any] | None = None, *, token: str | None = None,
                approval_id: str | None = None, partition: str | None = None,
                partition_agent: bool = False, acting_for: str | None = None
                ) -> Explanation:
        """The same run as :meth:`authorize`, traced: what each step found and, rule by
        rule, which rules could decide and why. Its decision is the one ``authorize``
        gives (except that a pending decision records no approval request)."""
        trace = Trace()
        started = perf_counter_ns()
        decision = self._pipeline.run(principal, permission, context, token, approval_id,
                                      False, None, trace, partition, partition_agent,
                                      acting_for)
        return Explanation(self._log_check(decision, trace, started), trace.rules,
                           trace.steps)

    def _log_check(self, decision: Any, trace: Trace, started: int) -> Any:
        """The last step of a traced run, as :meth:`authorize` ends with the decision
        log: what the log would answer (a denial when it would refuse the decision),
        recording nothing -- explain is not a decision. ``started``: when the run began
        (``perf_counter_ns``), as ``authorize`` hands it to the log: the run waits for
        the log no longer in all than ``authorize`` would."""
        log = self.decision_log
        if log is None:
            return decision
        checked = log.check(decision, started)
        if checked is not decision and decision.code != "decision_log_unavailable":
            trace.step("log", f"denied ({checked.code}): {checked.reason}")
        return checked

    def explain_tool(self, principal: str, *, transport: str, method: str | None = None,
                     host: str | None = None, path: str | None = None,
                     query: Mapping[str, Any] | None = None,
                     headers: Mapping[str, Any] | None = None, body: Any = None,
                     tool_name: str | None = None, function_name: str | None = None,
                     token: str | None = None, context: dict[str, Any] | None = None,
                     approval_id: str | None = None, scheme: str | None = None,
                     redaction_check: Callable[[Any, Any], Any] | None = None,
                     partition: str | None = None, acting_for: str | None = None,
                     **wire: Any) -> Explanation:
        """:meth:`tool_authorize` traced, like :meth:`explain`."""
        trace = Trace()
        started = perf_counter_ns()
        decision = self._tool(principal, trace, transport, method, host, path, query,
                              headers, body, tool_name, function_name, token, context,
                              approval_id, scheme, wire, redaction_check, partition,
                              acting_for)
        return Explanation(self._log_check(decision, trace, started), trace.rules,
                           trace.steps)


#: The wire's spellings ``tool_authorize`` and ``explain_tool`` also take as keywords
#: (``traceId`` is taken and ignored).
_WIRE_KEYWORDS = ("toolName", "functionName", "approvalId", "traceId")


def _unknown_keywords(method: str, unknown: Mapping[str, Any]) -> str:
    """The reason of a tool call given keywords ``method`` does not take: each named
    (at most three, each cut to 100 characters), with the keyword it resembles, or a
    note that only ``authorize`` and ``explain`` take it (``partition_agent``). Built
    only once the call has failed: a well-formed call never reaches it."""
    import difflib
    takes = [name for name in inspect.signature(getattr(Engine, method)).parameters
             if name not in ("self", "principal", "wire")]
    takes += _WIRE_KEYWORDS
    others = set(inspect.signature(Engine.authorize).parameters) - {"self", *takes}
    names = list(unknown)
    said = []
    hinted = False
    for name in names[:3]:
        shown = repr(name[:100]) + ("..." if len(name) > 100 else "")
        close = difflib.get_close_matches(name[:100], takes, n=1)
        if name in others:
            said.append(f"{shown} ({method} takes no {name}: authorize and explain do)")
        elif close:
            said.append(f"{shown} (did you mean {close[0]!r}?)")
        else:
            said.append(shown)
            continue
        hinted = True
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    word = "an unknown keyword" if len(names) == 1 else "unknown keywords"
    takes_all = "" if hinted else f"; it takes {', '.join(takes)}"
    return f"{method}() got {word} {', '.join(said)}{more}{takes_all}"


#: The keyword options ``from_path``, ``from_source`` and ``from_sources`` take: the
#: constructor's, but ``files`` and ``paths`` (which they make).
_OPTIONS = tuple(name for name in inspect.signature(Engine.__init__).parameters
                 if name not in ("self", "files", "paths"))
