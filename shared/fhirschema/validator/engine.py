"""The `Validator`: its entry point and the hooks the walk calls (extensions, references, bindings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fhirschema.validator.extensions import allowed_here, contexts_text
from fhirschema.validator.issues import Issue, ValidationResult
from fhirschema.validator.plans import BINDING_SEVERITY, Compiler, ElementPlan
from fhirschema.validator.walk import _REF, Run


class SchemaSource(Protocol):
    def schema(self, ref: str) -> dict[str, Any] | None: ...


class ReferenceResolver(Protocol):
    def exists(self, reference: str) -> bool | None: ...  # None: cannot tell


class Validator:
    def __init__(
        self,
        source: SchemaSource,
        *,
        invariants: Any = None,
        terminology: Any = None,
        strict: bool = False,
        references: ReferenceResolver | None = None,
        overlays: Sequence[dict[str, Any]] = (),
    ) -> None:
        """`invariants`: an `Invariants` (None switches FHIRPath off); `terminology`: a `Terminology`.

        `overlays` are anonymous schemas applied at the root of every validated resource.
        """
        self.source = source
        self.compiler = Compiler(source)
        self.invariants = invariants
        self.terminology = terminology
        self.strict = strict
        self.unknown_severity = "error" if strict else "warning"
        self.references = references
        self.overlays = [(s, s.get("url")) for s in overlays]
        self.anonymous = bool(overlays)
        self._context_memo: dict[tuple[str, str | None, str], bool] = {}
        # extension url -> (its schema chain, its StructureDefinition for the context rules)
        self._extensions: dict[str, tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]] = {}
        self._code_memo: dict[tuple[str, str | None, str, str | None], Any] = {}

    def validate(self, resource: Any, profiles: Sequence[str] = ()) -> ValidationResult:
        issues: list[Issue] = []
        run = Run(self, issues)
        try:
            run.resource(resource, tuple(profiles))
        except RecursionError:
            issues.append(Issue("fs1302", "error", list(run.path), "data nested too deeply to validate"))
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        return ValidationResult(issues, rtype if isinstance(rtype, str) else None)

    # -- hooks used by the walk ------------------------------------------------------------

    def root_overlays(self, run: Run) -> list[tuple[dict[str, Any], str | None]]:
        """Anonymous/inline schemas with their `base` chains and `additionalProfiles`."""
        out: list[tuple[dict[str, Any], str | None]] = []
        for schema, url in self.overlays:
            out.append((schema, url))
            refs = [schema["base"]] if schema.get("base") else []
            refs += schema.get("additionalProfiles") or []
            for ref in refs:
                chain = self.compiler.chain(ref)
                if not chain:
                    run.issue(
                        "fs701", f"{ref} (base or profile of {url or 'an inline schema'}) is not loaded"
                    )
                out += chain
        return out

    def extension_schemas(self, run: Run, item: dict[str, Any], ep: ElementPlan,
                          extra: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:  # fmt: skip
        url = item.get("url")
        if not isinstance(url, str) or ("://" not in url and not url.startswith("urn:")):
            return extra  # relative urls name sub-extensions: the parent's slices define them
        found = self._extensions.get(url)
        if found is None:
            chain = self.compiler.chain(url)
            resolve = getattr(self.source, "resource", None)
            sd = resolve(url) if chain and resolve is not None else None
            found = (tuple(s for s, _ in chain), sd if isinstance(sd, dict) else None)
            if len(self._extensions) < MEMO_SIZE:  # bounded: urls come from the data
                self._extensions[url] = found
        schemas, definition = found
        if not schemas:
            if not extra:
                modifier = ep.key == "modifierExtension"
                run.issue("fs1102" if modifier else "fs1101", f"unknown extension {url}",
                          severity="error" if modifier else "warning")  # fmt: skip
            return extra
        if definition is not None and run.ext_parents:
            self._check_context(run, url, definition)
        return extra + schemas

    def _check_context(self, run: Run, url: str, sd: dict[str, Any]) -> None:
        parent_type, path = run.ext_parents[-1], run.element_path()
        key = (url, parent_type, path)
        ok = self._context_memo.get(key)
        if ok is None:
            ok = self._context_memo[key] = allowed_here(sd, parent_type, path)
        if not ok:
            # A warning: the conformance cases use extensions off their context in valid data.
            run.issue(
                "fs1103",
                f"extension {url} is not allowed on {path} (contexts: {contexts_text(sd)})",
                severity="warning",
            )

    def reference(self, run: Run, item: dict[str, Any], ep: ElementPlan) -> None:
        ref = item.get("reference")
        if not isinstance(ref, str):
            return
        # A plain reference's verdict depends on the string alone, unless it names several Bundle
        # entries or a resolver is in play: remembered per element (real data repeats references).
        memo = (
            ref[:1] != "#"
            and self.references is None
            and (not run.bundle_targets or len(run.bundle_targets.get(ref, ())) <= 1)
        )
        if memo and (verdict := ep.verdicts.get(ref)) is not None:
            _replay(run, verdict)
            return
        before = len(run.issues)
        self._reference(run, ref, ep)
        if memo and len(ep.verdicts) < MEMO_SIZE:
            ep.verdicts[ref] = _captured(run, before)

    def _reference(self, run: Run, ref: str, ep: ElementPlan) -> None:
        run.path.append("reference")
        try:
            if ref.startswith("#"):
                # Resolution against `contained` (ref-1); only judged when there is something contained.
                root = run.resources[0] if run.resources else {}
                contained = root.get("contained")
                ids = (
                    {c.get("id") for c in contained if isinstance(c, dict)}
                    if isinstance(contained, list)
                    else set()
                )
                if ref != "#" and contained and ref[1:] not in ids:
                    run.issue("fs1002", f"{ref} does not name a contained resource", severity="error")
                return
            m = _REF.match(ref)
            target_type = m.group("type") if m else None
            allowed = ep.ref_types()
            # Only judge real resource types: `.../Network/x` (an IG's own URL scheme) says nothing.
            known = (
                m is not None
                and target_type is not None
                and (not m.group("base") or bool(self.compiler.chain(target_type)))
            )
            if allowed is not None and known and target_type not in allowed:
                run.issue(
                    "fs1001", f"reference to {target_type} is not allowed here ({', '.join(sorted(allowed))})"
                )
            if m and not m.group("base") and len(run.bundle_targets.get(ref, ())) > 1:
                run.issue(
                    "fs1004",
                    f"{ref} matches several Bundle entries with different fullUrls",
                    severity="warning",
                )
            if self.references is not None and not ref.startswith("urn:"):
                found = self.references.exists(ref)
                if found is False:
                    run.issue("fs1002", f"{ref} cannot be resolved", severity="warning")
        finally:
            run.path.pop()

    def _check_code(self, vs: str, system: str | None, code: str, display: str | None) -> Any:
        key = (vs, system, code, display)  # strings only: _triple keeps nothing else
        found = self._code_memo.get(key)
        if found is None:
            found = self.terminology.check(vs, system, code, display)
            if len(self._code_memo) < 100_000:  # bounded: a validator lives as long as its process
                self._code_memo[key] = found
        return found

    def binding(self, run: Run, item: Any, ep: ElementPlan) -> None:
        """Judge `item` against `ep`'s binding (the walk calls this only when `ep.bound`)."""
        if type(item) is str and (verdict := ep.verdicts.get(item)) is not None:
            if verdict:  # a bound code seen before on this element: the commonest case
                _replay(run, verdict)
            return
        binding, origin = ep.binding  # type: ignore[misc]
        strength = binding["strength"]
        t = ep.type
        vs = binding["valueSet"]
        checks = _code_triples(item, t)
        if not checks:
            if t == "CodeableConcept" and strength == "required" and isinstance(item, dict):
                run.issue("fs501", f"no code given; a code from the required value set {vs} is needed",
                          profile=origin)  # fmt: skip
            return
        # The verdict depends on the (system, code, display) triples alone: remembered per element.
        # They are strings or None (_triple), so the key is always hashable.
        key: Any = item if type(item) is str else tuple(checks)
        verdict = ep.verdicts.get(key)
        if verdict is not None:
            _replay(run, verdict)
            return
        before = len(run.issues)
        self._judge_codes(run, checks, ep)
        if len(ep.verdicts) < MEMO_SIZE:
            ep.verdicts[key] = _captured(run, before)

    def _judge_codes(
        self, run: Run, checks: list[tuple[str | None, str, str | None]], ep: ElementPlan
    ) -> None:
        binding, origin = ep.binding  # type: ignore[misc]
        strength = binding["strength"]
        code, severity = BINDING_SEVERITY[strength]
        vs = binding["valueSet"]
        results = [self._check_code(vs, system, value, display) for system, value, display in checks]
        if any(r.status == "member" for r in results):
            for r in results:
                if r.display_ok is False:
                    run.issue(
                        "fs504", f"display does not match the code system: {r.message}", severity="warning"
                    )
            return
        if any(r.status == "unknown" for r in results):
            if strength in ("required", "extensible"):
                reason = next(r.message for r in results if r.status == "unknown")
                run.issue(
                    "fs505", f"value set {vs} cannot be checked offline: {reason}", severity="information"
                )
            return
        shown = ", ".join(f"{s}#{c}" if s else str(c) for s, c, _ in checks)
        run.issue(code, f"{shown} is not in the {strength} value set {vs}", severity=severity, profile=origin)


def _code_triples(item: Any, t: str | None) -> list[tuple[str | None, str, str | None]]:
    """The (system, code, display) triples a bound value of type `t` carries."""
    if t in ("code", "string", "uri"):
        return [(None, item, None)] if isinstance(item, str) else []
    if not isinstance(item, dict):
        return []
    obj: dict[str, Any] = item  # typed: compiled, .get is a direct dict lookup
    if t == "Coding" or t == "Quantity":
        code = obj.get("code")
        found = _triple(obj.get("system"), code, obj.get("display") if t == "Coding" else None)
        return [found] if found is not None and code else []
    triples = []  # CodeableConcept
    codings = obj.get("coding")
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict):
            found = _triple(coding.get("system"), coding.get("code"), coding.get("display"))
            if found is not None:
                triples.append(found)
    return triples


def _triple(system: Any, code: Any, display: Any) -> tuple[str | None, str, str | None] | None:
    """A (system, code, display) the terminology can judge: strings (a system may be absent);
    a display of another type is not compared. Wrong JSON types are the primitives' issues."""
    if not isinstance(code, str) or (system is not None and not isinstance(system, str)):
        return None
    return (system, code, display if isinstance(display, str) else None)


Verdict = tuple[tuple[str, str, str, str | None, tuple[str | int, ...]], ...]
MEMO_SIZE = 10_000  # verdicts remembered per element: bounded, a validator lives as long as its process


def _captured(run: Run, before: int) -> Verdict:
    """The issues reported since `before`, relative to the current path, to replay later."""
    base = len(run.path)
    return tuple(
        (i.code, i.severity, i.message, i.profile, tuple(i.path[base:])) for i in run.issues[before:]
    )


def _replay(run: Run, verdict: Verdict) -> None:
    for code, severity, message, profile, extra in verdict:
        run.issue(code, message, severity=severity, profile=profile, extra=list(extra) or None)
