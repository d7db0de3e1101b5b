"""Lazy public names (PEP 562) for the package and its subpackages.

Each ``__init__`` lists where its public names live; a module is imported the first time
one of its names is read, so ``import policyengine`` loads neither PyJWT, httpx nor the
service. A leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, exports: Mapping[str, str],
                 namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps a public name to the
    module that defines it (or, for a submodule, to the submodule itself). A name read
    once is stored in ``namespace``, so later reads skip this function."""

    def read(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module)
        value = loaded if module == f"{package}.{name}" else getattr(loaded, name)
        namespace[name] = value
        return value

    return read
