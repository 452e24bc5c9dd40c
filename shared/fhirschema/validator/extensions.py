"""Where an extension may be used: its StructureDefinition's `context` (R4 §2.28.4)."""

from __future__ import annotations

from typing import Any

from fhirschema.validator.findings import Finding, finding

# Contexts that admit any element (or any resource) at all.
_ANYWHERE = frozenset(("Element", "Base", "Resource", "DomainResource"))


def allowed_here(sd: dict[str, Any], parent_type: str | None, path: str) -> bool:
    """May the extension defined by `sd` sit on an element of type `parent_type` at `path`
    (e.g. `Patient.name`)? Contexts that cannot be judged statically (FHIRPath) allow it."""
    contexts = sd.get("context")
    if not isinstance(contexts, list) or not contexts:
        return True
    path = _collapse(path)
    for context in contexts:
        if not isinstance(context, dict):
            return True
        kind, expression = context.get("type"), context.get("expression")
        if kind != "element" or not isinstance(expression, str):
            return True  # `extension` (a parent extension's url) and `fhirpath` contexts
        expression = _collapse(expression)
        if expression in _ANYWHERE or expression in (parent_type, path):
            return True
        head, _, tail = expression.partition(".")
        # `Address.line` on `Patient.address.line`: a datatype's element, wherever the type is used
        if tail and path.endswith("." + tail) and head[:1].isupper() and head not in path.split(".", 1)[0]:
            return True
        if expression.endswith(".extension") and parent_type == "Extension":
            return True
    return False


def _collapse(path: str) -> str:
    """`Questionnaire.item.item.item` → `Questionnaire.item`: recursive elements are one element."""
    parts: list[str] = []
    for part in path.split("."):
        if not parts or parts[-1] != part:
            parts.append(part)
    return ".".join(parts)


def contexts_text(sd: dict[str, Any]) -> str:
    return ", ".join(str(c.get("expression")) for c in sd.get("context") or () if isinstance(c, dict))


def unknown_extension(url: str, modifier: bool) -> Finding:
    """An extension whose definition is not loaded: a modifier cannot be ignored, others can."""
    return finding("fs1102" if modifier else "fs1101", f"unknown extension {url}",
                   severity="error" if modifier else "warning")  # fmt: skip


def misplaced_extension(url: str, sd: dict[str, Any], path: str) -> Finding:
    # A warning: the conformance cases use extensions off their context in valid data.
    return finding("fs1103", f"extension {url} is not allowed on {path} (contexts: {contexts_text(sd)})",
                   severity="warning")  # fmt: skip
