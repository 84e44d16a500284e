"""Hidden state: names the user's kernel has that no cell of the notebook defines.

Read from the cells' syntax alone, nothing executed: each code cell goes through IPython's
input transformer (so ``%magic`` and ``!shell`` lines become calls instead of syntax errors)
and its module-level bindings are collected: assignments (tuple targets, ``+=``, annotated),
``def``/``class``, ``import``/``from … import``, ``for`` targets, ``with … as``, walrus,
``except … as``, ``match`` captures, ``global`` declarations inside functions, ``del``-free.
``%%time``/``%%capture`` cell bodies are read as Python too, and ``%%capture NAME`` binds NAME.
A cell that does not parse even so is skipped (a note says which). ``from m import *`` binds
the public names of ``m`` when the kernel has it imported already, else it is noted.
"""

from __future__ import annotations

import ast
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Cell magics whose body is Python run in the user's namespace.
_PYTHON_BODY_MAGICS = frozenset({"time", "timeit", "capture", "prun"})


@dataclass
class DefinedNames:
    """The names the cells bind, and what could not be read."""

    names: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def defined_names(sources: Iterable[tuple[int, str]]) -> DefinedNames:
    """The module-level names the code cells (``(index, source)``) bind."""
    found = DefinedNames()
    for index, source in sources:
        tree = _parse(source)
        if tree is None:
            found.notes.append(f"cell {index} does not parse as Python; its names are not read")
            continue
        _Binder(found, index).visit(tree)
    return found


def hidden_names(
    namespace: Mapping[str, Any], defined: set[str], ignore: Iterable[str]
) -> list[str]:
    """The user's names, sorted, that no cell defines: IPython's own (``ignore``), names
    starting with an underscore and modules left out."""
    skip = set(ignore)
    return sorted(
        name
        for name, value in namespace.items()
        if name not in defined
        and name not in skip
        and not name.startswith("_")
        and not isinstance(value, types.ModuleType)
    )


def _parse(source: str) -> ast.Module | None:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        python = TransformerManager().transform_cell(source)
    except Exception:  # a transformer choking on odd input is the same as not parsing
        python = source
    try:
        tree = ast.parse(python)
    except SyntaxError:
        return None
    body = _cell_magic_body(tree)
    if body is not None:
        name, line, text = body
        inner = _parse(text) if name in _PYTHON_BODY_MAGICS else None
        tree = inner or ast.Module(body=[], type_ignores=[])
        if name == "capture" and line.split():
            target = next((w for w in line.split() if not w.startswith("-")), None)
            if target is not None and target.isidentifier():
                tree.body.append(ast.Assign([ast.Name(target, ast.Store())], ast.Constant(None)))
    return tree


def _cell_magic_body(tree: ast.Module) -> tuple[str, str, str] | None:
    """(magic, line, body) when the cell is ``%%magic``: IPython made it one call."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return None
    call = tree.body[0].value
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "run_cell_magic"
        and len(call.args) == 3
        and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args)
    ):
        return None
    name, line, body = (a.value for a in call.args)  # type: ignore[attr-defined]
    return name, line, body


class _Binder(ast.NodeVisitor):
    """Collects the names a cell binds at module level (and ``global`` ones in functions)."""

    def __init__(self, found: DefinedNames, index: int) -> None:
        self.found = found
        self.index = index
        self.depth = 0  # inside a def, class or lambda: its names are local
        self.comprehensions = 0  # inside a comprehension: its targets are local, a walrus not

    def bind(self, name: str) -> None:
        if self.depth == 0 and self.comprehensions == 0:
            self.found.names.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.bind(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        # A walrus in a comprehension binds in the enclosing scope.
        if isinstance(node.target, ast.Name) and self.depth == 0:
            self.found.names.add(node.target.id)
        self.visit(node.value)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.bind(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self._star(node.module or "")
            else:
                self.bind(alias.asname or alias.name)

    def _star(self, module_name: str) -> None:
        module = sys.modules.get(module_name)
        if module is None:
            self.found.notes.append(
                f"cell {self.index} imports * from {module_name}: its names are not checked"
            )
            return
        public = getattr(module, "__all__", None)
        names = public if public is not None else [n for n in vars(module) if n[:1] != "_"]
        self.found.names.update(str(n) for n in names)

    def _scope(self, node: ast.AST, name: str | None) -> None:
        if name is not None:
            self.bind(name)
        for decorator in getattr(node, "decorator_list", ()):
            self.visit(decorator)
        self.depth += 1
        for child in getattr(node, "body", ()):
            self.visit(child)
        self.depth -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scope(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scope(node, node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.depth += 1
        self.visit(node.body)
        self.depth -= 1

    def _comprehension(self, node: ast.AST) -> None:
        self.comprehensions += 1
        self.generic_visit(node)
        self.comprehensions -= 1

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_Global(self, node: ast.Global) -> None:
        self.found.names.update(node.names)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bind(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.bind(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.bind(node.rest)
        self.generic_visit(node)
