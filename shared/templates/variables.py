"""Which variables a template source requires: those it reads outside a guard (`{% if x is
defined %}`, `x is defined and ...`, `... if x is defined else ...`, `x | default(...)`),
found in Jinja2's parse tree. Names the template assigns itself (`set`, `for`) are not."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from jinja2 import nodes

from shared.templates.environment import html_environment, text_environment


@cache
def required_names(source: str, html: bool) -> frozenset[str]:
    env = html_environment() if html else text_environment()
    tree = env.parse(source)
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return frozenset(set(_used(tree, frozenset())) - assigned)


def _defined_by(test: nodes.Node) -> set[str]:
    """The names a condition proves defined: `x is defined`, `a is defined and b is defined`."""
    if (
        isinstance(test, nodes.Test)
        and test.name == "defined"
        and isinstance(test.node, nodes.Name)
    ):
        return {test.node.name}
    if isinstance(test, nodes.And):
        return _defined_by(test.left) | _defined_by(test.right)
    return set()


def _used(node: nodes.Node, guarded: frozenset[str]) -> Iterator[str]:
    """The names `node` reads that no enclosing `defined` test or `default` filter guards."""
    if isinstance(node, nodes.Name):
        if node.ctx == "load" and node.name not in guarded:
            yield node.name
        return
    if isinstance(node, (nodes.Filter, nodes.Test)) and node.name in ("default", "d", "defined"):
        if isinstance(node.node, nodes.Name):  # the guarded name itself; its arguments are not
            for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
                yield from _used(arg, guarded)
            return
    if isinstance(node, nodes.If):
        yield from _used(node.test, guarded)
        for inner in node.body:
            yield from _used(inner, guarded | _defined_by(node.test))
        for other in [*node.elif_, *node.else_]:
            yield from _used(other, guarded)
        return
    if isinstance(node, nodes.And):  # `x is defined and x > 0`: the right side is guarded
        yield from _used(node.left, guarded)
        yield from _used(node.right, guarded | _defined_by(node.left))
        return
    if isinstance(node, nodes.CondExpr):
        yield from _used(node.test, guarded)
        yield from _used(node.expr1, guarded | _defined_by(node.test))
        if node.expr2 is not None:
            yield from _used(node.expr2, guarded)
        return
    for child in node.iter_child_nodes():
        yield from _used(child, guarded)
