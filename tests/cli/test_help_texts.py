"""Every option and argument of every command has a help text: ``--help`` of any
(sub-)command explains each flag it lists. Walks the whole argparse tree, so a flag
added without ``help=`` fails here."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from policyengine.cli import _parser


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases: once
                yield from _parsers(sub)


def test_the_walk_reaches_every_command() -> None:
    progs = {p.prog for p in _parsers(_parser())}
    for prog in ("policyengine check", "policyengine serve", "policyengine store init",
                 "policyengine log verify", "policyengine token keygen",
                 "policyengine token mint", "policyengine token attenuate",
                 "policyengine token verify", "policyengine token revoke",
                 "policyengine token jwks"):
        assert prog in progs


def test_every_option_and_argument_has_help() -> None:
    missing = []
    for parser in _parsers(_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = action.help
            if text is None or text is argparse.SUPPRESS or not text.strip():
                name = "/".join(action.option_strings) or action.dest
                missing.append(f"{parser.prog} {name}")
    assert not missing, "options without help: " + ", ".join(missing)


def test_every_command_has_help() -> None:
    missing = []
    for parser in _parsers(_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if c.help}
                missing += [f"{parser.prog} {name}" for name in action.choices
                            if name not in helped]
    assert not missing, "commands without help: " + ", ".join(missing)
