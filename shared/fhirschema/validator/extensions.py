"""Where an extension may be used: its StructureDefinition's `context` (R4 §2.28.4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhirschema.validator.findings import Finding, finding

if TYPE_CHECKING:
    from fhirschema.validator.walkconfig import WalkConfig

# Contexts that admit any element at all.
_ANYWHERE = frozenset(("Element", "Base"))


def allowed_anywhere(sd: dict[str, Any], parent_types: frozenset[str], host_url: str | None) -> bool:
    """Does a context of the extension defined by `sd` admit it on an element whose type is one of
    `parent_types` (the type and its bases), inside the extension `host_url`, whatever the
    element's path? The common case (`Element`, the resource's type), decided without the path."""
    contexts = sd.get("context")
    if not isinstance(contexts, list) or not contexts:
        return True
    for context in contexts:
        if not isinstance(context, dict):
            return True
        kind, expression = context.get("type"), context.get("expression")
        if not isinstance(expression, str):
            return True
        if kind == "fhirpath":
            continue
        if kind == "extension":
            # On an extension with that url (`url` or `url#element`): sits in its `extension`.
            if host_url is not None and expression.split("#", 1)[0] == host_url:
                return True
            continue
        if kind != "element":
            return True  # an unknown kind of context: not judged
        expression = _collapse(expression)
        if expression in _ANYWHERE or expression in parent_types:
            return True
        if expression.endswith(".extension") and "Extension" in parent_types:
            return True
    return False


def allowed_here(sd: dict[str, Any], parent_types: frozenset[str], path: str,
                 host_url: str | None) -> tuple[bool, list[str]]:  # fmt: skip
    """May the extension defined by `sd` sit on an element at `path` (e.g. `Patient.name`) whose
    type is one of `parent_types`, inside the extension `host_url` (when its host is an
    extension)? (True, []) when a context admits it statically, else (False, the FHIRPath
    contexts that may still admit it, evaluated against the data by the caller)."""
    if allowed_anywhere(sd, parent_types, host_url):
        return True, []
    path = _collapse(path)
    fhirpath: list[str] = []
    for context in sd["context"]:  # allowed_anywhere: a list of objects with string expressions
        kind, expression = context.get("type"), context["expression"]
        if kind == "fhirpath":
            fhirpath.append(expression)
            continue
        if kind != "element":
            continue
        expression = _collapse(expression)
        if expression == path:
            return True, []
        head, _, tail = expression.partition(".")
        # `Address.line` on `Patient.address.line`: a datatype's element, wherever the type is used
        if tail and path.endswith("." + tail) and head[:1].isupper() and head not in path.split(".", 1)[0]:
            return True, []
    return False, fhirpath


def _collapse(path: str) -> str:
    """`Questionnaire.item.item.item` → `Questionnaire.item`: recursive elements are one element."""
    parts: list[str] = []
    for part in path.split("."):
        if not parts or parts[-1] != part:
            parts.append(part)
    return ".".join(parts)


def contexts_text(sd: dict[str, Any]) -> str:
    return ", ".join(str(c.get("expression")) for c in sd.get("context") or () if isinstance(c, dict))


# Extensions that may be used without a definition, as the HL7 validator allows them: example
# domains (RFC 2606's, and the reference's acme.com and nema.org) and HL7's own tooling extensions.
_EXAMPLE_HOSTS = ("example.org", "example.com", "example.net", "acme.com", "nema.org")
_UNDEFINED_PREFIX = "http://hl7.org/fhir/tools/StructureDefinition/"


def _may_be_undefined(url: str) -> bool:
    if url.startswith(_UNDEFINED_PREFIX):
        return True
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return host == "example" or any(host == h or host.endswith("." + h) for h in _EXAMPLE_HOSTS)


def unknown_extension(url: str, modifier: bool) -> Finding:
    """An extension whose definition is not loaded: it cannot be checked, so it is not allowed
    (the reference's rule), except in example domains, where it is a warning."""
    code = "fs1102" if modifier else "fs1101"
    if _may_be_undefined(url):
        return finding(code, f"unknown extension {url}", severity="warning")
    return finding(code, f"unknown extension {url}: its definition is not loaded, so it is not allowed "
                   "here (load the package that defines it)")  # fmt: skip


def misplaced_extension(url: str, sd: dict[str, Any], path: str) -> Finding:
    # An error, as the reference validator decides (R4 §2.28.4: the context says where it may be used).
    return finding("fs1103", f"extension {url} is not allowed on {path} (contexts: {contexts_text(sd)})")


def context_invariants(sd: dict[str, Any]) -> list[str]:
    found = sd.get("contextInvariant")
    return [x for x in found if isinstance(x, str)] if isinstance(found, list) else []


def failed_invariant(url: str, expression: str) -> Finding:
    return finding("fs1103", f"extension {url} is not allowed here: its context invariant {expression} fails")


def undefined_sub_extension(url: str, host: str) -> Finding:
    return finding("fs1104", f"sub-extension {url!r} is not defined by the extension {host}")


Schemas = tuple[dict[str, Any], ...]


def extension_findings(
    url: Any,
    modifier: bool,
    extra: Schemas,
    host_url: str | None,
    parent: tuple[str | None, Any, str | None] | None,
    path: Callable[[], str],
    resource: dict[str, Any] | None,
    root: dict[str, Any] | None,
    config: WalkConfig,
) -> tuple[Schemas, list[Finding]]:
    """An extension with `url` (a `modifierExtension` when `modifier`), matched to a slice with
    schemas `extra` (or none), inside the extension `host_url`; `parent` is (type, element, url
    of the extension it is in) of the element it sits on, at the element `path()` names
    (`Patient.name`; asked only when the context depends on it), in `resource` with %rootResource `root`. Its definition's schemas (empty when unknown or a
    sub-extension) and the findings: an undefined url or sub-extension, a misplaced use, a failed
    context invariant."""
    if not isinstance(url, str) or ("://" not in url and not url.startswith("urn:")):
        # Relative urls name sub-extensions: the enclosing extension's slices define them.
        if isinstance(url, str) and not extra and host_url is not None and config.extension(host_url)[0]:
            return (), [undefined_sub_extension(url, host_url)]
        return (), []
    schemas, definition = config.extension(url)
    if not schemas:
        return (), ([] if extra else [unknown_extension(url, modifier)])
    if definition is None or parent is None:
        return schemas, []
    return schemas, context_findings(url, definition, parent, path, resource, root, config)


def context_findings(url: str, definition: dict[str, Any], parent: tuple[str | None, Any, str | None],
                     path: Callable[[], str], resource: dict[str, Any] | None, root: dict[str, Any] | None,
                     config: WalkConfig) -> list[Finding]:  # fmt: skip
    """Is the extension `url` used where its definition's `context` allows (R4 §2.28.4)?"""
    parent_type, host, host_url = parent
    ok = config.context_anywhere(url, definition, parent_type, host_url)
    fhirpath: list[str] = []
    where = ""
    if not ok:  # the element's path is built only when a context depends on it
        where = path()
        ok, fhirpath = config.context_allowed(url, definition, parent_type, where, host_url)
    invariants = config.invariants
    focus = resource if resource is not None else host
    if not ok and fhirpath and invariants is not None:
        # FHIRPath contexts: the element must be among what the expression selects.
        top = root if root is not None else host
        ok = any(invariants.selects(e, host, resource=focus, root=top) for e in fhirpath)
    elif not ok and fhirpath:
        ok = True  # cannot evaluate FHIRPath here: not judged
    if not ok:
        return [misplaced_extension(url, definition, where)]
    out: list[Finding] = []
    if invariants is not None:
        for expression in context_invariants(definition):
            if invariants.evaluate(expression, host, resource=focus).ok is False:
                out.append(failed_invariant(url, expression))
    return out
