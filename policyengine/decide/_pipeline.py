"""The decision pipeline: every decision the engine makes is one run through it.

``authorize``, ``ensure_authorized``, ``tool_authorize``, ``explain`` and the command
line all call :meth:`Pipeline.run`. A request is read once (principal, permission and
context checked; its amount and currency parsed on first use and shared by every step),
then goes through explicit steps, each returning facts:

1. **validate** -- a malformed request is ``invalid_request``, and so is a context that
   does not fit the ``schema`` declared for the permission (the message names the path);
2. **grant** -- with a token: verified, bound to the principal, covering the permission,
   its ``max_amount`` respected;
3. **rules** -- forbids, limits, permits, approvals (:func:`rule_facts`);
4. **budgets** -- every budget covering the permission (``Ledger.admit``; read-only);
   then a tool call's body is redacted (and, with a ``redaction_check``, denied
   ``redaction_unsupported`` when the caller cannot apply the redactions itself);
   then the decision log, if any, is asked whether it would take the decision
   (``DecisionLog.refusal``): a refusal is ``decision_log_unavailable`` here, before
   the steps below take anything;
5. **rate limits** -- a call that may go ahead now (allowed, or presenting an approval)
   takes one call of every rate limit covering it, atomically, or is ``rate_limited``;
6. **approval** -- an approval granted for this request turns ``pending_approval`` into
   ``allowed``; a new pending decision is recorded;

and the last step builds the one :class:`Decision`, which nothing changes afterwards.
``explain`` is the same run with a :class:`Trace`: it records what each step found and
cannot reach a different decision.

The plain path (no token, no budget, no approval) costs what the rules step costs plus
one :class:`Decision`; steps a request does not need are skipped by one test each, and
an allowed call in a pipeline with no budget or rate limit (nor a shadow one) skips
every step after the rules at once. The options a caller rarely gives (approval_id,
partition, partition_agent, acting_for) are checked only when one is given.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

from policyengine.decide._approvals import (
    Approval,
    ApprovalError,
    UnboundRequestError,
    new_approval_id,
    own_clock_of,
    request_digest,
)
from policyengine.decide._compiled import CompiledPolicy, Entry, EvalError
from policyengine.decide._evaluator import (
    PARSED,
    RequestState,
    RuleFacts,
    entry_facts,
    not_strings,
    read_money,
    request_problem,
    rule_facts,
    rule_ids,
    rule_table,
    shadow_rules,
)
from policyengine.decision import (
    Decision,
    Diagnostic,
    FrozenDict,
    ShadowOutcome,
    acting_for_problem,
    build_decision,
    build_diagnostic,
    build_obligations,
    wrong_type,
)
from policyengine.errors import PolicyEngineError
from policyengine.money._money import Money, MoneyError
from policyengine.tokens.errors import TokenError

__all__ = ["Pipeline", "ToolCall", "Trace"]

_EMPTY: dict[str, Any] = {}
_get = dict.get  # a dict subclass's own get() is not called
#: The budgets step's lean ``ledger.admission_text`` was not asked (or failed): see
#: :meth:`Pipeline._budgets`. Shaped as an answer that is no admission (its code is not
#: None), so the run tells "admitted" from everything else in one test.
_UNASKED: Any = ("not asked",)
_redact_body: Callable[..., Any] | None = None


class Trace:
    """What explain records: per step a short result, and the rule-by-rule table, each
    row read-only already (what the :class:`Explanation` holds)."""

    __slots__ = ("rules", "steps")

    def __init__(self) -> None:
        self.steps: list[dict[str, str]] = []
        self.rules: list[dict[str, Any]] = []

    def step(self, name: str, result: str) -> None:
        self.steps.append(FrozenDict(step=name, result=result))


class ToolCall:
    """The tool-call part of a run: the body to redact once the call may leave (and
    before a pending approval is recorded, so no approval waits for a call that could
    never be sent). The run fills in ``redacted`` and ``redactions``."""

    __slots__ = ("binding", "body", "check", "redact_fields", "redacted", "redaction_rules",
                 "redactions", "sent")

    def __init__(self, body: Any, redaction_rules: tuple[Any, ...],
                 redact_fields: tuple[str, ...],
                 binding: Callable[[], dict[str, Any]] | None = None,
                 check: Callable[[Any, Any], Any] | None = None, sent: Any = None) -> None:
        #: What an approval of this call is bound to besides the request (tool, route,
        #: the call as sent; see ``tools._egress``): made only when an approval is used
        #: or recorded, never for a call that needs none.
        self.binding = binding
        self.body = body
        self.redaction_rules = redaction_rules
        #: The rules' paths, made with the rules (the obligations' ``redactFields``).
        self.redact_fields = redact_fields
        #: For a caller that applies the redactions itself (the service, for an SDK):
        #: ``check(sent, redacted)`` answers None when it cannot turn the body as it was
        #: given (``sent``) into the redacted copy; the call is then denied
        #: ``redaction_unsupported`` in the redaction step, before anything is taken.
        #: None for any other caller.
        self.check = check
        self.sent = sent
        self.redacted: Any = None
        self.redactions: tuple[dict[str, str], ...] = ()


Verify = Callable[[str, CompiledPolicy, "float | None"], Any]


#: Tokens whose verified grant a pipeline keeps (with its ``grant.*`` view).
_HELD_KEPT = 4096
#: Permissions per kept grant known to be covered by it.
_COVERED_KEPT = 256
_NEVER = (float("inf"), float("-inf"), ())  # recheck terms no clock satisfies
_time = time.time


def _grant_refused(refusal: tuple[Any, ...], principal: str, permission: str | None,
                   trace: Trace | None) -> Decision:
    """The denial of a request whose delegation token the grant step refused:
    ``refusal`` is (code, diagnostic, message, grant or None), the grant when the token
    verified but does not cover the request (its acting_for and chain are reported)."""
    code, diag, message, grant = refusal
    acting_for = chain = None
    if grant is not None:
        acting_for, chain = grant.acting_for, tuple(grant.chain)
    if trace is not None:
        trace.step("grant", f"denied ({code}): {message}")
    return Decision.denial(code, message, principal, permission, diag, acting_for, chain)


class Pipeline:
    """One compiled policy with the services a decision needs (ledger, approvals, token
    verification, clock). Immutable: ``Engine.reload`` builds a new pipeline and swaps
    one reference, so a run sees one policy and its ledger, never a mix.

    ``verify`` must answer with the engine's keys and ``revocations``: the engine builds a
    new pipeline when either is replaced, because a pipeline keeps verified grants.
    """

    __slots__ = ("_after_rules", "_approvals_own_clock", "_counted", "_held", "_lean_budgets",
                 "_rate_fields", "_rated", "_scope_fields", "approvals", "clock", "hmac_key",
                 "ledger", "limiter", "log", "policy", "revocations", "shadow_ledger",
                 "shadow_limiter", "verify")

    def __init__(self, policy: CompiledPolicy, ledger: Any, approvals: Any, verify: Verify,
                 clock: Callable[[], float] | None, limiter: Any = None,
                 revocations: Any = None, log: Any = None,
                 hmac_key: bytes | None = None) -> None:
        self.policy = policy
        #: The secret of ``hash`` redactions, checked once by whoever builds the
        #: pipeline (``Engine``: ``check_hmac_key``); no tool call checks it again.
        self.hmac_key = hmac_key
        #: The engine's decision log (``audit.DecisionLog``), or None: asked before a run
        #: takes anything (``refusal()``), so a decision it would refuse is refused
        #: before a rate-limit call, an approval's use or a new approval request.
        self.log = log
        #: The policy's rate limits (a ``RateLimiter`` over the budget store), or None.
        self.limiter = limiter
        self.ledger = ledger
        self.approvals = approvals
        #: ``ApprovalStore.own_clock`` (its default where the store declares none).
        self._approvals_own_clock = own_clock_of(approvals)
        self.verify = verify
        self.clock = clock
        self.revocations = revocations
        self._scope_fields = ledger.scope_fields  # fixed per ledger (and policy)
        #: The ledger answers an amount's text again (``Ledger.admission_text``), and no
        #: budget reads a scope field: the budgets step's steady state, tried inline.
        self._lean_budgets = (not self._scope_fields
                              and getattr(ledger, "admission_text", None) is not None)
        #: Per token: [lo, hi, subject, permissions it covers, ids, acting_for, chain,
        #: its ``grant.*`` view, grant, revocations seen]. The view (read-only, like
        #: NOT_DELEGATED) is made once per verified grant. A request under a kept grant
        #: skips verification but still checks the clock is in [lo, hi) and that
        #: ``revocations`` knows none of ``ids`` (``tokens.grants.recheck_terms``); any
        #: doubt goes the full way (``verify`` again). "Revocations seen": the
        #: store's ``changes`` count when it last knew none of ``ids``, for a store
        #: that counts its revocations (``MemoryRevocationStore``): while the count
        #: stands, nothing was revoked since, so the store is not asked again (a
        #: revocation stops the token on the very next request all the same); else None.
        self._held: dict[str, list[Any]] = {}
        #: ``revocations`` counts its revocations and answers ``any_revoked`` from them.
        self._counted = _counts_revocations(revocations)
        #: The shadow budgets over the same store, asked read-only here (``engine.budgets``
        #: charges them beside the enforced ones); None without any. The engine's ledger
        #: is built with the policy's shadow budgets: its own shadow ledger, judged
        #: beside the enforced budgets (``Ledger.shadow_ledger``).
        self.shadow_ledger: Any = ledger.shadow_ledger if policy.shadow_budgets else None
        #: The shadow rate limits over the same store: they count the calls that go
        #: ahead, on keys of their own, and never refuse one (None without any).
        self.shadow_limiter: Any = None
        if policy.shadow_rate_limits:
            from policyengine.budgets.ratelimit import RateLimiter
            self.shadow_limiter = RateLimiter(policy.shadow_rate_limits, ledger.store,
                                              clock=clock)
        #: A rate limit or a shadow one: the steps after the redaction (the decision
        #: log's refusal, the rate limits) have something to do for a call that is not
        #: pending approval.
        self._rated = limiter is not None or self.shadow_limiter is not None
        #: Some step after the rules can change or add to an allowed decision on a plain
        #: ``authorize`` (not a tool call): a budget, a rate limit or a shadow one (the
        #: decision log is asked only before a rate limit takes a call, or for a pending
        #: decision). False: an allowed plain call is decided by its rules, and
        #: :meth:`run` skips the steps after them.
        self._after_rules = bool(policy.budgets or self.shadow_ledger is not None
                                 or self._rated)
        #: The request fields the rate limits and shadow rate limits read (each reads
        #: its own from one scope made of them all: read once per run, ``_ask_rates``).
        self._rate_fields = tuple(sorted(
            {*(limiter.scope_fields if limiter is not None else ()),
             *(self.shadow_limiter.scope_fields if self.shadow_limiter is not None
               else ())}))

    def run(self, principal: Any, permission: Any, context: Any, token: Any = None,
            approval_id: Any = None, register: bool = True, tool: ToolCall | None = None,
            trace: Trace | None = None, partition: str | None = None,
            partition_agent: bool = False, acting_for: str | None = None) -> Decision:
        """Decide one request. Never raises for request data.

        ``register``: False for a dry run (replay, a search; ``explain`` is one too, as
        is any run with a ``trace``): every step is asked the same question and decides
        the same way, but nothing changes -- no rate-limit call is taken, no approval is
        used, and a pending decision records no approval request (its binding is still
        made and the approval store still asked, so a request nobody could approve is
        denied on a dry run too). ``tool``: the body to redact. ``trace``: record each
        step. ``partition``: the tenant whose counters the budgets and rate limits read
        (:func:`_where`; ``""`` the empty tenant's); None reads the request's own values,
        as they are. ``partition_agent``: the principal is the caller's choice (an
        AuthZEN subject), so it too is counted in the partition (:func:`_counted`).
        ``acting_for``: without a token, the name ``per acting_for`` budgets and rate
        limits count (a wire that binds the person itself, as actguard's ``user_id``);
        the rules read no grant (``grant.delegated`` stays false). With a token it is
        ``invalid_request``: the verified grant alone says whom a token's holder acts for.
        """
        policy = self.policy
        # -- 1. validate: the request is read once, here.
        if type(principal) is not str or type(permission) is not str:
            return _invalid(principal, permission,
                            not_strings(principal, permission), trace)
        if context is None:
            context = _EMPTY
        elif not isinstance(context, dict):
            return _invalid(principal, permission,
                            wrong_type("context", "an object (a dict)", context), trace)
        if (approval_id is not None or partition is not None or partition_agent is not False
                or acting_for is not None):  # the common case has none of them: one test
            problem = _options_problem(approval_id, partition, partition_agent, acting_for,
                                       token)
            if problem is not None:
                return _invalid(principal, permission, problem, trace)
        cls = policy.classes.get(permission)
        plan: Any = cls.plans.get(principal) if cls is not None else None  # Plan | Entry
        if plan is None:
            if cls is not None and principal and len(principal) <= 256:
                # the permission has a class, so it was found valid when the class was
                # (the context is checked above): request_problem would say None
                plan = policy.resolve(cls, principal)
            else:
                problem = request_problem(principal, permission, context)
                if problem is not None:
                    return _invalid(principal, permission, problem, trace)
                plan = policy.lookup(principal, permission)
        elif not plan.used:  # the plan cache's reference bit (CLOCK eviction)
            policy.touch(cls, principal, plan)  # type: ignore[arg-type]
        # Permits only, at most one conditional, no schema, no amount: decided from the
        # shared entry, reading nothing of the principal's own (see Entry).
        entry = type(plan) is Entry
        if not entry:
            plan_rules = plan.rules
            schema = plan_rules.schema
            if schema is not None:  # a schema declares this permission's context
                problem = schema(context)
                if problem is not None:
                    return _invalid(principal, permission, problem, trace)
            uses_amount = plan_rules.uses_amount
        else:
            uses_amount = False
        now = self.clock() if self.clock is not None else None
        req = (RequestState(context, policy.default_currency, now) if uses_amount
               else None)
        if trace is not None:
            trace.step("validate", "ok")

        # -- 2. grant (acting_for: the caller's counting name, or the grant's below)
        chain = None
        if token is not None:  # (none in the common case: one test)
            held = self._held.get(token) if trace is None and type(token) is str else None
            if held is not None:  # verified before: the clock and revocations, every time
                t = _time() if now is None else now
                if not (held[0] <= t < held[1] and held[2] == principal
                        and permission in held[3]
                        and (((seen := held[9]) is not None
                              and seen == self.revocations.changes)
                             or self._unrevoked(held))):
                    held = None  # verify again: it says why (revoked, expired ...)
            if held is not None:
                acting_for, chain = held[5], held[6]
                if req is not None:  # the rules read grant.* (or the amount)
                    req.grant = held[7]
            else:
                grant, req = self._grant(policy, token, principal, permission, context, req,
                                         now)
                if type(grant) is tuple:  # (code, diagnostic, message, grant or None)
                    return _grant_refused(grant, principal, permission, trace)
                acting_for, chain = grant.acting_for, tuple(grant.chain)
                view = self._grant_view(grant, permission)
                if req is None and (uses_amount or trace is not None):
                    req = RequestState(context, policy.default_currency, now)
                if req is not None:  # the rules read grant.* (or the amount)
                    req.grant = view
                if trace is not None:
                    trace.step("grant", f"ok: acting for {acting_for}")

        # -- 3. rules
        if entry:
            facts = entry_facts(plan, principal, permission, context, req)
            shadow: tuple[ShadowOutcome, ...] = ()
        else:
            facts = rule_facts(plan_rules, principal, permission, context, req)
            # shadow rules: reported, never decisive (none for nearly every plan)
            shadow = (shadow_rules(plan_rules, context, req) if plan_rules.shadows
                      else ())
        if trace is not None:
            trace.rules = rule_table(policy, principal, permission, context,
                                     req or RequestState(context, policy.default_currency,
                                                         now))
            trace.step("rules", f"{facts[0]} ({facts[1]})")
        status = facts[0]

        # -- 4. budgets
        budget = recorded = rate = None
        # An allowed call with nothing after the rules (no budget, rate limit or shadow
        # of either in this pipeline; not a tool call) is decided here.
        if status != "denied" and (self._after_rules or status != "allowed"
                                   or tool is not None):
            # whom the budgets and rate limits count: the principal, or in its partition
            counted = (_counted(partition, principal) if partition_agent and partition
                       is not None else principal)
            if self.shadow_ledger is not None and policy.shadow_budgeted(permission):
                if req is None:
                    req = RequestState(context, policy.default_currency, now)
                shadow += self._shadow_budgets(counted, permission, context, req,
                                               acting_for, partition)
            if policy.budgets and (policy.budgeted_seen.get(permission)
                                   or policy.budgeted(permission)):
                found: Any = _UNASKED
                if (req is None and acting_for is None and self._lean_budgets
                        and partition is None):
                    # the steady state: the same amount text as this pair's last check
                    # (no context.tokens: tokens budgets count those, _admission asks)
                    text, currency = _get(context, "amount"), _get(context, "currency")
                    if (type(text) is str and type(currency) is str
                            and _get(context, "tenant") is None
                            and _get(context, "tokens") is None):
                        try:
                            found = self.ledger.admission_text(counted, permission, text,
                                                               currency)
                        except Exception:  # _budgets asks again, the full way: it denies
                            found = _UNASKED
                if found is not None and found[0] is None:  # admitted: the steady state
                    budget = found[1]
                else:  # a miss, a refusal, or not asked (_UNASKED): the budgets step
                    refused, budget = self._budgets(counted, permission, context, req,
                                                    acting_for, facts, partition, found)
                    if refused is not None:
                        facts = refused
                        status = "denied"
                if trace is not None:
                    trace.step("budgets", f"{facts[1]}: {_budget_id(budget)}"
                               if budget is not None
                               else "ok: no budget counts this request")

            # -- 5. a tool call's redaction, then the approval
            if tool is not None and status != "denied":
                facts = _redact(tool, facts, self.hmac_key)
                if facts[0] == "denied":
                    status, budget = "denied", None
                if trace is not None:
                    trace.step("redaction", f"{facts[1]}: {len(tool.redactions)} field(s)")

            # Past here only a rate limit (or its shadow) or a pending decision has
            # anything to do.
            if self._rated or status == "pending_approval":
                dry = not register or trace is not None
                limiter = self.limiter
                shadow_limiter = self.shadow_limiter
                # The decision log, if any, is asked once before the steps below take
                # anything (a rate-limit call, an approval's use, a new approval
                # request): a decision it would refuse is refused before anything is
                # taken. A run that takes nothing is refused, if at all, where the log is
                # handed the decision (the same denial).
                if self.log is not None and (status == "pending_approval" or (
                        status == "allowed" and (
                            (limiter is not None and limiter.covering(permission))
                            or (shadow_limiter is not None
                                and shadow_limiter.covering(permission))))):
                    by_log = self._log_refusal(principal, permission, acting_for, chain,
                                               trace)
                    if by_log is not None:
                        return by_log

                # -- 5. rate limits: only a call that may go ahead now is counted (after
                # the read-only budget check: a call refused by a budget takes no rate
                # token, and a rate-limited call reserves or spends nothing). The
                # request's tenant and scope are read by the first to ask (``where``).
                where: list[tuple[str | None, dict[str, str | None] | None]] = []
                if (limiter is not None and (status == "allowed" or (
                        status == "pending_approval" and approval_id is not None))
                        and limiter.covering(permission)):
                    refused, rate = self._rate_limits(counted, permission, context,
                                                      acting_for, facts, not dry, partition,
                                                      where)
                    if refused is not None:
                        facts = refused
                        status, budget = "denied", None
                    if trace is not None:
                        trace.step("ratelimit", "ok: within every rate limit"
                                   if refused is None else f"{facts[1]}: {facts[2]}")
                if (shadow_limiter is not None and (status == "allowed" or (
                        status == "pending_approval" and approval_id is not None))
                        and shadow_limiter.covering(permission)):
                    shadow += self._shadow_rate_limits(counted, permission, context,
                                                       acting_for, not dry, partition, where)
                if status == "pending_approval":
                    call = (tool.binding() if tool is not None and tool.binding is not None
                            else None)
                    if approval_id is not None:
                        refusal = self._use_approval(approval_id, principal, permission,
                                                     context, call, acting_for, now, not dry)
                        if refusal is None:
                            permitted = rule_ids(facts[6], principal)
                            facts = ("allowed", "permitted",
                                     f"permitted by {', '.join(permitted)}", permitted,
                                     facts[4], facts[5], permitted)
                            status = "allowed"
                        else:
                            facts = (*facts[:5], facts[5] + (refusal,), facts[6])
                        if trace is not None:
                            trace.step("approval", f"{approval_id}: " + (
                                "approved for this request" if refusal is None
                                else f"not honoured ({refusal.code})"))
                    if status == "pending_approval":  # recorded, or (dry) could be
                        recorded_or_refusal = self._record_approval(
                            policy, principal, permission, context, call, acting_for, facts,
                            now, dry)
                        if type(recorded_or_refusal) is str:
                            recorded = recorded_or_refusal or None
                        else:
                            facts = recorded_or_refusal  # type: ignore[assignment]
                            status, budget = "denied", None
                    if trace is None:
                        pass
                    elif status == "pending_approval":
                        asking = ", ".join(rule_ids(facts[3], principal))
                        trace.step("approval", f"needs approval: {asking}")
                    elif facts[1] in ("approval_unbindable", "approval_store_error"):
                        trace.step("approval", f"denied ({facts[1]}): {facts[2]}")
        # -- the one Decision
        status, code, reason, rules, obligations, diagnostics, _ = facts
        if trace is not None and shadow:
            trace.step("shadow", ", ".join(f"{s.id} would be {s.status} ({s.code})"
                                           for s in shadow))
        return build_decision(status, code, reason, rules,  # type: ignore[arg-type]
                              obligations, diagnostics, principal, permission, recorded,
                              acting_for, chain, budget, shadow, rate)

    def run_tool(self, principal: str, permission: str, context: dict[str, Any],
                 token: Any, approval_id: Any, body: Any, redaction_rules: tuple[Any, ...],
                 redact_fields: tuple[str, ...], binding: Callable[[], dict[str, Any]],
                 trace: Trace | None, check: Callable[[Any, Any], Any] | None = None,
                 sent: Any = None, partition: str | None = None,
                 acting_for: str | None = None
                 ) -> tuple[Decision, Any, tuple[dict[str, str], ...]]:
        """:meth:`run` for a routed tool call: (decision, redacted body, redactions).
        The body is redacted only when the call may leave (or wait for approval), with
        the pipeline's ``hmac_key``; ``redact_fields``: the rules' paths;
        ``binding()`` is what an approval of the call binds to; ``check`` and ``sent``:
        see :class:`ToolCall`."""
        call = ToolCall(body, redaction_rules, redact_fields, binding, check, sent)
        decision = self.run(principal, permission, context, token, approval_id,
                            True, call, trace, partition, False, acting_for)
        if decision.status == "denied":
            return decision, None, ()
        return decision, call.redacted, call.redactions

    def run_unbound(self, principal: str, token: Any, code: str, reason: str,
                    trace: Trace | None, acting_for: str | None = None) -> Decision:
        """The decision on a tool call no route governs (``egress_allow``: no permission,
        so no rules, budgets, rate limits or approvals): allowed with ``code`` and
        ``reason``, unless it carries a delegation token that does not verify or was
        issued to another principal (the grant step, as in :meth:`run`; with no
        permission there is nothing for the grant to cover). ``acting_for``: the
        caller's counting name (checked by the caller), reported as in :meth:`run`."""
        chain = None
        if token is not None:
            policy = self.policy
            now = self.clock() if self.clock is not None else None
            found = self._grant_or_refusal(policy, token, principal, None, now)
            if type(found) is tuple:  # (code, diagnostic, message, grant or None)
                return _grant_refused(found, principal, None, trace)
            acting_for, chain = found.acting_for, tuple(found.chain)
            if trace is not None:
                trace.step("grant", f"ok: acting for {acting_for}")
        return build_decision("allowed", code, reason, (), None, (), principal, None, None,
                              acting_for, chain)

    # ---- steps -------------------------------------------------------------------------

    def _log_refusal(self, principal: str, permission: str, acting_for: str | None,
                     chain: tuple[str, ...] | None, trace: Trace | None) -> Decision | None:
        """The ``decision_log_unavailable`` denial when the decision log would refuse
        this decision now (``DecisionLog.refusal``), else None. Records nothing."""
        refusal = self.log.refusal()
        if refusal is None:
            return None
        if trace is not None:
            trace.step("log", f"denied (decision_log_unavailable): {refusal}")
        return Decision.denial("decision_log_unavailable", refusal, principal, permission,
                               None, acting_for, chain)

    def _grant(self, policy: CompiledPolicy, token: Any, principal: str, permission: str,
               context: dict[str, Any], req: RequestState | None, now: float | None
               ) -> tuple[Any, RequestState | None]:
        """The verified grant, or why not: (code, diagnostic, message, grant or None);
        and the request state, made here when a cap needs the request's amount (so the
        amount is still read once)."""
        found = self._grant_or_refusal(policy, token, principal, permission, now)
        if type(found) is tuple or not found.capped:
            return found, req
        if req is None:
            req = RequestState(context, policy.default_currency, now)
        return self._amount_fits(policy, found, req, now), req

    def _grant_view(self, grant: Any, permission: str) -> dict[str, Any]:
        """What ``grant.FIELD`` reads in the rules, kept with the grant (see ``_held``)
        while the verifier returns the same grant object; at most :data:`_HELD_KEPT`
        tokens. ``grant`` was just verified for this request and covers ``permission``."""
        found = self._held.get(grant.token)
        if found is None or found[8] is not grant:
            from policyengine.tokens.grants import recheck_terms
            view = {"delegated": True, "acting_for": grant.acting_for,
                    "depth": grant.depth, "chain": list(grant.chain),
                    "issuer": grant.issuer}
            terms = recheck_terms(grant) if self.revocations is not None else None
            if terms is None or grant.capped:  # verified (and its cap checked) every time
                terms = _NEVER
            lo, hi, ids = terms
            # the bounds as floats: a clock's float compares faster with a float than with
            # an int, and a POSIX second is exact either way
            found = [float(lo), float(hi), grant.subject, set(), ids, grant.acting_for,
                     tuple(grant.chain), view, grant, None]
            held = self._held
            if len(held) >= _HELD_KEPT:
                try:  # the oldest goes
                    del held[next(iter(held))]
                except (KeyError, RuntimeError, StopIteration):  # a concurrent change
                    held.clear()
            held[grant.token] = found
        covered = found[3]
        if len(covered) < _COVERED_KEPT:
            covered.add(permission)
        return found[7]  # type: ignore[no-any-return]

    def _unrevoked(self, held: list[Any]) -> bool:
        """True when ``revocations`` knows none of a kept grant's ids (and, for a store
        that counts its revocations, the count it had then is kept with the grant:
        read before asking, so a revocation made meanwhile is asked about next time).
        False when it knows one, or cannot tell: the token is verified again."""
        revocations = self.revocations
        try:
            count = revocations.changes if self._counted else None
            if revocations.any_revoked(held[4]):
                return False
        except Exception:  # the store cannot tell: verify again (its error)
            return False
        held[9] = count
        return True

    def _grant_or_refusal(self, policy: CompiledPolicy, token: Any, principal: str,
                          permission: str | None, now: float | None) -> Any:
        if type(token) is not str:
            return ("invalid_token", "malformed",
                    wrong_type("token", "a string (a delegation token)", token), None)
        try:
            grant = self.verify(token, policy, now)
        except TokenError as exc:
            return ("invalid_token", exc.code, f"delegation token rejected: {exc}", None)
        if grant.subject != principal:
            return ("invalid_token", "subject_mismatch",
                    f"the token was issued to {grant.subject!r}, not {principal!r}", grant)
        if permission is not None and not grant.covers(permission):
            return ("not_delegated", "not_delegated",
                    f"{permission} is not delegated by every hop of the grant", grant)
        return grant

    def _amount_fits(self, policy: CompiledPolicy, grant: Any, req: RequestState,
                     now: float | None) -> Any:
        """``grant`` when the request's amount fits every hop's ``max_amount``, else why
        not (as :meth:`_grant`)."""
        try:
            parsed = req.money()
            fits = parsed is None or grant.amount_fits(
                Money(parsed[0], parsed[1]), policy.delegation_rates, now=now)
        except EvalError as err:
            return ("invalid_amount", err.detail or err.code,
                    f"cannot check the amount against the grant: {err.message}", grant)
        except (MoneyError, TokenError) as exc:
            return ("invalid_amount", exc.code,
                    f"cannot check the amount against the grant: {exc}", grant)
        if not fits:
            return ("delegation_amount_exceeded", "delegation_amount_exceeded",
                    "the amount exceeds the max_amount of the grant", grant)
        return grant

    def _budgets(self, principal: str, permission: str, context: dict[str, Any],
                 req: RequestState | None, acting_for: str | None, facts: RuleFacts,
                 partition: str | None = None, asked: Any = _UNASKED
                 ) -> tuple[RuleFacts | None, Any]:
        """Would this request fit every budget covering it? Read-only (spend is
        reserved or recorded through ``engine.budgets``). Returns (denied facts or None,
        the refusing or tightest budget). ``asked``: what :meth:`run`'s lean
        ``ledger.admission_text`` already answered for this request (None: not the text
        it last saw; or a refusal), so the ledger is not asked the same twice;
        :data:`_UNASKED` when it was not asked (or failed: then it is asked here)."""
        try:
            money = found = text = None
            get = _get
            if (req is None and acting_for is None and not self._scope_fields
                    and partition is None and get(context, "tenant") is None
                    and get(context, "tokens") is None):  # the common case, leaner
                raw, currency = get(context, "amount"), get(context, "currency")
                if type(raw) is str and type(currency) is str:
                    found = (self.ledger.admission_text(principal, permission, raw, currency)
                             if asked is _UNASKED else asked)  # the text seen before
                    if found is None:
                        money = PARSED.get((raw, currency))  # parsed before, mostly
                        text = raw  # what money is the parse of, with currency
                if found is None and money is None:
                    money = read_money(context, self.policy.default_currency)
            if found is not None:
                code, usage = found
            elif money is not None:
                code, usage = self.ledger.admission_parts(
                    principal, permission, money[0], money[1],
                    text if text is not None and money[1] == currency else None)
            else:
                code, usage = _admission(self.ledger, principal, permission, context, req,
                                         acting_for, self.policy.default_currency,
                                         partition=partition)
        except EvalError as err:
            return _overruled(facts, err.code, f"budget check failed: {err.message}"), None
        except Exception as exc:  # BudgetError, or a store fault: never an allow
            code, message = _fault(exc, "budget_unavailable")
            return _overruled(facts, code, f"budget check failed: {message}"), None
        if code is None:
            return None, usage
        budget_id = _budget_id(usage) if usage is not None else "?"
        return ("denied", code,
                f"{permission} would exceed budget {budget_id}", (budget_id,), None,
                facts[5], ()), usage

    def _shadow_budgets(self, principal: str, permission: str, context: dict[str, Any],
                        req: RequestState, acting_for: str | None, partition: str | None = None
                        ) -> tuple[ShadowOutcome, ...]:
        """What the shadow budgets would have said: the same admission question as the
        budgets step, asked of the shadow budgets' own balances in the store (read only
        here; what ``engine.budgets`` reserved and spent is in them). An outcome for the
        one that would refuse (or for an error, which would have denied), none when every
        one would admit."""
        ledger = self.shadow_ledger
        refused: tuple[tuple[str, str], ...]
        try:
            refused = _admission(ledger, principal, permission, context, req, acting_for,
                                 None, each=True, partition=partition)[1].refusals
        except Exception as exc:  # EvalError, BudgetError, a store fault: it would deny
            found = getattr(exc, "code", None)
            code = found if type(found) is str else "budget_unavailable"
            # every shadow budget covering the request would have denied
            refused = tuple((b.id, code) for b in ledger.specs
                            if any(_matches(p, permission) for p in b.patterns))
        modes = self.policy.shadow_modes
        return tuple(ShadowOutcome(i, "budget", modes.get(i, "log"), "denied", code)
                     for i, code in refused)

    def _ask_rates(self, limiter: Any, principal: str, permission: str,
                   context: dict[str, Any], acting_for: str | None, consume: bool,
                   each: bool, partition: str | None, where: list[Any]) -> Any:
        """``limiter.admit`` for this request: None or the refusing ``RateLimitUsage``
        (``each``: ``admit_each``, the refusing ones); raises what it raises.
        ``where``: the request's (tenant, scope) for the rate limits and shadow rate
        limits (:func:`_where` over the fields of both), read by the first of them to
        ask and kept there for the other; empty until then (and after a read that
        raised: the next one reads again)."""
        if not where:
            where.append(_where(partition, self._rate_fields, context))
        tenant, scope = where[0]
        ask = limiter.admit_each if each else limiter.admit
        return ask(principal, permission, acting_for=acting_for, tenant=tenant, scope=scope,
                   consume=consume)

    def _rate_limits(self, principal: str, permission: str, context: dict[str, Any],
                     acting_for: str | None, facts: RuleFacts, consume: bool,
                     partition: str | None, where: list[Any]) -> tuple[RuleFacts | None, Any]:
        """Take one call of every rate limit covering the request (``consume=False``:
        only ask, for explain). Returns (denied facts or None, the refusing
        ``RateLimitUsage`` or None). A store fault or an unusable subject denies.
        ``where``: see :meth:`_ask_rates`."""
        try:
            usage = self._ask_rates(self.limiter, principal, permission, context, acting_for,
                                    consume, False, partition, where)
        except Exception as exc:  # BudgetError, or a store fault: never an allow
            code, message = _fault(exc, "store_unavailable")
            return _overruled(facts, code, f"rate limit check failed: {message}"), None
        if usage is None:
            return None, None
        code = "rate_limited"
        reason = (f"{permission} is over rate limit {usage.id} ({usage.count} per "
                  f"{usage.per}, burst {usage.burst}): retry after {usage.retry_after_ms} ms")
        return ("denied", code, reason, (usage.id,), None, facts[5], ()), usage

    def _shadow_rate_limits(self, principal: str, permission: str, context: dict[str, Any],
                            acting_for: str | None, consume: bool, partition: str | None,
                            where: list[Any]) -> tuple[ShadowOutcome, ...]:
        """What the shadow rate limits would have said of a call that goes ahead: each
        counts it on its own key, as if it alone were enforced; an outcome for each that
        would have refused (or for every covering one when the store fails)."""
        limiter = self.shadow_limiter
        modes = self.policy.shadow_modes
        try:
            refusing = self._ask_rates(limiter, principal, permission, context, acting_for,
                                       consume, True, partition, where)
        except Exception as exc:  # it would have denied with this code
            found = getattr(exc, "code", None)
            code = found if type(found) is str else "store_unavailable"
            return tuple(ShadowOutcome(s.id, "rate_limit", modes.get(s.id, "log"), "denied",
                                       code) for s in limiter.covering(permission))
        return tuple(ShadowOutcome(u.id, "rate_limit", modes.get(u.id, "log"), "denied",
                                   "rate_limited") for u in refusing)

    def _use_approval(self, approval_id: str, principal: str, permission: str,
                      context: dict[str, Any], call: dict[str, Any] | None,
                      acting_for: str | None, now: float | None, consume: bool
                      ) -> Diagnostic | None:
        """Use one use of ``approval_id`` for exactly this request (docs/approvals.md):
        None if it counts, else a diagnostic saying why not. ``consume=False`` (explain)
        answers the same without using it up."""
        def refused(code: str, message: str) -> Diagnostic:
            return build_diagnostic(code, f"approval not honoured: {message}", None,
                                    "pending_approval")

        if not 0 < len(approval_id) <= 128:
            return refused("unknown_approval", "approval_id must be an approval's id")
        try:
            digest = request_digest(principal, permission, context, call, acting_for)
        except UnboundRequestError as exc:
            return refused("approval_unbindable", exc.message)
        at = time.time() if now is None else now
        try:
            if consume:
                self.approvals.consume(approval_id, digest, at)
            else:  # a store on its own clock: the status as get() saw it decides
                _would_consume(self.approvals.get(approval_id), approval_id, digest,
                               None if self._approvals_own_clock else at)
        except ApprovalError as exc:
            return refused(exc.code, exc.message)
        except Exception as exc:  # a store fault is never an allow
            return refused("approval_store_error", f"the approval store failed "
                           f"({type(exc).__name__})")
        return None

    def _record_approval(self, policy: CompiledPolicy, principal: str, permission: str,
                         context: dict[str, Any], call: dict[str, Any] | None,
                         acting_for: str | None, facts: RuleFacts, now: float | None,
                         dry: bool = False) -> str | RuleFacts:
        """Record a pending request as an approval bound to it: the new id, or the denied
        facts when it cannot be bound or the store fails (nobody could ever use it).

        ``dry``: everything but the record -- the binding is made and the store is asked
        for the new id (``get``, which must answer ``unknown_approval``), so a dry run
        denies exactly when the real one would; "" when the record could be made."""
        try:
            digest = request_digest(principal, permission, context, call, acting_for)
        except UnboundRequestError as exc:
            return _overruled(facts, "approval_unbindable", exc.message)
        rules = rule_ids(facts[3], principal)
        expires, uses = policy.approval_terms(rules)
        created = time.time() if now is None else now
        item = Approval(new_approval_id(), principal, permission, digest, rules,
                        "pending", created, created + expires, uses)
        try:
            if dry:
                _would_add(self.approvals, item.id)
            else:
                self.approvals.add(item)
        except Exception as exc:  # a store fault: no approval can be asked for
            # Named by its code (a shared store's own outage) or the driver's exception
            # type; never its message, which may carry the store's address.
            what = (f"the approval store answered {exc.code}"
                    if isinstance(exc, PolicyEngineError) else type(exc).__name__)
            return _overruled(facts, "approval_store_error",
                              f"cannot record the approval: {what}")
        return "" if dry else item.id


def _matches(pattern: str, permission: str) -> bool:
    from policyengine.permissions import matches
    return matches(pattern, permission)


def _counts_revocations(revocations: Any) -> bool:
    """True for the in-memory revocation stores (exactly those classes: a subclass may
    answer otherwise): they move ``changes`` on every revocation, after the id is in,
    so a grant found unrevoked at one count is unrevoked while the count stands."""
    from policyengine.tokens.revocation import (
        JsonFileRevocationStore,
        MemoryRevocationStore,
    )
    return type(revocations) in (MemoryRevocationStore, JsonFileRevocationStore)


def _budget_id(usage: Any) -> str:
    """The budget id of what ``Ledger.admission_parts`` answered: a ``BudgetUsage`` or
    the tuple it is made of."""
    return usage[0] if type(usage) is tuple else usage.budget  # type: ignore[no-any-return]


def _counted(partition: str, principal: str) -> str:
    """The name a principal the caller chose (an AuthZEN subject) is counted under in
    ``partition``: its scope path under the tenant, ``tenant:acme/agent:alice``
    (``tenant:/agent:alice`` for the empty tenant; escaped and cut as
    :func:`~policyengine.budgets.spec.under`), so ``per agent`` and ``per acting_for``
    (the agent, acting for nobody) are the partition's own: two tenants' callers naming
    one subject never share a counter, nor reach a principal the credentials bind."""
    from policyengine.budgets.spec import PART_ESCAPES, under
    return under(partition, "agent:" + principal.translate(PART_ESCAPES))


def _where(partition: str | None, fields: Any, context: dict[str, Any]
           ) -> tuple[str | None, dict[str, str | None] | None]:
    """(tenant, scope) the budgets and rate limits read of a request (``fields``: the
    request fields they read). With ``partition`` None, the request's own values as sent
    (:func:`_sent_tenant`, :func:`_sent_scope`).

    Counted in ``partition`` (a tenant; ``""`` the empty
    tenant, a caller without one): the tenant the budgets and rate limits read is the
    partition itself (``per tenant``; None for the empty tenant, as the budget wires
    charge a key without one; a ``context.tenant`` sent is read by the rules only), and
    each request field they read is the partition's (``tenant:P/NAME:VALUE``, the empty
    tenant's ``tenant:/NAME:VALUE``, hierarchy levels under the partition's tenant:
    :func:`~policyengine.budgets.spec.partitioned`). So two partitions never share a
    counter a request names, and the buckets are the ones the budget wires charge for
    that tenant (docs/service.md, "Tenants on the budget wires")."""
    if partition is None:
        return _sent_tenant(context), _sent_scope(fields, context)
    tenant = partition or None
    if not fields:
        return tenant, None
    from policyengine.budgets.spec import partitioned
    return tenant, partitioned(partition, fields, context)


def _sent_tenant(context: dict[str, Any]) -> str | None:
    """The request's ``context.tenant`` when it is a string, else None."""
    tenant = _get(context, "tenant")
    return tenant if type(tenant) is str else None


def _sent_scope(fields: Any, context: dict[str, Any]) -> dict[str, str | None] | None:
    """The request's values of ``fields`` that are strings (budgets and rate limits per
    workspace, per context.run_id ...: string fields only); None without fields."""
    return ({f: v for f in fields if type(v := _get(context, f)) is str} if fields
            else None)


def _admission(ledger: Any, principal: str, permission: str, context: dict[str, Any],
               req: RequestState | None, acting_for: str | None, default: str | None,
               each: bool = False, partition: str | None = None) -> tuple[str | None, Any]:
    """``ledger.admission`` for this request: its amount and ``context.tokens`` (which
    ``tokens`` budgets count; without an amount, the tokens are the amount), its tenant
    and the scope fields the ledger's budgets read. Raises as the ledger does.
    ``req``: the request state if an earlier step made one (the amount is parsed once),
    else the amount is read here with ``default`` as its currency. ``each``: the same
    question as ``ledger.admit``, ``(code, BudgetCheck)``, whose ``refusals`` name every
    refusing budget (the shadow budgets')."""
    fields = ledger.scope_fields
    tenant: str | None
    scope: dict[str, str | None] | None
    if partition is not None:  # the partition's tenant and fields
        tenant, scope = _where(partition, fields, context)
    else:
        tenant = _sent_tenant(context)
    money = req.money() if req is not None else read_money(context, default)
    amount: Any
    unit: str | None
    tokens = _get(context, "tokens")
    if isinstance(tokens, str):  # a count is a number: never read from text (docs/semantics.md)
        raise EvalError("invalid_amount", f"context.tokens {tokens[:32]!r} is text: give the "
                        "count of tokens as a number (100, not \"100\")", "tokens_not_a_number")
    if money is not None:
        amount, unit = money
    else:
        amount, tokens = tokens, None
        unit = "tokens" if amount is not None else None
    if partition is None:
        if (not each and tokens is None and not fields and acting_for is None
                and tenant is None):  # the common case, leaner
            found: tuple[str | None, Any] = ledger.admission_parts(principal, permission,
                                                                   amount, unit)
            return found
        scope = _sent_scope(fields, context)
    if each:
        check = ledger.admit(principal, permission, amount, unit, acting_for=acting_for,
                             tenant=tenant, scope=scope, tokens=tokens)
        return check.code, check
    # tokens beside an amount: every tokens budget counts them
    result: tuple[str | None, Any] = ledger.admission(principal, permission, amount, unit,
                                                      acting_for=acting_for, tenant=tenant,
                                                      scope=scope, tokens=tokens)
    return result


def _would_add(store: Any, approval_id: str) -> None:
    """Raise when ``store.add`` of a new record with ``approval_id`` would fail (for a
    dry run): the store is asked for that fresh id, and anything but "no such approval"
    -- a fault, or a record already there (``add`` would refuse a duplicate) -- raises."""
    try:
        store.get(approval_id)
    except ApprovalError as exc:
        if exc.code == "unknown_approval":
            return
        raise
    raise ApprovalError("duplicate_approval", f"approval {approval_id} exists")


def _would_consume(item: Approval, approval_id: str, digest: str, now: float | None
                   ) -> None:
    """Raise the ``ApprovalError`` that ``consume`` would, without using the approval.
    ``now`` None: ``item`` is already as its store sees it now (a store on its own
    clock, whose ``consume`` ignores the engine's time)."""
    if not hmac.compare_digest(item.digest.encode("ascii"), digest.encode("ascii")):
        raise ApprovalError("approval_mismatch",
                            "the approval was granted for a different request")
    if now is not None:
        item = item.at(now)
    if item.status != "approved" or item.uses_left < 1:
        code = {"expired": "approval_expired", "pending": "approval_pending",
                "rejected": "approval_rejected"}.get(item.status, "approval_used")
        raise ApprovalError(code, f"approval {approval_id} is {item.status}")


def _options_problem(approval_id: Any, partition: Any, partition_agent: Any,
                     acting_for: Any, token: Any) -> str | None:
    """Why a run's ``approval_id``, ``partition``, ``partition_agent`` or ``acting_for``
    cannot be used (checked in this order), or None. Off the common path: :meth:`Pipeline.run`
    asks only when one of them is given."""
    if approval_id is not None and type(approval_id) is not str:
        return wrong_type("approval_id", "a string", approval_id)
    if partition is not None and type(partition) is not str:
        return wrong_type("partition", "a string", partition)
    if type(partition_agent) is not bool:  # read by truth below: 1 or "no" would count
        return wrong_type("partition_agent", "True or False", partition_agent)
    if partition_agent and partition is None:
        return "partition_agent needs a partition"
    if acting_for is not None:
        return acting_for_problem(acting_for, token)
    return None


def _invalid(principal: Any, permission: Any, message: str, trace: Trace | None) -> Decision:
    if trace is not None:
        trace.step("validate", f"invalid_request: {message}")
    return Decision.denial("invalid_request", message, principal, permission)


def _overruled(facts: RuleFacts, code: str, reason: str) -> RuleFacts:
    """A later step's denial: the rules that decided so far stay, one diagnostic more."""
    return ("denied", code, reason, facts[3], None,
            facts[5] + (build_diagnostic(code, reason, None, "denied"),), ())


def _fault(exc: Exception, default: str) -> tuple[str, str]:
    """(code, message) of a failed budget or rate-limit step: the error's own when it
    has them (a ``PolicyEngineError``), else ``default`` and the exception's text."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    return (code if type(code) is str else default,
            message if type(message) is str else f"{type(exc).__name__}: {exc}")


def _redact(tool: ToolCall, facts: RuleFacts, hmac_key: bytes | None) -> RuleFacts:
    """Redact a copy of the body; a field that might leave unredacted denies.
    ``hmac_key`` was checked when the engine was built: it is not checked again here."""
    global _redact_body
    redact = _redact_body
    if redact is None:  # imported on first use: plain authorize never needs it
        from policyengine.tools._redaction import redact_records
        redact = _redact_body = redact_records
    rules = tool.redaction_rules
    body, redactions, diagnostics = redact(tool.body, rules, hmac_key)
    if diagnostics:
        reasons = "; ".join(str(d) for d in diagnostics)
        reason = f"cannot redact the body: {reasons}"
        return ("denied", "redaction_failed", reason, facts[3], None,
                facts[5] + tuple(build_diagnostic(d.code, str(d), None, "denied")
                                 for d in diagnostics), ())
    tool.redacted = body
    tool.redactions = redactions
    check = tool.check
    if (check is not None and rules and body != tool.sent
            and check(tool.sent, body) is None):
        return _overruled(facts, "redaction_unsupported", "the policy redacts this body "
                          "in a way the caller cannot apply itself (a hash, a partial "
                          "mask, or a field its paths cannot name)")
    if not rules:
        return facts
    ob = facts[4]
    obligations = build_obligations(ob.max_amount if ob else None,
                                    ob.require_approval_over if ob else None,
                                    tool.redact_fields, ob.currency if ob else None)
    return (facts[0], facts[1], facts[2], facts[3], obligations, facts[5], facts[6])
