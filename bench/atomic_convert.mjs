// Times @atomic-ehr/fhirschema's `translate` over a JSON array of StructureDefinitions.
//
// Usage: node bench/atomic_convert.mjs <sds.json> [runs] [npm prefix dir] [outputs.json]
// Prints one JSON line: {count, seconds, errors, error_urls, runs, version}. With an outputs
// path, an untimed extra pass writes the schemas (null where translate threw) for comparison.
// `seconds` is the best full pass; JSON parsing and input cloning are not timed.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [sdsPath, runsArg = "5", prefixArg = "bench/.scratch", outPath] = process.argv.slice(2);
if (!sdsPath) {
  console.error("usage: atomic_convert.mjs <sds.json> [runs] [prefix]");
  process.exit(2);
}
const runs = Math.max(1, Number.parseInt(runsArg, 10));
const pkgDir = join(resolve(prefixArg), "node_modules", "@atomic-ehr", "fhirschema");
// The package is ESM-only, so import its entry file by URL (no bare-specifier lookup from bench/).
const { translate } = await import(pathToFileURL(join(pkgDir, "dist", "index.js")).href);
const version = createRequire(import.meta.url)(join(pkgDir, "package.json")).version;

const text = readFileSync(sdsPath, "utf8");

// One pass over fresh copies: the converter might mutate its input, and we want every pass
// (ours and theirs) to see pristine SDs, so each pass gets its own parse of the file, untimed.
function pass(sds) {
  let errors = 0;
  const errorUrls = [];
  const t0 = process.hrtime.bigint();
  for (const sd of sds) {
    try {
      translate(sd);
    } catch (e) {
      errors += 1;
      if (errorUrls.length < 20) errorUrls.push(`${sd.url}: ${String(e).slice(0, 120)}`);
    }
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { count: sds.length - errors, errors, errorUrls, seconds };
}

pass(JSON.parse(text)); // warm-up: lets V8 tier up the hot functions before we time
let best = null;
for (let i = 0; i < runs; i++) {
  const r = pass(JSON.parse(text));
  if (best === null || r.seconds < best.seconds) best = r;
}
if (outPath) {
  const outputs = JSON.parse(text).map((sd) => {
    try {
      return translate(sd);
    } catch {
      return null;
    }
  });
  writeFileSync(outPath, JSON.stringify(outputs));
}
console.log(
  JSON.stringify({
    count: best.count,
    seconds: best.seconds,
    errors: best.errors,
    error_urls: best.errorUrls,
    runs,
    version,
  }),
);
