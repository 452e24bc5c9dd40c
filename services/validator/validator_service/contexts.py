"""The replica's one cache: package contexts and their compiled Validators.

A context is a `FhirContext` (the engine's own, exactly what `fhirschema validate --package`
builds) over packages this replica materialised from the repository, plus the uploaded schemas.
Which context a request gets (`ValidateRequest.packages`):

- none named: every registered package of the replica's FHIR version, the core package first,
  then by name, the newest version of a name first — so an unversioned canonical resolves to its
  newest version, as the storage index does; `url|version` resolves to that version;
- named (`["hl7.fhir.us.core#3.1.1"]`, as the CLI's `--package`): those packages and their
  dependency closure, in the CLI's order (named first, then dependencies breadth first, the first
  package of a name wins); a dependency is taken at its version if registered, else the newest
  registered version of that name (a warning in the context), else it is missing (a warning).
  A named package that is not registered is an `UnknownPackage` error, never a verdict.

Uploaded schemas (origin "upload") are added to every context and take precedence.

One invalidation rule: a context remembers the fingerprint of what it was built from (the
packages of its closure with their sha256, and the uploads' revision); when the repository
changes (`replace`), every context whose fingerprint differs is dropped with its Validators and
is built again on next use. Nothing expires by time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhirschema.context import FhirContext
from fhirschema.ids import PackageId, version_key
from fhirschema.package import Package
from fhirschema.terminology import Terminology
from fhirschema.validator import Validator
from fhirschema_bus import metrics as m
from fhirschema_bus.contracts import ValidateOptions

ValidatorFactory = Callable[[FhirContext, Terminology, ValidateOptions], Validator]
Fingerprint = tuple[Any, ...]


class UnknownPackage(LookupError):
    """A request named a package context the repository does not hold."""


@dataclass(frozen=True)
class Materialised:
    """The packages a replica holds, and the uploads: what every context is built from."""

    packages: dict[str, Package] = field(default_factory=dict)  # by name#version
    digests: dict[str, str] = field(default_factory=dict)  # name#version -> sha256 (or the file)
    core: str | None = None  # the core package of the replica's FHIR version
    uploads: tuple[dict[str, Any], ...] = ()
    uploads_revision: int = 0
    default_order: tuple[str, ...] | None = None  # local mode: the packages as loaded


class Context:
    def __init__(self, key: tuple[str, ...], fingerprint: Fingerprint, fhir: FhirContext) -> None:
        self.key, self.fingerprint, self.fhir = key, fingerprint, fhir
        self.terminology = Terminology(fhir.resource)
        self.validators: OrderedDict[tuple[Any, ...], Validator] = OrderedDict()


class Contexts:
    def __init__(
        self, factory: ValidatorFactory, validators_per_context: int = 32, contexts: int = 8
    ) -> None:
        self._factory = factory
        self._size = validators_per_context
        self._max_contexts = contexts
        self._have = Materialised()
        self._contexts: OrderedDict[tuple[str, ...], Context] = OrderedDict()
        self._lock = threading.RLock()

    # --- what the replica holds -----------------------------------------------------------------

    @property
    def materialised(self) -> Materialised:
        return self._have

    def replace(self, have: Materialised) -> list[tuple[str, ...]]:
        """New packages / uploads: drop every context built from something else. Returns the
        keys of the contexts dropped."""
        with self._lock:
            self._have = have
            stale = [key for key, ctx in self._contexts.items() if ctx.fingerprint != self._fingerprint(key)]
            for key in stale:
                del self._contexts[key]
            return stale

    # --- lookups (worker threads) ------------------------------------------------------------

    def validator(
        self, packages: Sequence[str], profiles: Sequence[str], options: ValidateOptions
    ) -> Validator:
        ctx = self.context(tuple(packages))
        key = (tuple(sorted(profiles)), options.invariants, options.strict)
        with self._lock:
            if (v := ctx.validators.get(key)) is not None:
                ctx.validators.move_to_end(key)
                m.CACHE.labels("validator", "hit").inc()
                return v
            m.CACHE.labels("validator", "miss").inc()
            v = ctx.validators[key] = self._factory(ctx.fhir, ctx.terminology, options)
            while len(ctx.validators) > self._size:
                ctx.validators.popitem(last=False)
            return v

    def context(self, key: tuple[str, ...] = ()) -> Context:
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is not None:
                self._contexts.move_to_end(key)
                m.CACHE.labels("context", "hit").inc()
                return ctx
            m.CACHE.labels("context", "miss").inc()
            packages, warnings = self.closure(key)
            fhir = FhirContext(packages)
            fhir.warnings.extend(warnings)
            for schema in self._have.uploads:
                fhir.add_schema(schema)
            ctx = self._contexts[key] = Context(key, self._fingerprint(key), fhir)
            while len(self._contexts) > self._max_contexts:
                oldest = next(k for k in self._contexts if k != ())  # the default context stays
                del self._contexts[oldest]
            return ctx

    def __len__(self) -> int:
        with self._lock:
            return sum(len(c.validators) for c in self._contexts.values())

    # --- which packages a context holds ------------------------------------------------------------

    def closure(self, key: tuple[str, ...]) -> tuple[list[Package], list[str]]:
        have = self._have
        if not key:
            return [have.packages[p] for p in self._default_order()], []
        order: list[Package] = []
        warnings: list[str] = []
        queue: list[tuple[str, str | None]] = [(spec, None) for spec in key]
        while queue:
            spec, required_by = queue.pop(0)
            pkg = self._find(spec)
            if pkg is None:
                if required_by is None:
                    raise UnknownPackage(
                        f"package {spec} is not in the repository: ingest it first "
                        f"(registered: {', '.join(sorted(have.packages)) or 'none'})"
                    )
                warnings.append(f"missing dependency {spec} (required by {required_by})")
                continue
            if required_by is not None and pkg.id != spec:
                warnings.append(f"dependency {spec} of {required_by}: using {pkg.version} instead")
            if any(p.name == pkg.name for p in order):
                continue
            order.append(pkg)
            for name, version in pkg.dependencies.items():
                if not any(p.name == name for p in order):
                    queue.append((f"{name}#{version}", pkg.id))
        return order, warnings

    def _find(self, spec: str) -> Package | None:
        have = self._have
        if spec in have.packages:
            return have.packages[spec]
        name, _ = PackageId.split(spec)
        versions = [p for p in have.packages.values() if p.name == name]
        return max(versions, key=lambda p: version_key(p.version)) if versions else None

    def _default_order(self) -> list[str]:
        have = self._have
        if have.default_order is not None:
            return list(have.default_order)
        pkgs = have.packages
        rest = sorted(
            (pid for pid in pkgs if pid != have.core), key=lambda pid: version_key(pkgs[pid].version)
        )
        rest.reverse()  # the newest version first ...
        rest.sort(key=lambda pid: pkgs[pid].name)  # ... within each name (a stable sort)
        return ([have.core] if have.core in have.packages else []) + rest

    def _fingerprint(self, key: tuple[str, ...]) -> Fingerprint:
        try:
            packages, _ = self.closure(key)
        except UnknownPackage:
            return ("unknown",)
        digests = self._have.digests
        return (*((p.id, digests.get(p.id)) for p in packages), self._have.uploads_revision)
