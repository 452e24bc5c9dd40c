// Times @atomic-ehr/fhirschema's `validate` over a corpus of FHIR resources.
//
// Usage: node bench/atomic_validate.mjs <sds.json> <corpus.json> [runs] [npm prefix dir]
//   sds.json:    JSON array of StructureDefinitions (R4 core + US Core); converted here with the
//                package's own `translate` (untimed).
//   corpus.json: {"<corpus name>": [resource, ...], ...}; every resource is validated against
//                the flattened schema of its meta.profile(s) (known ones), else its core type.
// Prints one JSON line: {count, seconds, valid, per_corpus, exceptions, ...}. `seconds` is the
// best of `runs` full passes after one untimed warm-up pass; schemas are flattened and cached
// per (resourceType, profiles) key, and the cache lookup is inside the timed loop.
//
// 0.0.14's validator is `validate(resource, schema, typeProfiles)`: one schema for the root (no
// base-chain resolution of its own) plus a name -> schema map used for element types. So the
// harness does what the package leaves to its caller: (1) profile -> base flattening with the
// package's own `merge` (dist/validator/profile.js), from Resource up to the profile; (2) every
// core type registered by name, complex types and resources flattened over their bases too (so
// `id`/`extension` inherited from Element are known); primitives as translated.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

// Node 20 lacks the ES2025 Set methods the validator calls.
if (!Set.prototype.intersection) {
  Set.prototype.intersection = function (other) {
    const out = new Set();
    for (const x of this) if (other.has(x)) out.add(x);
    return out;
  };
}
if (!Set.prototype.difference) {
  Set.prototype.difference = function (other) {
    const out = new Set();
    for (const x of this) if (!other.has(x)) out.add(x);
    return out;
  };
}

const [sdsPath, corpusPath, runsArg = "3", prefixArg = "bench/.scratch"] = process.argv.slice(2);
if (!sdsPath || !corpusPath) {
  console.error("usage: atomic_validate.mjs <sds.json> <corpus.json> [runs] [prefix]");
  process.exit(2);
}
const runs = Math.max(1, Number.parseInt(runsArg, 10));
const pkgDir = join(resolve(prefixArg), "node_modules", "@atomic-ehr", "fhirschema");
const dist = (p) => pathToFileURL(join(pkgDir, "dist", p)).href;
const { translate, validate } = await import(dist("index.js"));
const { merge } = await import(dist("validator/profile.js"));
const version = createRequire(import.meta.url)(join(pkgDir, "package.json")).version;

// --- schemas (untimed) ---------------------------------------------------------------------
const byUrl = new Map();
let translateErrors = 0;
for (const sd of JSON.parse(readFileSync(sdsPath, "utf8"))) {
  try {
    byUrl.set(sd.url, translate(sd));
  } catch {
    translateErrors += 1;
  }
}

const flatCache = new Map();
function flatten(url) {
  if (flatCache.has(url)) return flatCache.get(url);
  const schema = byUrl.get(url);
  let flat;
  if (schema === undefined) flat = undefined;
  else if (schema.base && byUrl.has(schema.base)) flat = merge(flatten(schema.base), schema);
  else flat = schema;
  flatCache.set(url, flat);
  return flat;
}

const typeProfiles = {};
for (const [url, schema] of byUrl) {
  if (!url.startsWith("http://hl7.org/fhir/StructureDefinition/")) continue;
  if (schema.derivation === "constraint") continue; // profiles (vitalsigns, ...) are not types
  if (!["primitive-type", "complex-type", "resource"].includes(schema.kind)) continue;
  typeProfiles[schema.type ?? schema.name] =
    schema.kind === "primitive-type" ? schema : flatten(url);
}

const CORE = "http://hl7.org/fhir/StructureDefinition/";
const rootCache = new Map();
const unknownProfiles = new Set();
function rootSchema(resource) {
  const rtype = resource?.resourceType;
  const profiles = resource?.meta?.profile ?? [];
  const key = `${rtype}|${profiles.join("|")}`;
  let schema = rootCache.get(key);
  if (schema !== undefined) return schema;
  const known = profiles.filter((p) => {
    if (byUrl.has(p)) return true;
    unknownProfiles.add(p);
    return false;
  });
  if (known.length === 0) schema = flatten(CORE + rtype) ?? null;
  else schema = known.map(flatten).reduce((acc, s) => merge(acc, s));
  rootCache.set(key, schema);
  return schema;
}

// --- corpus ----------------------------------------------------------------------------------
const corpus = JSON.parse(readFileSync(corpusPath, "utf8"));
const names = Object.keys(corpus);
const all = names.flatMap((n) => corpus[n]);

function isValid(resource) {
  const schema = rootSchema(resource);
  if (!schema) return false; // unknown resource type
  const out = validate(resource, schema, typeProfiles);
  return !out.outcome.issue.some((i) => i.severity === "error" || i.severity === "fatal");
}

// Warm-up pass, untimed: also collects the sanity figures.
const perCorpus = {};
const exceptionMessages = new Map();
let exceptions = 0;
let valid = 0;
for (const n of names) {
  let v = 0;
  for (const r of corpus[n]) {
    try {
      if (isValid(r)) v += 1;
    } catch (e) {
      exceptions += 1;
      const msg = String(e).slice(0, 100);
      exceptionMessages.set(msg, (exceptionMessages.get(msg) ?? 0) + 1);
    }
  }
  perCorpus[n] = { count: corpus[n].length, valid: v };
  valid += v;
}

let best = Infinity;
for (let i = 0; i < runs; i++) {
  const t0 = process.hrtime.bigint();
  for (const r of all) {
    try {
      isValid(r);
    } catch {
      // counted in the warm-up pass
    }
  }
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}

console.log(
  JSON.stringify({
    count: all.length,
    seconds: best,
    valid,
    per_corpus: perCorpus,
    exceptions,
    exception_examples: [...exceptionMessages].sort((a, b) => b[1] - a[1]).slice(0, 5),
    unknown_profiles: [...unknownProfiles].sort(),
    schemas: byUrl.size,
    translate_errors: translateErrors,
    runs,
    version,
    node: process.version,
  }),
);
