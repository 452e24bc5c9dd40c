"""FHIRPath invariant evaluation: fhirpathpy plus the FHIR-specific functions it lacks.

fhirpathpy's own `compile()` is not used, for three reasons measured on R4 core:
- its parser silently accepts syntax errors (`a.where(` parses), so we parse strictly;
- unknown functions only fail at run time, so we check function names once, at compile time;
- `apply_parsed_path` rebuilds the user function table on every call, and `trace()` prints to
  stdout unless a callback is set; we build the evaluation context ourselves.

This relies on fhirpathpy 2.2.x internals (`do_eval`, the invocation registry, `constants`).
fhirpathpy keeps global state (`constants`, `TypeInfo.model`), so evaluations are serialised
by a lock: the library may be shared by threads of a service.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.invocations.constants import constants
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.engine.util import get_data
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhirschema.fastpath import compile_subset, guard
from fhirschema.fhirpath_functions import FHIR_FUNCTIONS, TERMINOLOGY_VAR
from fhirschema.fhirpath_nodes import NODES_FLAG

__all__ = ["InvariantResult", "InvariantSyntaxError", "Invariants"]

# Well-known FHIR environment variables (FHIR R4 §2.1.9.1); %resource etc. are per call.
_STATIC_VARS: dict[str, Any] = {
    "ucum": "http://unitsofmeasure.org",
    "sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
}
_MAX_CACHE = 20_000  # distinct expressions; R4 core + US Core + IPS hold ~260


@dataclass(frozen=True, slots=True)
class InvariantResult:
    ok: bool | None  # None = could not be evaluated (unsupported function, error)
    message: str = ""  # the error when ok is None


class InvariantSyntaxError(ValueError):
    """The expression is not valid FHIRPath, or calls a function nobody implements."""


class _RaisingListener(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        # ANTLR lists every acceptable token; the position and the offending input suffice.
        raise InvariantSyntaxError(f"syntax error at {line}:{column}: {msg.split(' expecting ')[0]}")


def parse_strict(expression: str) -> dict:
    """Parse FHIRPath to fhirpathpy's AST, rejecting syntax errors and trailing garbage."""
    listener = _RaisingListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.expression()
    if parser.getCurrentToken().type != Token.EOF:
        token = parser.getCurrentToken()
        raise InvariantSyntaxError(f"unexpected {token.text!r} at 1:{token.column}")
    ast = ASTPathListener()
    ParseTreeWalker().walk(ast, tree)
    return ast.parentStack[0]


def function_names(ast: dict) -> set[str]:
    """Every function called in a parsed expression (`Functn` nodes name their function first)."""
    names: set[str] = set()
    stack = [ast]
    while stack:
        node = stack.pop()
        if node.get("type") == "Functn":
            ident = node["children"][0]
            names.add(ident.get("text") or ident["terminalNodeText"][0])
        stack.extend(node.get("children") or ())
    return names


@dataclass(frozen=True, slots=True)
class _Compiled:
    ast: dict | None
    error: str = ""


class Invariants:
    """Evaluates FHIR invariants; compiled expressions are cached per instance."""

    def __init__(self, model: str = "r4") -> None:
        if model not in models:
            raise ValueError(f"unknown FHIRPath model {model!r}; known: {sorted(models)}")
        self.model: dict = models[model]
        self.functions: dict[str, dict] = dict(FHIR_FUNCTIONS)
        self._known = set(invocation_registry) | set(self.functions)
        self._cache: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def compile(self, expression: str) -> _Compiled:
        """Parse and check once; the result (or the error) is cached."""
        compiled = self._cache.get(expression)
        if compiled is None:
            try:
                ast = parse_strict(expression)
                missing = sorted(function_names(ast) - self._known)
                if missing:
                    compiled = _Compiled(None, f"unsupported function(s): {', '.join(missing)}")
                else:
                    compiled = _Compiled(ast)
            except InvariantSyntaxError as exc:
                compiled = _Compiled(None, str(exc))
            except Exception as exc:  # the generated parser can fail in odd ways
                compiled = _Compiled(None, f"cannot parse: {exc!r}")
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[expression] = compiled
        return compiled

    def _model_path(self, path: str) -> str:
        """Element path → the path or type fhirpathpy's model types children by.

        `Patient.extension` must become `Extension`, or `value` (a choice) finds nothing;
        `Bundle.entry.link` is defined at `Bundle.link`.
        """
        path = path.replace("[x]", "")
        path = self.model["pathsDefinedElsewhere"].get(path, path)
        return self.model["path2Type"].get(path, path)

    def evaluate(
        self,
        expression: str,
        node: object,
        *,
        resource: dict,
        root: dict | None = None,
        path: str | None = None,
        bundle: dict | None = None,
        terminology: Any = None,
    ) -> InvariantResult:
        """`root` is %rootResource; `bundle` the Bundle the resource is an entry of, where
        resolve() finds other entries; `terminology` (a `Terminology`) answers memberOf()."""
        fast = compile_subset(expression)
        if fast is not None:  # the common subset, natively (see fastpath.py); None → full engine
            verdict = fast(node, {"root": root if root is not None else resource, "resource": resource})
            if verdict is not None:
                return _TRUE if verdict else _FALSE
        shortcut = guard(expression)
        if shortcut is not None and shortcut(node):
            return _TRUE
        compiled = self.compile(expression)
        if compiled.ast is None:
            return InvariantResult(None, compiled.error)
        if path is None and isinstance(node, dict) and "resourceType" not in node:
            # children()/descendants() crash on an untyped object; "Element" is always right.
            path = "Element"
        focus = ResourceNode.create_node(node, self._model_path(path)) if path else node
        try:
            result = self._run(compiled.ast, focus, resource, root, bundle, terminology)
        except RecursionError:
            return InvariantResult(None, "expression too deeply nested to evaluate")
        except Exception as exc:  # fhirpathpy raises bare Exceptions for type errors etc.
            # fhirpathpy messages can embed whole collections: keep the issue readable.
            return InvariantResult(None, f"evaluation failed: {str(exc)[:200]}")
        return _as_result(result)

    def _run(
        self,
        ast: dict,
        focus: object,
        resource: dict,
        root: dict | None,
        bundle: dict | None = None,
        terminology: Any = None,
    ) -> Any:
        ctx = {
            "dataRoot": [focus],
            "$this": [focus],  # fhirpathpy only sets it inside functions; `$this.x` needs it
            "vars": {
                **_STATIC_VARS,
                "context": focus,
                "resource": resource,
                "rootResource": root if root is not None else resource,
                "bundle": bundle,
                TERMINOLOGY_VAR: terminology,
            },
            "model": self.model,
            "userInvocationTable": self.functions,
            "traceFn": _ignore_trace,
            NODES_FLAG: True,  # a primitive and its `_x` object are one node (fhirpath_nodes.py)
        }
        with self._lock:
            constants.reset()  # today()/now() are fixed per evaluation
            return do_eval(ctx, ctx["dataRoot"], ast["children"][0])

    def selects(self, expression: str, node: object, *, resource: dict, root: dict | None = None) -> bool:
        """Is `node` among what `expression` selects from `resource`? An extension's
        FHIRPath context (R4 §2.28.4); an expression that cannot be evaluated selects nothing."""
        compiled = self.compile(expression)
        if compiled.ast is None:
            return False
        try:  # the resource itself as the focus: a typed node would not match `Patient.x` paths
            result = self._run(compiled.ast, resource, resource, root)
        except Exception:  # includes RecursionError: selects nothing
            return False
        items = result if isinstance(result, list) else [result]
        # fhirpathpy may hand back copies: an equal node is the same element (or one just like it).
        # An extension of a primitive is hosted by its `_x` object, the node's _data (fhirpath_nodes).
        return any(
            get_data(item) is node or get_data(item) == node or _extras(item) is node for item in items
        )


_TRUE = InvariantResult(True)
_FALSE = InvariantResult(False)


def _extras(item: object) -> object:
    return item._data if isinstance(item, ResourceNode) else None


def _ignore_trace(label: str, value: object) -> None:
    """trace() is for debugging invariants; it must not write to the service's stdout."""


def _as_result(result: Any) -> InvariantResult:
    """FHIR: empty counts as success; a single boolean decides; a singleton non-boolean is true."""
    items = result if isinstance(result, list) else [result]
    if not items:
        return InvariantResult(True)
    if len(items) == 1:
        value = get_data(items[0])
        if value is True or value is False:
            return InvariantResult(value)
        return InvariantResult(True)  # FHIRPath singleton evaluation of collections
    return InvariantResult(None, f"expression returned {len(items)} items, not a boolean")
