"""Prometheus text exposition (format 0.0.4) of the service's counters, by hand.

Counters and one latency histogram, updated on the event loop thread only (so no
locks); each worker process has its own (scrape each worker, or sum them).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{v}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


class Metrics:
    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], int] = {}
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.reloads: dict[str, int] = {"ok": 0, "failed": 0}
        self.ingested: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = {}

    def decision(self, wire: str, status: str, n: int = 1) -> None:
        key = (wire, status)
        self.decisions[key] = self.decisions.get(key, 0) + n

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self._latency.get(route)
        if counts is None:
            counts = self._latency[route] = [0] * (len(_BUCKETS) + 1)
            self._latency_sum[route] = 0.0
        counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self._latency_sum[route] += seconds

    def ingest(self, kind: str, encoding: str, n: int) -> None:
        key = (kind, encoding)
        self.ingested[key] = self.ingested.get(key, 0) + n

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def render(self, revision: str | None) -> str:
        out = [
            "# HELP policyengine_decisions_total Decisions answered, by wire and status.",
            "# TYPE policyengine_decisions_total counter",
        ]
        for (wire, status), n in sorted(self.decisions.items()):
            out.append(f"policyengine_decisions_total"
                       f"{_labels([('wire', wire), ('status', status)])} {n}")
        out += ["# HELP policyengine_requests_total HTTP requests, by route and status code.",
                "# TYPE policyengine_requests_total counter"]
        for (route, code), n in sorted(self.requests.items()):
            out.append(f"policyengine_requests_total"
                       f"{_labels([('route', route), ('code', str(code))])} {n}")
        out += ["# HELP policyengine_request_seconds Time to answer a request.",
                "# TYPE policyengine_request_seconds histogram"]
        for route, counts in sorted(self._latency.items()):
            running = 0
            for bound, n in zip((*_BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"policyengine_request_seconds_bucket"
                           f"{_labels([('route', route), ('le', le)])} {running}")
            out.append(f"policyengine_request_seconds_sum{_labels([('route', route)])} "
                       f"{self._latency_sum[route]!r}")
            out.append(f"policyengine_request_seconds_count{_labels([('route', route)])} "
                       f"{running}")
        out += ["# HELP policyengine_errors_total Requests refused or failed, by error code.",
                "# TYPE policyengine_errors_total counter"]
        for error, count in sorted(self.errors.items()):
            out.append(f"policyengine_errors_total{_labels([('code', error)])} {count}")
        out += ["# HELP policyengine_ingested_total Telemetry accepted, by kind and encoding.",
                "# TYPE policyengine_ingested_total counter"]
        for (kind, enc), n in sorted(self.ingested.items()):
            out.append(f"policyengine_ingested_total"
                       f"{_labels([('kind', kind), ('encoding', enc)])} {n}")
        out += ["# HELP policyengine_reloads_total Policy reloads, by result.",
                "# TYPE policyengine_reloads_total counter"]
        for result, n in sorted(self.reloads.items()):
            out.append(f"policyengine_reloads_total{_labels([('result', result)])} {n}")
        out += ["# HELP policyengine_policy_info The policy revision in force.",
                "# TYPE policyengine_policy_info gauge",
                f"policyengine_policy_info{_labels([('revision', revision or '')])} 1"]
        return "\n".join(out) + "\n"
