"""Path utilities over nested-dict pytrees: '/'-joined paths, flatten / unflatten, regex selection."""

from __future__ import annotations

import re
from typing import Any, Callable

import jax


def path_str(path) -> str:
    """'/'-joined string of a jax tree path (dict keys, sequence indices, attributes)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def flatten(tree, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """{'a/b/c': leaf} for a nested dict."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {path_str(p): x for p, x in leaves}


def unflatten(flat: dict[str, Any]) -> dict:
    """Inverse of `flatten` for nested dicts."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return out


def select(paths, pattern: str) -> list[str]:
    """The paths that `re.fullmatch` the pattern (anchored: 'attention/query' does not match 'x/attention/query')."""
    rx = re.compile(pattern)
    return [p for p in paths if rx.fullmatch(p)]
