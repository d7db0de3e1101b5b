"""``import policyengine`` loads no heavy dependency; every public name still resolves."""

from __future__ import annotations

import subprocess
import sys

import policyengine

HEAVY = ("jwt", "cryptography", "httpx", "lark", "jsonpath_ng", "pydantic")


def _loaded_after(code: str) -> set[str]:
    probe = (f"import sys\n{code}\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    return set(out.stdout.split())


def test_import_loads_no_heavy_dependency() -> None:
    assert _loaded_after("import policyengine") == set()


def test_an_engine_without_tokens_or_tools_loads_neither_jwt_nor_httpx() -> None:
    loaded = _loaded_after("import policyengine as pe\n"
                           "e = pe.Engine.from_source('role r: a:*\\nagent \"b\": r')\n"
                           "assert e.authorize('b', 'a:x').allowed")
    assert "jwt" not in loaded and "httpx" not in loaded and "cryptography" not in loaded


def test_every_public_name_resolves() -> None:
    for name in policyengine.__all__:
        assert getattr(policyengine, name) is not None, name
    assert set(policyengine.__all__) <= set(dir(policyengine))
    from policyengine import KeySet, governed_client, tokens
    assert tokens.KeySet is KeySet
    assert callable(governed_client)


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        policyengine.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_the_command_line_loads_no_service_or_token_dependency_to_check() -> None:
    loaded = _loaded_after("from policyengine.cli import _parser\n_parser()")
    assert loaded <= {"lark"}, loaded


def test_checking_a_delegation_block_loads_no_signature_library() -> None:
    """The checker asks the tokens leaf for a delegation block's bounds
    (``tokens._ceilings``) without loading PyJWT or cryptography: ``policyengine check``
    of a policy with a ``delegation`` block pays for neither."""
    loaded = _loaded_after(
        "from policyengine.cli import main\n"
        "import tempfile, pathlib\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "(d / 'p.policy').write_text('role r: a:*\\nagent \"b\": r\\n'\n"
        "    'delegation { max_depth 9  max_ttl 1h  issuer \"https://i.example\" }\\n')\n"
        "assert main(['check', str(d)]) == 1  # E126: max_depth 9 is over 8\n")
    assert "jwt" not in loaded and "cryptography" not in loaded, loaded
