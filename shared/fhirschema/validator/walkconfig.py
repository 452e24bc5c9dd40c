"""What one walk reads: the configuration, the compiler and the lookups of the caches, handed in
by the `Validator` (which keeps them), so that the walk depends on no Validator: calls go one way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhirschema.validator.findings import Finding
    from fhirschema.validator.plans import Compiler, Plan
    from fhirschema.validator.references import ReferenceResolver

# The Validator's cached lookups (see Validator for what each answers).
ResourcePlan = Callable[[dict[str, Any], Any, Any, Sequence[str], bool], "tuple[Plan | None, list[Finding]]"]
ExtensionLookup = Callable[[str], "tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]"]
ContextLookup = Callable[[str, dict[str, Any], "str | None", str, "str | None"], "tuple[bool, list[str]]"]
AnywhereLookup = Callable[[str, dict[str, Any], "str | None", "str | None"], bool]
CodeLookup = Callable[[str, "str | None", str, "str | None"], Any]


class WalkConfig:
    def __init__(
        self,
        *,
        compiler: Compiler,
        invariants: Any,
        terminology: Any,
        references: ReferenceResolver | None,
        unknown_severity: str,
        anonymous: bool,
        resource_plan: ResourcePlan,
        extension: ExtensionLookup,
        context_allowed: ContextLookup,
        context_anywhere: AnywhereLookup,
        check_code: CodeLookup,
    ) -> None:
        self.compiler = compiler
        # Bound once: a bound method made per reference cost ~300 instructions (callgrind).
        self.is_type: Callable[[str], bool] = compiler.is_type
        self.invariants = invariants  # an Invariants, None: FHIRPath off
        self.terminology = terminology  # a Terminology, None: bindings not judged
        self.references = references
        self.unknown_severity = unknown_severity  # of what cannot be checked (strict: error)
        self.anonymous = anonymous  # overlays apply at the root: no type-plan shortcut
        self.resource_plan = resource_plan
        self.extension = extension
        self.context_allowed = context_allowed
        self.context_anywhere = context_anywhere
        self.check_code = check_code
