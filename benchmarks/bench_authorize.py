"""Benchmark of ``Engine.authorize`` (and, optionally, the same scenario on peer engines).

Run from a checkout::

    python benchmarks/bench_authorize.py            # peers too, when they import
    python benchmarks/bench_authorize.py --quick    # fast smoke run (sizes +0 and +1,000)
    python benchmarks/bench_authorize.py --peers    # require cedarpy, casbin and regorus
    python benchmarks/bench_authorize.py --no-peers # policyengine only

Not a test: it prints p50 / p99 microseconds per decision, decisions per second and the
compile time (engine construction) for a base policy and for the same policy with 1,000
and 10,000 extra *unrelated* agents, roles and rules (their own permission namespaces, so
they are never candidates for the timed requests). Two scenarios are timed on every
engine with the same requests: ``base`` (role grants, a forbid and a permit with
conditions) and ``converted`` (an amount in USD against EUR limit and approval rules).
The peers (cedarpy, casbin, regorus: the ``bench`` extra) get policies with the same
decision logic; every engine's allow/deny is checked against the expected answers before
timing, and a mismatch is printed as a warning. The method is in ``_common.py`` and
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from _common import (
    Settings,
    Timing,
    call,
    fmt_rate,
    fmt_us,
    harness_overhead_us,
    machine_line,
    measure,
    parser,
    print_table,
    settings,
    timed_build,
    warn,
)

import policyengine as pe

TARGETS_P50_US = {("base", 0): 3.0, ("base", 10_000): 4.0}
TARGET_CONVERTED_P50_US = 6.0
TARGET_COMPILE_10K_MS = 2_000.0

# --------------------------------------------------------------------------------------
# The requests (identical for every engine) and the expected answer of each.


@dataclass(frozen=True)
class Request:
    principal: str
    permission: str
    context: dict[str, Any]
    allowed: bool  # the expected answer (pending_approval counts as not allowed)
    note: str = ""


BASE_REQUESTS: tuple[Request, ...] = (
    Request("travel-agent", "flights:book", {"country": "FR", "weekday": 2}, True,
            "role grant flights:*"),
    Request("travel-agent", "flights:book", {"country": "KP", "weekday": 2}, False,
            "forbid sanctioned"),
    Request("hotel-agent", "hotels:book", {"country": "FR", "weekday": 2}, True,
            "conditional permit"),
    Request("hotel-agent", "hotels:book", {"country": "FR", "weekday": 6}, False,
            "permit condition false"),
    Request("hotel-agent", "flights:search", {"country": "FR", "weekday": 6}, True,
            "role grant exact"),
    Request("nobody", "flights:search", {"country": "FR", "weekday": 2}, False,
            "unknown agent"),
)

CONVERTED_REQUESTS: tuple[Request, ...] = (
    Request("refund-agent", "payments:refund",
            {"country": "FR", "amount": "280", "currency": "USD"}, True, "257.60 EUR"),
    Request("refund-agent", "payments:refund",
            {"country": "FR", "amount": "99.99", "currency": "USD"}, True, "91.99 EUR"),
    Request("refund-agent", "payments:refund",
            {"country": "FR", "amount": "600", "currency": "USD"}, False, "552 EUR > cap"),
)

# Checked on every engine but not timed (a pending approval creates an approval record in
# policyengine, so it would grow the store inside the timing loop).
CHECK_ONLY: tuple[Request, ...] = (
    Request("refund-agent", "payments:refund",
            {"country": "FR", "amount": "400", "currency": "USD"}, False,
            "368 EUR: approval"),
    Request("refund-agent", "payments:refund",
            {"country": "FR", "amount": "250", "currency": "EUR"}, True, "EUR as is"),
    Request("support-bot", "tickets:close", {"country": "FR", "weekday": 6}, True,
            "ns:* grant"),
    Request("support-bot", "ticketsx:close", {"country": "FR", "weekday": 6}, False,
            "ns:* is not a string prefix"),
)


def extra_checks(n: int) -> tuple[Request, ...]:
    """Requests against the generated extras (only when there are at least 3)."""
    if n < 3:
        return ()
    ctx4 = {"country": "FR", "level": 4}
    ctx10 = {"country": "FR", "level": 10}
    return (
        Request("xa1", "xns1:admin", ctx4, True, "extra permit"),
        Request("xa1", "xns1:admin", {"country": "FR", "level": 2}, False, "extra permit"),
        Request("xa1", "xns1:read", ctx4, True, "extra role grant"),
        Request("xa2", "xns2:write", ctx4, True, "extra ns:* grant"),
        Request("xa2", "xns2:delete", ctx10, False, "extra forbid"),
        Request("xa1", "xns2:write", ctx4, False, "other extra namespace"),
    )


SCENARIOS: dict[str, tuple[Request, ...]] = {
    "base": BASE_REQUESTS,
    "converted": CONVERTED_REQUESTS,
}

# --------------------------------------------------------------------------------------
# policyengine


BASE_POLICY = """\
namespace bench
currency EUR
rate USD 0.92

role travel: flights:*, hotels:book
role readonly: flights:search, hotels:search
role support: tickets:*
role payments: payments:refund
agent "travel-agent": travel
agent "hotel-agent": readonly
agent "support-bot": support
agent "refund-agent": payments

forbid sanctioned: * when context.country in ["KP", "IR", "SY"]
permit weekday-booking: hotels:book for role readonly when context.weekday < 5
limit refund-cap: payments:refund amount <= 500 EUR
approval refund-review: payments:refund over 300 EUR
"""


EXTRA_PER_FILE = 1_000  # policy files are limited to 1 MiB; split the extras


def extra_policy(start: int, stop: int, namespace: str) -> str:
    """Unrelated roles, agents and rules ``start <= i < stop``, each in its own permission
    namespace ``xns<i>``: even ``i`` grants ``xns<i>:*`` and forbids ``xns<i>:delete``
    above a level, odd ``i`` grants read/list and permits ``xns<i>:admin`` above a level."""
    lines = [f"namespace {namespace}", ""]
    for i in range(start, stop):
        if i % 2 == 0:
            lines.append(f"role xr{i}: xns{i}:*")
            lines.append(f'agent "xa{i}": xr{i}')
            lines.append(f"forbid xf{i}: xns{i}:delete when context.level > 9")
        else:
            lines.append(f"role xr{i}: xns{i}:read, xns{i}:list")
            lines.append(f'agent "xa{i}": xr{i}')
            lines.append(f"permit xp{i}: xns{i}:admin for role xr{i} when context.level > 3")
    return "\n".join(lines) + "\n"


def policyengine_sources(n: int) -> dict[str, str]:
    """The base file plus ``n`` extras (``n`` roles, ``n`` agents, ``n`` rules)."""
    sources = {"base.policy": BASE_POLICY}
    for k, start in enumerate(range(0, n, EXTRA_PER_FILE)):
        stop = min(n, start + EXTRA_PER_FILE)
        sources[f"extra{k:02d}.policy"] = extra_policy(start, stop, f"extra{k:02d}")
    return sources


# --------------------------------------------------------------------------------------
# Peers: an adapter gives the compile step, the timed call of one request and the answer.


@dataclass
class Adapter:
    name: str
    compile: Callable[[], Any]  # returns the compiled engine state
    timed: Callable[[Any, Request], Callable[[], Any]]  # zero-arg call of one request
    allowed: Callable[[Any, Request], bool]
    note: str = ""
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def policyengine_adapter(n: int) -> Adapter:
    sources = policyengine_sources(n)

    def build() -> Any:
        return pe.Engine.from_sources(sources)

    def timed(engine: Any, r: Request) -> Callable[[], Any]:
        return call(engine.authorize, r.principal, r.permission, r.context)

    def allowed(engine: Any, r: Request) -> bool:
        return bool(engine.authorize(r.principal, r.permission, r.context).allowed)

    return Adapter("policyengine", build, timed, allowed)


# ---- cedarpy --------------------------------------------------------------------------

CEDAR_BASE = """\
permit(principal in Role::"travel",
       action in [Action::"flights:*", Action::"hotels:book"], resource);
permit(principal in Role::"readonly",
       action in [Action::"flights:search", Action::"hotels:search"], resource);
permit(principal in Role::"support", action in Action::"tickets:*", resource);
permit(principal in Role::"payments", action == Action::"payments:refund", resource);
forbid(principal, action, resource) when { ["KP", "IR", "SY"].contains(context.country) };
permit(principal in Role::"readonly", action == Action::"hotels:book", resource)
  when { context.weekday < 5 };
// limit 500 EUR and approval over 300 EUR; amount_minor is in minor units, 1 USD = 0.92 EUR
forbid(principal, action == Action::"payments:refund", resource)
  when { (context.currency == "EUR" && context.amount_minor > 50000) ||
         (context.currency == "USD" && context.amount_minor * 92 > 5000000) };
forbid(principal, action == Action::"payments:refund", resource)
  when { (context.currency == "EUR" && context.amount_minor > 30000) ||
         (context.currency == "USD" && context.amount_minor * 92 > 3000000) };
"""

BASE_ROLES = {
    "travel-agent": "travel",
    "hotel-agent": "readonly",
    "support-bot": "support",
    "refund-agent": "payments",
}
BASE_ACTIONS = (
    "flights:book", "flights:search", "hotels:book", "hotels:search", "tickets:close",
    "ticketsx:close", "payments:refund",
)


def _ns_group(action: str) -> str:
    return action.split(":", 1)[0] + ":*"


def cedar_policies(n: int) -> str:
    out = [CEDAR_BASE]
    for i in range(n):
        if i % 2 == 0:
            out.append(f'permit(principal in Role::"xr{i}", action in Action::"xns{i}:*", '
                       "resource);")
            out.append(f'forbid(principal, action == Action::"xns{i}:delete", resource) '
                       "when { context.level > 9 };")
        else:
            out.append(f'permit(principal in Role::"xr{i}", action in '
                       f'[Action::"xns{i}:read", Action::"xns{i}:list"], resource);')
            out.append(f'permit(principal in Role::"xr{i}", action == Action::"xns{i}:admin", '
                       "resource) when { context.level > 3 };")
    return "\n".join(out)


def cedar_entities(n: int) -> list[dict[str, Any]]:
    def uid(t: str, i: str) -> dict[str, str]:
        return {"type": t, "id": i}

    ents: list[dict[str, Any]] = []
    roles = set(BASE_ROLES.values())
    for agent, role in BASE_ROLES.items():
        ents.append({"uid": uid("Agent", agent), "attrs": {}, "parents": [uid("Role", role)]})
    groups: set[str] = set()
    actions: list[str] = list(BASE_ACTIONS)
    for i in range(n):
        roles.add(f"xr{i}")
        ents.append({"uid": uid("Agent", f"xa{i}"), "attrs": {},
                     "parents": [uid("Role", f"xr{i}")]})
        actions.extend(f"xns{i}:{verb}" for verb in ("read", "list", "write", "admin",
                                                     "delete"))
    for role in sorted(roles):
        ents.append({"uid": uid("Role", role), "attrs": {}, "parents": []})
    for action in actions:
        groups.add(_ns_group(action))
        ents.append({"uid": uid("Action", action), "attrs": {},
                     "parents": [uid("Action", _ns_group(action))]})
    for g in sorted(groups):
        ents.append({"uid": uid("Action", g), "attrs": {}, "parents": []})
    return ents


def cedar_context(ctx: dict[str, Any]) -> dict[str, Any]:
    """Cedar has no decimal multiplication: amounts go in as integer minor units."""
    out = {k: v for k, v in ctx.items() if k != "amount"}
    if "amount" in ctx:
        out["amount_minor"] = int(Decimal(ctx["amount"]) * 100)
    return out


def cedar_request(r: Request) -> dict[str, Any]:
    return {
        "principal": f'Agent::"{r.principal}"',
        "action": f'Action::"{r.permission}"',
        "resource": 'Resource::"any"',
        "context": cedar_context(r.context),
    }


def cedar_adapter(n: int, *, reparse: bool = False) -> Adapter:
    import cedarpy

    text = cedar_policies(n)
    entities = cedar_entities(n)
    entities_json = json.dumps(entities)

    def build() -> Any:
        if reparse:  # what a naive caller does: text and entity list on every call
            return (text, entities)
        return (cedarpy.PolicySet.from_str(text), cedarpy.Entities.from_json_str(entities_json))

    def timed(state: Any, r: Request) -> Callable[[], Any]:
        policies, ents = state
        return call(cedarpy.is_authorized, cedar_request(r), policies, ents)

    def allowed(state: Any, r: Request) -> bool:
        return bool(timed(state, r)().allowed)

    if reparse:
        return Adapter("cedarpy (reparse)", build, timed, allowed,
                       "policies text + entity list passed per call")
    return Adapter("cedarpy", build, timed, allowed,
                   "PolicySet + Entities handles parsed once")


# ---- casbin ---------------------------------------------------------------------------

CASBIN_MODEL = """\
[request_definition]
r = sub, act, ctx

[policy_definition]
p = sub, act, cond, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.sub == "*" || g(r.sub, p.sub)) && keyMatch(r.act, p.act) && eval(p.cond)
"""

_USD_EUR = "(r.ctx.currency == 'USD' and r.ctx.amount_minor * 92 > {usd})"
_EUR_EUR = "(r.ctx.currency == 'EUR' and r.ctx.amount_minor > {eur})"
CASBIN_BASE = [
    "p, travel, flights:*, True, allow",
    "p, travel, hotels:book, True, allow",
    "p, readonly, flights:search, True, allow",
    "p, readonly, hotels:search, True, allow",
    "p, support, tickets:*, True, allow",
    "p, payments, payments:refund, True, allow",
    "p, *, *, r.ctx.country == 'KP' or r.ctx.country == 'IR' or r.ctx.country == 'SY', deny",
    "p, readonly, hotels:book, r.ctx.weekday < 5, allow",
    "p, *, payments:refund, " + _USD_EUR.format(usd=5000000) + " or "
    + _EUR_EUR.format(eur=50000) + ", deny",
    "p, *, payments:refund, " + _USD_EUR.format(usd=3000000) + " or "
    + _EUR_EUR.format(eur=30000) + ", deny",
] + [f"g, {agent}, {role}" for agent, role in BASE_ROLES.items()]


def casbin_lines(n: int) -> list[str]:
    lines = list(CASBIN_BASE)
    for i in range(n):
        if i % 2 == 0:
            lines.append(f"p, xr{i}, xns{i}:*, True, allow")
            lines.append(f"p, *, xns{i}:delete, r.ctx.level > 9, deny")
        else:
            lines.append(f"p, xr{i}, xns{i}:read, True, allow")
            lines.append(f"p, xr{i}, xns{i}:list, True, allow")
            lines.append(f"p, xr{i}, xns{i}:admin, r.ctx.level > 3, allow")
        lines.append(f"g, xa{i}, xr{i}")
    return lines


def casbin_adapter(n: int) -> Adapter:
    import casbin

    tmp = Path(tempfile.mkdtemp(prefix="bench-casbin-"))
    model = tmp / "model.conf"
    policy = tmp / "policy.csv"
    model.write_text(CASBIN_MODEL)
    policy.write_text("\n".join(casbin_lines(n)) + "\n")

    def build() -> Any:
        return casbin.Enforcer(str(model), str(policy))

    def timed(enforcer: Any, r: Request) -> Callable[[], Any]:
        return call(enforcer.enforce, r.principal, r.permission, cedar_context(r.context))

    def allowed(enforcer: Any, r: Request) -> bool:
        return bool(timed(enforcer, r)())

    adapter = Adapter("casbin", build, timed, allowed,
                      "Enforcer, keyMatch + eval() conditions, amounts in minor units")
    adapter.cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return adapter


# ---- regorus --------------------------------------------------------------------------

REGO_BASE = """\
package bench

import rego.v1

default allow := false

roles := data.agents[input.principal]

granted if {
	some r in roles
	some p in data.grants[r]
	pattern_matches(p, input.permission)
}

pattern_matches(p, _) if p == "*"

pattern_matches(p, perm) if p == perm

pattern_matches(p, perm) if {
	endswith(p, ":*")
	startswith(perm, trim_suffix(p, "*"))
}

amount_eur := to_number(input.context.amount) * data.rates[input.context.currency]

permitted if granted

permitted if {
	input.permission == "hotels:book"
	"readonly" in roles
	input.context.weekday < 5
}

forbidden if input.context.country in {"KP", "IR", "SY"}

forbidden if {
	input.permission == "payments:refund"
	amount_eur > 500
}

pending if {
	input.permission == "payments:refund"
	amount_eur > 300
}

allow if {
	permitted
	not forbidden
	not pending
}
"""

BASE_GRANTS: dict[str, list[str]] = {
    "travel": ["flights:*", "hotels:book"],
    "readonly": ["flights:search", "hotels:search"],
    "support": ["tickets:*"],
    "payments": ["payments:refund"],
}


def rego_modules(n: int) -> dict[str, str]:
    """The base module plus the extra rules, 1,000 per module (regorus limits the lines
    of one policy file; modules of one package add up to the same rules)."""
    modules = {"bench.rego": REGO_BASE}
    for k, start in enumerate(range(0, n, EXTRA_PER_FILE)):
        out = ["package bench", "", "import rego.v1", ""]
        for i in range(start, min(n, start + EXTRA_PER_FILE)):
            if i % 2 == 0:
                out.append(f'forbidden if {{\n\tinput.permission == "xns{i}:delete"\n'
                           "\tinput.context.level > 9\n}\n")
            else:
                out.append(f'permitted if {{\n\tinput.permission == "xns{i}:admin"\n'
                           f'\t"xr{i}" in roles\n\tinput.context.level > 3\n}}\n')
        modules[f"extra{k:02d}.rego"] = "\n".join(out)
    return modules


def rego_data(n: int) -> dict[str, Any]:
    grants = dict(BASE_GRANTS)
    agents = {agent: [role] for agent, role in BASE_ROLES.items()}
    for i in range(n):
        grants[f"xr{i}"] = [f"xns{i}:*"] if i % 2 == 0 else [f"xns{i}:read", f"xns{i}:list"]
        agents[f"xa{i}"] = [f"xr{i}"]
    return {"agents": agents, "grants": grants, "rates": {"EUR": 1, "USD": 0.92}}


def regorus_adapter(n: int) -> Adapter:
    import regorus

    modules = rego_modules(n)
    data = rego_data(n)

    def build() -> Any:
        engine = regorus.Engine()
        for name, text in modules.items():
            engine.add_policy(name, text)
        engine.add_data(data)
        engine.eval_rule("data.bench.allow")  # any lazy preparation happens here
        return engine

    def timed(engine: Any, r: Request) -> Callable[[], Any]:
        request = {"principal": r.principal, "permission": r.permission,
                   "context": r.context}
        set_input = engine.set_input
        eval_rule = engine.eval_rule

        def decide() -> Any:
            set_input(request)
            return eval_rule("data.bench.allow")

        return decide

    def allowed(engine: Any, r: Request) -> bool:
        return timed(engine, r)() is True

    return Adapter("regorus", build, timed, allowed, "compiled Engine, set_input + eval_rule")


# --------------------------------------------------------------------------------------


@dataclass
class Row:
    engine: str
    scenario: str
    size: int
    timing: Timing | None
    compile_ms: float


def check(adapter: Adapter, state: Any, n: int) -> int:
    """Compare the engine's allow/deny with the expected answers; return mismatches."""
    bad = 0
    requests = (*BASE_REQUESTS, *CONVERTED_REQUESTS, *CHECK_ONLY, *extra_checks(n))
    for r in requests:
        try:
            got = adapter.allowed(state, r)
        except Exception as exc:  # a peer that raises is a mismatch, not a crash
            warn(f"{adapter.name} +{n}: {r.principal} {r.permission} {r.context} raised "
                 f"{type(exc).__name__}: {exc}")
            bad += 1
            continue
        if got != r.allowed:
            warn(f"{adapter.name} +{n}: {r.principal} {r.permission} {r.context} -> "
                 f"{'allow' if got else 'deny'}, expected {'allow' if r.allowed else 'deny'} "
                 f"({r.note})")
            bad += 1
    return bad


def peer_factories(mode: str, quick: bool) -> list[Callable[[int], Adapter]]:
    """The peer adapters that import (``mode``: auto, require or none)."""
    if mode == "none":
        return []
    found: list[Callable[[int], Adapter]] = []
    missing: list[str] = []
    for module, factories in (
        ("cedarpy", [cedar_adapter, *([] if quick else [_cedar_reparse])]),
        ("casbin", [casbin_adapter]),
        ("regorus", [regorus_adapter]),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
            continue
        found.extend(factories)
    if missing:
        msg = f"peer packages not importable: {', '.join(missing)} (pip install -e '.[bench]')"
        if mode == "require":
            raise SystemExit(msg)
        warn(msg + "; skipping them")
    return found


def _cedar_reparse(n: int) -> Adapter:
    return cedar_adapter(n, reparse=True)


def run_engine(adapter: Adapter, n: int, cfg: Settings, rows: list[Row],
               scenarios: Sequence[str]) -> int:
    try:
        state, compile_ms = timed_build(adapter.compile)
        bad = check(adapter, state, n)
        for scenario in scenarios:
            calls = [adapter.timed(state, r) for r in SCENARIOS[scenario]]
            rows.append(Row(adapter.name, scenario, n, measure(calls, cfg), compile_ms))
        return bad
    finally:
        for fn in adapter.cleanup:
            fn()


@contextmanager
def progress(label: str) -> Iterator[None]:
    print(f"  ... {label}", file=sys.stderr, flush=True)
    yield


def main(argv: Sequence[str] | None = None) -> int:
    ap: argparse.ArgumentParser = parser(__doc__.splitlines()[0] if __doc__ else "")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--peers", action="store_true",
                       help="require the peer engines (cedarpy, casbin, regorus)")
    group.add_argument("--no-peers", action="store_true", help="policyengine only")
    ap.add_argument("--slow-peers", action="store_true",
                    help="also run casbin at +10,000 and cedarpy (reparse) at +1,000 and "
                         "+10,000 (slow: adds minutes)")
    args = ap.parse_args(argv)
    cfg = settings(args.quick)
    sizes = (0, 1_000) if args.quick else (0, 1_000, 10_000)
    mode = "require" if args.peers else "none" if args.no_peers else "auto"
    factories: list[Callable[[int], Adapter]] = [policyengine_adapter,
                                                 *peer_factories(mode, args.quick)]

    print("authorize benchmark:", machine_line())
    print(f"mode: {'quick' if cfg.quick else 'full'}; {cfg.budget_s:g} s per row after "
          f"{cfg.warmup_s:g} s warm-up; batches of up to 100 calls")
    overhead = harness_overhead_us(cfg)
    # The first Engine of a process loads the Lark grammar; keep that out of compile times.
    _, first_ms = timed_build(lambda: pe.Engine.from_source(BASE_POLICY))
    rows: list[Row] = []
    mismatches = 0
    for n in sizes:
        for factory in factories:
            adapter = factory(n)
            slow_from = 1_000 if cfg.quick or adapter.name == "cedarpy (reparse)" else 10_000
            if adapter.name in SLOW_PEERS and n >= slow_from and not args.slow_peers:
                rows.extend(Row(adapter.name, s, n, None, float("nan")) for s in SCENARIOS)
                for fn in adapter.cleanup:
                    fn()
                continue
            with progress(f"{adapter.name} +{n:,}"):
                try:
                    mismatches += run_engine(adapter, n, cfg, rows, tuple(SCENARIOS))
                except Exception as exc:
                    if adapter.name == "policyengine":
                        raise
                    warn(f"{adapter.name} +{n:,} failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    mismatches += 1

    print()
    headers = ["engine", "scenario", "p50 us", "p99 us", "decisions/s", "compile ms",
               "samples x batch"]
    table = []
    for row in sorted(rows, key=lambda r: (r.scenario, r.size, _order(r.engine))):
        t = row.timing
        if t is None:
            table.append([row.engine, f"{row.scenario} +{row.size:,}", "skipped", "-", "-",
                          "-", "--slow-peers"])
            continue
        table.append([row.engine, f"{row.scenario} +{row.size:,}", fmt_us(t.p50_us),
                      fmt_us(t.p99_us), fmt_rate(t.per_s), f"{row.compile_ms:,.1f}",
                      f"{t.samples} x {t.batch}"])
    print_table(headers, table)
    print(f"\nfirst Engine build in this process (loads the grammar, not in the table): "
          f"{first_ms:,.0f} ms")
    print(f"harness overhead (no-op through the same loop): {overhead * 1000:.0f} ns/call, "
          "included above")
    print("load average after the run:", machine_line().rsplit("load average ", 1)[-1])

    print("\ntargets (policyengine):")
    ours = {(r.scenario, r.size): r for r in rows if r.engine == "policyengine"}
    for (scenario, size), target in TARGETS_P50_US.items():
        _verdict(f"p50 {scenario} +{size:,} <= {target:g} us", ours.get((scenario, size)),
                 target)
    _verdict(f"p50 converted +0 <= {TARGET_CONVERTED_P50_US:g} us", ours.get(("converted", 0)),
             TARGET_CONVERTED_P50_US)
    big = ours.get(("base", 10_000))
    if big is not None:
        ok = big.compile_ms <= TARGET_COMPILE_10K_MS
        print(f"  compile +10,000 <= {TARGET_COMPILE_10K_MS:,.0f} ms: {big.compile_ms:,.0f} ms "
              f"{'met' if ok else 'MISSED'}")
    else:
        print("  compile +10,000: not measured (--quick)")
    if mismatches:
        warn(f"{mismatches} allow/deny mismatches against the expected answers (see above)")
    else:
        print("\nall engines gave the expected allow/deny for every sample request")
    return 0


# Skipped at large sizes unless --slow-peers: casbin (+10,000; +1,000 with --quick) and
# cedarpy re-parsing per call (+1,000 and up: about 0.2 s per decision at +1,000).
SLOW_PEERS = ("casbin", "cedarpy (reparse)")


def _order(engine: str) -> int:
    names = ["policyengine", "regorus", "cedarpy", "cedarpy (reparse)", "casbin"]
    return names.index(engine) if engine in names else len(names)


def _verdict(label: str, row: Row | None, target: float) -> None:
    if row is None or row.timing is None:
        print(f"  {label}: not measured")
        return
    p50 = row.timing.p50_us
    print(f"  {label}: {p50:.2f} us {'met' if p50 <= target else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())
