"""The `Validator`: configuration, the compiler and the caches; `validate` runs one walk per resource."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fhirschema.validator.extensions import allowed_anywhere, allowed_here
from fhirschema.validator.findings import Finding, finding
from fhirschema.validator.issues import Issue, ValidationResult
from fhirschema.validator.plans import Compiler, Plan
from fhirschema.validator.references import ReferenceResolver
from fhirschema.validator.walk import Run
from fhirschema.validator.walkconfig import WalkConfig

__all__ = ["ReferenceResolver", "SchemaSource", "Validator"]

MEMO_SIZE = 10_000  # extension definitions remembered: bounded, urls come from the data
CODE_MEMO_SIZE = 100_000  # code verdicts remembered: a validator lives as long as its process


class SchemaSource(Protocol):
    def schema(self, ref: str) -> dict[str, Any] | None: ...


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
        self._context_memo: dict[tuple[str, str | None, str, str | None], tuple[bool, list[str]]] = {}
        self._anywhere_memo: dict[tuple[str, str | None, str | None], bool] = {}
        self._type_names: dict[str, frozenset[str]] = {}
        # extension url -> (its schema chain, its StructureDefinition for the context rules)
        self._extensions: dict[str, tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]] = {}
        self._code_memo: dict[tuple[str, str | None, str, str | None], Any] = {}
        # What a walk reads (the walk knows no Validator: calls go one way, Validator -> walk).
        self.walk_config = WalkConfig(
            compiler=self.compiler,
            invariants=invariants,
            terminology=terminology,
            references=references,
            unknown_severity=self.unknown_severity,
            anonymous=self.anonymous,
            resource_plan=self.resource_plan,
            extension=self.extension,
            context_allowed=self.context_allowed,
            context_anywhere=self.context_anywhere,
            check_code=self.check_code,
        )

    def validate(self, resource: Any, profiles: Sequence[str] = ()) -> ValidationResult:
        issues: list[Issue] = []
        run = Run(self.walk_config, issues)
        try:
            run.resource(resource, tuple(profiles))
        except RecursionError:
            issues.append(Issue("fs1302", "error", run.where(), "data nested too deeply to validate"))
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        return ValidationResult(issues, rtype if isinstance(rtype, str) else None)

    # -- configuration and caches the walk reads (answers only: the walk reports) --------------

    def resource_plan(self, data: dict[str, Any], rtype: Any, meta: Any, profiles: Sequence[str],
                      root: bool) -> tuple[Plan | None, list[Finding]]:  # fmt: skip
        """The plan for a resource's profiles, `meta.profile`s and type (None: nothing to check it
        against); `root`: the validated resource itself, not one inside it (overlays apply)."""
        findings: list[Finding] = []
        schemas = []
        for url in profiles:
            chain = self.compiler.chain(url)
            if not chain:
                # Asked for by the caller: a profile that was not checked cannot be passed (issue 9).
                severity = "error" if root else self.unknown_severity
                findings.append(finding("fs701", f"profile {url} is not loaded: load the package or file "
                                        "that defines it", severity))  # fmt: skip
            schemas += chain
        meta_profiles = meta.get("profile") if isinstance(meta, dict) else None
        # `entry`, not `url`: compiled, a variable keeps the type of its first use (str above),
        # and these are raw JSON values.
        for entry in meta_profiles if isinstance(meta_profiles, list) else ():
            if not isinstance(entry, str):
                continue
            chain = self.compiler.chain(entry.split("|", 1)[0]) or self.compiler.chain(entry)
            if not chain:
                findings.append(finding("fs701", f"meta.profile {entry} is not loaded", self.unknown_severity,
                                        extra=("meta", "profile")))  # fmt: skip
            schemas += chain
        if isinstance(rtype, str):
            chain = self.compiler.chain(rtype)
            if not chain and not self.anonymous:
                # Nothing known to validate it against, so it cannot be valid (in every mode).
                findings.append(finding("fs701", f"unknown resourceType {rtype!r}: no definition of it "
                                        "is loaded (a typo, or a package missing?)"))  # fmt: skip
                return None, findings
            schemas += chain
        elif "resourceType" in data or not self.anonymous:
            findings.append(finding("fs701" if self.strict else "fs201", "missing or invalid resourceType"))
        if root:
            overlays, found = self.root_overlays()
            findings += found
            schemas = overlays + schemas
        return self.compiler.plan(schemas), findings

    def root_overlays(self) -> tuple[list[tuple[dict[str, Any], str | None]], list[Finding]]:
        """Anonymous/inline schemas with their `base` chains and `additionalProfiles`."""
        out: list[tuple[dict[str, Any], str | None]] = []
        findings: list[Finding] = []
        for schema, url in self.overlays:
            out.append((schema, url))
            refs = [schema["base"]] if schema.get("base") else []
            refs += schema.get("additionalProfiles") or []
            for ref in refs:
                chain = self.compiler.chain(ref)
                if not chain:
                    findings.append(finding(
                        "fs701", f"{ref} (base or profile of {url or 'an inline schema'}) is not loaded"
                    ))  # fmt: skip
                out += chain
        return out, findings

    def extension(self, url: str) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
        """An extension's schema chain (empty: unknown) and its StructureDefinition."""
        found = self._extensions.get(url)
        if found is None:
            chain = self.compiler.chain(url)
            resolve = getattr(self.source, "resource", None)
            sd = resolve(url) if chain and resolve is not None else None
            found = (tuple(s for s, _ in chain), sd if isinstance(sd, dict) else None)
            if len(self._extensions) < MEMO_SIZE:  # bounded: urls come from the data
                self._extensions[url] = found
        return found

    def context_allowed(self, url: str, sd: dict[str, Any], parent_type: str | None, path: str,
                        host_url: str | None) -> tuple[bool, list[str]]:  # fmt: skip
        """`extensions.allowed_here`, remembered (the answer depends on these strings alone)."""
        key = (url, parent_type, path, host_url)
        found = self._context_memo.get(key)
        if found is None:
            found = allowed_here(sd, self.type_names(parent_type), path, host_url)
            if len(self._context_memo) < CODE_MEMO_SIZE:
                self._context_memo[key] = found
        return found

    def context_anywhere(
        self, url: str, sd: dict[str, Any], parent_type: str | None, host_url: str | None
    ) -> bool:
        """`extensions.allowed_anywhere`, remembered: most uses are decided without their path."""
        key = (url, parent_type, host_url)
        found = self._anywhere_memo.get(key)
        if found is None:
            found = allowed_anywhere(sd, self.type_names(parent_type), host_url)
            if len(self._anywhere_memo) < CODE_MEMO_SIZE:
                self._anywhere_memo[key] = found
        return found

    def type_names(self, type_name: str | None) -> frozenset[str]:
        """A type and the types it derives from (`Patient`, `DomainResource`, `Resource`)."""
        if type_name is None:
            return frozenset()
        found = self._type_names.get(type_name)
        if found is None:
            names = {type_name}
            for schema, _ in self.compiler.chain(type_name):
                t = schema.get("type")
                if isinstance(t, str) and schema.get("derivation") != "constraint":
                    names.add(t)
                name = schema.get("name")
                if isinstance(name, str):
                    names.add(name)
            found = self._type_names[type_name] = frozenset(names)
        return found

    def check_code(self, vs: str, system: str | None, code: str, display: str | None) -> Any:
        """The terminology's verdict on one code (a `CodeCheck`), remembered."""
        key = (vs, system, code, display)  # strings only: bindings._triple keeps nothing else
        found = self._code_memo.get(key)
        if found is None:
            found = self.terminology.check(vs, system, code, display)
            if len(self._code_memo) < CODE_MEMO_SIZE:
                self._code_memo[key] = found
        return found
