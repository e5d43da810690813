# -*- test-case-name: tests.test_docstrings -*-
"""
Every public class, method and function of caretproto documents itself as
Twisted's API does, in epytext: a docstring, an C{@param} for each parameter,
an C{@return} for what it returns, and an C{@raise} for what it raises
itself.  Read from the source, so that the rule holds for code that is never
imported here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import caretproto

PACKAGE = Path(caretproto.__file__).resolve().parent


def _public(name: str) -> bool:
    return not name.startswith("_")


def _definitions(
    tree: ast.Module, module: str
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and _public(node.name):
            yield f"{module}.{node.name}", node
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    _public(member.name) or member.name == "__init__"
                ):
                    yield f"{module}.{node.name}.{member.name}", member
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(
            node.name
        ):
            yield f"{module}.{node.name}", node


def _isProperty(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
    )


def _isSetter(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list
    )


def _ownRaises(node: ast.AST) -> bool:
    """Whether C{node}'s body raises, itself (not in a nested function)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, ast.Raise) and child.exc is not None:
            return True
        if _ownRaises(child):
            return True
    return False


def problems() -> list[str]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        module = f"caretproto.{path.stem}"
        tree = ast.parse(path.read_text())
        for name, node in _definitions(tree, module):
            doc = ast.get_docstring(node)
            if not isinstance(node, ast.ClassDef) and _isSetter(node):
                continue  # documented with its property
            if not doc:
                if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                    continue  # documented by its class
                found.append(f"{name}: no docstring")
                continue
            if isinstance(node, ast.ClassDef) or _isProperty(node):
                continue
            arguments = node.args
            names = [
                a.arg
                for a in [
                    *arguments.posonlyargs,
                    *arguments.args,
                    *arguments.kwonlyargs,
                ]
                if a.arg not in ("self", "cls")
            ]
            for argument in names:
                if not re.search(rf"@(param|type) {argument}\b", doc):
                    found.append(f"{name}: no @param {argument}")
            returns = node.returns
            returnsSomething = returns is not None and not (
                isinstance(returns, ast.Constant) and returns.value is None
            )
            if returnsSomething and "@return" not in doc and "@rtype" not in doc:
                found.append(f"{name}: no @return")
            if _ownRaises(node) and "@raise" not in doc:
                found.append(f"{name}: no @raise")
    return found


class DocstringTests(SynchronousTestCase):
    def test_every_public_definition_documents_its_parameters_return_and_raises(
        self,
    ) -> None:
        self.assertEqual(problems(), [])
