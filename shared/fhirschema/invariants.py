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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations import invocation_registry, logic
from fhirpathpy.engine.invocations.constants import constants
from fhirpathpy.engine.nodes import ResourceNode, TypeInfo
from fhirpathpy.engine.util import get_data
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhirschema.fastpath import compile_subset, guard

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
    ) -> InvariantResult:
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
        ctx = {
            "dataRoot": [focus],
            "$this": [focus],  # fhirpathpy only sets it inside functions; `$this.x` needs it
            "vars": {
                **_STATIC_VARS,
                "context": focus,
                "resource": resource,
                "rootResource": root if root is not None else resource,
            },
            "model": self.model,
            "userInvocationTable": self.functions,
            "traceFn": _ignore_trace,
        }
        try:
            with self._lock:
                constants.reset()  # today()/now() are fixed per evaluation
                result = do_eval(ctx, ctx["dataRoot"], compiled.ast["children"][0])
        except RecursionError:
            return InvariantResult(None, "expression too deeply nested to evaluate")
        except Exception as exc:  # fhirpathpy raises bare Exceptions for type errors etc.
            # fhirpathpy messages can embed whole collections: keep the issue readable.
            return InvariantResult(None, f"evaluation failed: {str(exc)[:200]}")
        return _as_result(result)


_TRUE = InvariantResult(True)
_FALSE = InvariantResult(False)


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


# FHIR's additional FHIRPath functions (R4 §2.1.9.1). They receive fhirpathpy's context and the
# input collection of ResourceNodes/values, then the evaluated arguments.


def _primitives(inputs: list) -> list:
    """Primitive values of the input; fhirpathpy yields a `_x` extension object as its own item."""
    return [v for v in (get_data(i) for i in inputs) if v is not None and not isinstance(v, dict)]


def _has_value(ctx: dict, inputs: list) -> bool:
    return len(_primitives(inputs)) == 1


def _get_value(ctx: dict, inputs: list) -> list:
    values = _primitives(inputs)
    return values if len(values) == 1 else []


def _true(ctx: dict, inputs: list, *args: object) -> list:
    """Checked elsewhere by the validator (narrative, profiles, terminology): never fail here."""
    return [True] if inputs else []


def _empty(ctx: dict, inputs: list, *args: object) -> list:
    """Unknown offline (e.g. subsumption): empty, which an invariant treats as success."""
    return []


def _same(ctx: dict, inputs: list, *args: object) -> list:
    return inputs


def _resolve(ctx: dict, inputs: list) -> list:
    """Contained (`#id`) and same-Bundle (`fullUrl`) references only; anything else is empty."""
    found = []
    variables = ctx["vars"]
    for item in inputs:
        data = get_data(item)
        ref = data.get("reference") if isinstance(data, dict) else data
        if not isinstance(ref, str) or not ref:
            continue
        target = None
        if ref.startswith("#"):
            for owner in (variables.get("resource"), variables.get("rootResource")):
                target = _contained(owner, ref[1:])
                if target is not None:
                    break
        else:
            target = _bundle_entry(variables.get("rootResource"), ref)
        if target is not None:
            found.append(ResourceNode.create_node(target))
    return found


def _contained(owner: object, rid: str) -> dict | None:
    if not isinstance(owner, dict):
        return None
    for res in owner.get("contained") or ():
        if isinstance(res, dict) and res.get("id") == rid:
            return res
    return None


def _bundle_entry(bundle: object, ref: str) -> dict | None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, dict):
            continue
        res = entry.get("resource")
        if not isinstance(res, dict):
            continue
        full = entry.get("fullUrl")
        if full == ref or (full and full.endswith("/" + ref)):
            return res
        if f"{res.get('resourceType')}/{res.get('id')}" == ref:
            return res
    return None


def _as(ctx: dict, inputs: list, type_info: TypeInfo) -> list:
    """`as(T)` filters like `ofType(T)`: R4's dom-3 applies it to `descendants()`, and
    fhirpathpy (following later FHIRPath) raises on a collection of more than one item."""
    TypeInfo.model = ctx.get("model")  # fhirpathpy's type checks read this global
    return [item for item in inputs if TypeInfo.from_value(item).is_(type_info)]


def _boolean(value: list) -> bool | list:
    """FHIRPath singleton evaluation: one boolean is itself, any other single item is true.

    fhirpathpy rejects non-boolean operands of `or`/`and`, which breaks US Core's
    `practitioner or organization or ...` (us-core-13).
    """
    if not value:
        return []
    if len(value) > 1:
        raise ValueError(f"boolean operator applied to a collection of {len(value)} items")
    data = get_data(value[0])
    return data if isinstance(data, bool) else True


def _logic(op: Callable[[dict, Any, Any], Any]) -> dict:
    def fn(ctx: dict, left: list, right: list) -> Any:
        return op(ctx, _boolean(left), _boolean(right))

    return {"fn": fn, "arity": {2: ["Any", "Any"]}}


def _values_only(coll: list) -> list:
    """Drop the `_x` extension objects fhirpathpy yields beside (or instead of) a primitive value.

    Without this, per-1 on `{"_start": {...}, "end": "2013"}` raises instead of holding.
    """
    return [
        item
        for item in coll
        if not (
            isinstance(item, ResourceNode)
            and isinstance(item.data, dict)
            and item.path
            and item.path[0].islower()  # a primitive type name: dateTime, string, ...
            and item.data.keys() <= {"id", "extension"}
        )
    ]


def _comparison(name: str) -> dict:
    base = invocation_registry[name]

    def fn(ctx: dict, left: list, right: list) -> Any:
        left, right = _values_only(left), _values_only(right)
        if "nullable" in base and (not left or not right):
            return []
        return base["fn"](ctx, left, right)

    return {"fn": fn, "arity": base["arity"]}


_ONE_ARG = {1: ["AnyAtRoot"]}
FHIR_FUNCTIONS: dict[str, dict] = {
    "or": _logic(logic.or_op),
    "and": _logic(logic.and_op),
    "xor": _logic(logic.xor_op),
    "implies": _logic(logic.implies_op),
    **{op: _comparison(op) for op in ("=", "!=", "~", "!~", "<", "<=", ">", ">=")},
    "as": {"fn": _as, "arity": {1: ["TypeSpecifier"]}},
    "hasValue": {"fn": _has_value},
    "getValue": {"fn": _get_value},
    "htmlChecks": {"fn": _true},
    "conformsTo": {"fn": _true, "arity": _ONE_ARG},
    "memberOf": {"fn": _true, "arity": _ONE_ARG},
    "subsumes": {"fn": _empty, "arity": _ONE_ARG},
    "subsumedBy": {"fn": _empty, "arity": _ONE_ARG},
    "resolve": {"fn": _resolve},
    "elementDefinition": {"fn": _empty},
    "slice": {"fn": _empty, "arity": {2: ["AnyAtRoot", "AnyAtRoot"]}},
    "checkModifiers": {"fn": _same, "arity": _ONE_ARG},
    "hasTemplateIdOf": {"fn": _empty, "arity": _ONE_ARG},
}
