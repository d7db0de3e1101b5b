"""Any RateSource works wherever StaticRates does: the whole money conformance suite,
run once per kind of rate source.

The policies' ``rate`` lines and ``rates`` tables compile to one :class:`StaticRates` per
file; here each is swapped for the same table as a :class:`JsonFileRates` (written to a
file), a :class:`CallableRates` (a function) or a user's own class with only the
protocol's ``rate``, and every money fixture must still pass with exactly the same
expected decisions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import policyengine.engine as engine_module
from policyengine._conformance import run_fixture
from policyengine.money import CallableRates, JsonFileRates, StaticRates

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "conformance" / "money")
                  .glob("*.json"))


def _as_json_file(rates: StaticRates, folder: Path) -> JsonFileRates:
    as_of = rates.as_of if rates.as_of is not None else 0.0
    table = {code: format(rates.rate(code, rates.base, as_of), "f")
             for code in rates.codes if code != rates.base}
    path = folder / f"rates-{len(list(folder.iterdir()))}.json"
    stamp = datetime.fromtimestamp(as_of, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path.write_text(json.dumps({"base": rates.base, "as_of": stamp, "rates": table}))
    return JsonFileRates(path, max_age=rates.max_age)


def _as_callable(rates: StaticRates) -> CallableRates:
    """The table behind a function. A function has no as-of date, so policy literals are
    converted at load with ``now=None``; this one then answers as of the table's date
    (as a table does for its literals), and at request time checks ``now``."""
    return CallableRates(lambda a, b, now: rates.rate(a, b, rates.as_of if now is None
                                                      else now))


class _OwnRates:
    """A user's own source: a plain class with only the protocol's ``rate`` (no
    ``rate_fraction``, no base class of the package), answering from the table."""

    def __init__(self, rates: StaticRates) -> None:
        self._rates = rates

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
        rates = self._rates
        return rates.rate(from_code, to_code, rates.as_of if now is None else now)


@pytest.mark.parametrize("kind", ["static", "json", "callable", "own"])
def test_money_conformance_with_every_kind_of_rate_source(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = engine_module.build_rates
    swapped: list[Any] = []

    def build_rates(files: Any, base_dirs: Any) -> dict[str, Any]:
        out = built(files, base_dirs)
        for name, rates in out.items():
            assert type(rates) is StaticRates
            if kind == "json":
                out[name] = _as_json_file(rates, tmp_path)
            elif kind == "callable":
                out[name] = _as_callable(rates)
            elif kind == "own":
                out[name] = _OwnRates(rates)
            swapped.append(out[name])
        return out

    monkeypatch.setattr(engine_module, "build_rates", build_rates)
    failures = [f"{Path(r.fixture).name} :: {r.case}: {r.message}"
                for path in FIXTURES for r in run_fixture(path) if not r.passed]
    assert not failures, "\n".join(failures)
    expected = {"static": StaticRates, "json": JsonFileRates, "callable": CallableRates,
                "own": _OwnRates}[kind]
    assert swapped and all(type(r) is expected for r in swapped)
    assert len(FIXTURES) >= 9
