"""Static checks: every E1xx error and W201-W203, with positions, across several files."""

from __future__ import annotations

import pytest
from conftest import codes_of, problems_of

H = 'role r: a:*\nagent "bot": r\n'


def at(text: str, line: int, marker: str) -> tuple[int, int]:
    """(line, column) of ``marker`` on 1-based ``line`` of ``text``, counted by hand."""
    return line, text.splitlines()[line - 1].index(marker) + 1


CASES = [
    # code, text, line, marker (None: column 1)
    ("E101", H + "permit p: a:b\nforbid p: a:c", 4, None),
    ("E102", 'role r: a:b\nrole r: a:c\nagent "x": r', 2, None),
    ("E103", 'role reader: a:b\nagent "x": readr', 2, "readr"),
    ("E103", H + "permit p: a:b for role rr", 3, "rr"),
    ("E104", H + 'permit p: a:b for agent "bto"', 3, '"bto"'),
    ("E105", "namespace a\nnamespace b\n" + H, 2, None),
    ("E106", H + 'permit p: a:b when startwith(context.x, "a")', 3, "startwith"),
    ("E107", H + "permit p: a:b when startswith(context.x)", 3, "startswith"),
    ("E108", H + 'permit p: a:b when "a" < 3', 3, '"a"'),
    ("E108", H + "permit p: a:b when 1", 3, "when"),
    ("E108", H + "permit p: a:b when true == 1", 3, "true"),
    ("E108", H + 'permit p: a:b when context.a in "abc"', 3, '"abc"'),
    ("E108", H + "permit p: a:b when context.a in [context.b]", 3, "context.b"),
    ("E108", H + 'permit p: a:b when not "x"', 3, '"x"'),
    ("E108", H + "permit p: a:b when true and 3", 3, "3"),
    ("E108", H + "permit p: a:b when contains(3, 3)", 3, "3"),
    ("E108", H + "permit p: a:b when principal.roles < 3", 3, "principal.roles"),
    ("E108", "currency EUR\n" + H + "permit p: a:b when amount > 5", 4, "amount >"),
    ("E109", "currency XXY\n" + H, 1, None),
    ("E109", "currency EUR\nrate ZZZ 1.5\n" + H, 2, None),
    ("E110", "currency EUR\n" + H + "permit p: a:b over 5 EUR", 4, None),
    ("E111", H + 'permit p: a:b when principal.name == "x"', 3, "principal.name"),
    ("E111", H + 'permit p: a:b when principal.id.x == "x"', 3, "principal.id.x"),
    ("E111", H + 'permit p: a:b when principal == "x"', 3, "principal"),
    ("E112", H + "limit p: a:b amount <= 5 EUR", 3, "5 EUR"),
    ("E113", "currency EUR\ncurrency USD\n" + H, 2, None),
    ("E129", "currency EUR\nrate USD 0\n" + H, 2, None),
    ("E130", "currency EUR\nrate USD 1\nrate USD 2\n" + H, 3, None),
    ("E131", "currency EUR\nrate EUR 1\n" + H, 2, None),
    ("E114", H + "permit p: a:b when matches(context.a, context.b)", 3, "matches"),
    ("E115", "role r: a:" + "b" * 300 + '\nagent "x": r', 1, None),
    ("E116", 'role r: a:b\nagent "x": r { a = 1, a = 2 }', 2, None),
    ("E124", 'tz "Mars/Base"\n' + H, 1, None),
    ("E127", "currency EUR\n" + H + "limit p: a:b amount <= 5 USD", 4, "5 USD"),
]


@pytest.mark.parametrize(("code", "text", "line", "marker"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_error_code_and_position(code: str, text: str, line: int, marker: str | None) -> None:
    errors = [p for p in problems_of(("f.policy", text)) if p.severity == "error"]
    assert len(errors) == 1, [p.render() for p in errors]
    p = errors[0]
    want = at(text, line, marker) if marker else (line, 1)
    assert (p.code, p.file, p.line, p.column) == (code, "f.policy", *want)
    assert p.message


@pytest.mark.parametrize(
    ("text", "marker", "hint"),
    [
        ('role reader: a:b\nagent "x": readr', "readr", "did you mean 'reader'?"),
        (H + 'permit p: a:b for agent "bto"', '"bto"', "did you mean 'bot'?"),
        (H + 'permit p: a:b when startwith(context.x, "a")', "startwith",
         "did you mean 'startswith'?"),
        (H + 'permit p: a:b when principal.idd == "x"', "principal", "did you mean 'id'?"),
    ],
)
def test_did_you_mean_hints(text: str, marker: str, hint: str) -> None:
    errors = [p for p in problems_of(("f.policy", text)) if p.severity == "error"]
    assert [p.hint for p in errors] == [hint]


@pytest.mark.parametrize(
    ("code", "text", "line", "marker"),
    [
        ("W201", H + "forbid f: a:*\npermit p: a:b", 4, None),
        ("W201", H + "forbid f: *\napproval p: a:b when context.x == 1", 4, None),
        ("W202", H + "role unused: x:y", 3, None),
        ("W203", H + "permit p: a:b when false", 3, "when"),
        ("W203", H + "permit p: a:b unless true", 3, "unless"),
    ],
)
def test_warning_code_and_position(code: str, text: str, line: int, marker: str | None
                                   ) -> None:
    problems = problems_of(("f.policy", text))
    assert [(p.severity, p.code) for p in problems] == [("warning", code)]
    want = at(text, line, marker) if marker else (line, 1)
    assert (problems[0].line, problems[0].column) == want


@pytest.mark.parametrize(
    "text",
    [
        H + "forbid f: a:x\npermit p: a:b",           # different permission
        H + "forbid f: a:* when context.x == 1\npermit p: a:b",  # conditional forbid
        H + "forbid f: a:b for role r\npermit p: a:b",  # forbid narrower in scope
        H + "forbid f: a:b\npermit p: a:*",            # permit wider than forbid
        H + "permit p: a:b when true",
        H + "permit p: a:b unless false",
    ],
)
def test_no_false_warnings(text: str) -> None:
    assert problems_of(("f.policy", text)) == []


def test_roles_and_agents_declared_in_other_files() -> None:
    files = [
        ("roles.policy", "role reader: docs:read\nrole writer: docs:write"),
        ("agents.policy", 'agent "bot": reader, writer'),
        ("rules.policy", 'permit p: docs:list for role reader, agent "bot"'),
    ]
    assert problems_of(*files) == []


def test_unknown_role_reported_in_the_file_that_uses_it() -> None:
    files = [
        ("roles.policy", "role reader: docs:read"),
        ("agents.policy", 'agent "bot": reader\nagent "other": writer'),
    ]
    assert codes_of(*files) == [("E103", 2, len('agent "other": ') + 1)]
    assert problems_of(*files)[0].file == "agents.policy"


def test_ids_unique_per_namespace_across_files() -> None:
    base = ("base.policy", H)
    same_ns = [("a.policy", "namespace x\npermit p: a:b"),
               ("b.policy", "namespace x\n\nforbid p: a:c")]
    got = problems_of(base, *same_ns)
    assert [(p.code, p.file, p.line) for p in got] == [("E101", "b.policy", 3)]
    assert "a.policy:2:1" in got[0].message


def test_same_id_in_two_namespaces_is_fine() -> None:
    files = [("base.policy", H),
             ("a.policy", "namespace x\npermit p: a:b"),
             ("b.policy", "namespace y\npermit p: a:b")]
    assert problems_of(*files) == []


def test_files_without_namespace_share_default() -> None:
    files = [("base.policy", H), ("a.policy", "permit p: a:b"), ("b.policy", "permit p: a:c")]
    assert codes_of(*files) == [("E101", 1, 1)]


def test_role_name_and_rule_id_do_not_clash() -> None:
    assert problems_of(("f.policy", H + "permit r: a:b")) == []


def test_all_errors_of_a_policy_set_are_reported_sorted() -> None:
    text = "\n".join([
        "role r: a:*",
        'agent "bot": r, nope',                           # 2 E103
        "permit p: a:b when startwith(context.x, 1)",     # 3 E106
        "permit p: a:c",                                  # 4 E101
        'permit q: a:d when principal.name == "x"',       # 5 E111
    ])
    got = [(c, line) for c, line, _ in codes_of(("f.policy", text))]
    assert got == [("E103", 2), ("E106", 3), ("E101", 4), ("E111", 5)]


def test_syntax_errors_of_several_files_are_all_reported() -> None:
    files = [("a.policy", "rol r: a:b"), ("b.policy", "role r: a:b\npermit p: a:b when")]
    got = problems_of(*files)
    assert [(p.file, p.code) for p in got] == [("a.policy", "E005"), ("b.policy", "E003")]


def test_example_policies_check_clean() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "policies"
    files = [(str(p), p.read_text("utf-8")) for p in sorted(root.rglob("*.policy"))]
    assert len(files) >= 3
    errors = [p for p in problems_of(*files) if p.severity == "error"]
    assert errors == []


def test_the_error_message_opens_with_the_error_its_code_names() -> None:
    """A warning earlier in the file than the first error does not lead ``str(err)``:
    ``code: report`` reads as the error it is, and the warning still follows."""
    from policyengine import Engine, PolicyError

    text = ("namespace docs\n"
            "role unused: docs:read\n"          # W202, line 2
            "permit a: docs:read\n"
            "permit a: docs:write\n")           # E101, line 4
    with pytest.raises(PolicyError) as info:
        Engine.from_source(text)
    err = info.value
    assert [p.code for p in err.problems] == ["W202", "E101"]  # source order kept here
    assert err.code == "E101"
    assert str(err).startswith("E101: inline.policy:4:1: error[E101]: ")
    assert "warning[W202]" in str(err)
    assert str(err).index("error[E101]") < str(err).index("warning[W202]")
