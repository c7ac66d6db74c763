// Checks every Istio resource under a directory (node check_istio.mjs istio) against Istio's
// CRD schema, as carried by @kubernetes-models/istio (OpenAPI schemas of Istio's CRDs compiled
// to validators): types, enums, formats, required fields.
//
// Those schemas, like the CRDs they come from, don't reject unknown fields (the API server
// prunes them silently: a misspelt `phaze: AUTHN` would vanish and the plugin would land in the
// wrong place). So this also fails on any field the schema does not know. A field is known if
// the compiled validator looks it up: the document is handed to the validator behind proxies
// that record which properties it reads and which objects it enumerates. In an object the
// validator reads properties of, a key it never asked for is unknown; an object it enumerates
// (a map such as matchLabels) or never looks into (pluginConfig, a free-form Struct) is open.
//
// It also proves, on a copy of a valid WasmPlugin, that it rejects misspelt fields and bad values.
// Exit status: 0 when every resource is valid, 1 otherwise.

import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { parseAllDocuments } from "yaml";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";

const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": WasmPlugin,
};
const TOP_LEVEL = new Set(["apiVersion", "kind", "metadata", "spec", "status"]);

function yamlFiles(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((name) => {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) return yamlFiles(p);
      return /\.ya?ml$/.test(name) ? [p] : [];
    });
}

function loadDocs(file) {
  return parseAllDocuments(readFileSync(file, "utf8")).flatMap((d, i) => {
    if (d.errors.length) throw new Error(`${file}: YAML: ${d.errors[0].message}`);
    const value = d.toJS();
    return value == null ? [] : [{ file, index: i, value }];
  });
}

// Wraps `value` (recursively) in proxies that record, per object, the keys read and whether it
// was enumerated. `records` collects one entry per plain object.
function track(value, path, records) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v, i) => track(v, `${path}/${i}`, records));
  const rec = { path, keys: Object.keys(value), read: new Set(), enumerated: false };
  records.push(rec);
  const inner = {};
  for (const [k, v] of Object.entries(value)) inner[k] = track(v, `${path}/${k}`, records);
  return new Proxy(inner, {
    get(t, k, r) {
      if (typeof k === "string") rec.read.add(k);
      return Reflect.get(t, k, r);
    },
    has(t, k) {
      if (typeof k === "string") rec.read.add(k);
      return Reflect.has(t, k);
    },
    ownKeys(t) {
      rec.enumerated = true;
      return Reflect.ownKeys(t);
    },
  });
}

// Problems with one resource: [] if valid.
function check(doc) {
  const problems = [];
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return ["not an object"];
  const id = `${doc.apiVersion}/${doc.kind}`;
  const Model = MODELS[id];
  if (!Model) return [`${id}: not an Istio kind this check knows`];
  for (const k of Object.keys(doc)) {
    if (!TOP_LEVEL.has(k)) problems.push(`/${k}: unknown field`);
  }
  const records = [];
  const proxied = track(doc, "", records);
  try {
    // The model's validate() runs the compiled schema on `this`: here, the proxied document.
    Model.prototype.validate.call(proxied);
  } catch (e) {
    problems.push(String(e.message || e));
  }
  for (const rec of records) {
    if (rec.path === "" || rec.enumerated || rec.read.size === 0) continue;
    for (const k of rec.keys) {
      if (!rec.read.has(k)) problems.push(`${rec.path}/${k}: unknown field`);
    }
  }
  return problems;
}

function describe(d) {
  const m = d.value.metadata || {};
  return `${d.file} #${d.index} ${d.value.kind} ${m.namespace || ""}/${m.name || ""}`;
}

// The checker must reject these mutations of a real WasmPlugin, or it proves nothing.
function selfTest(plugin) {
  const mutations = {
    "misspelt spec field (phaze)": (p) => {
      p.spec.phaze = p.spec.phase;
      delete p.spec.phase;
    },
    "misspelt nested field (selector.matchLabel)": (p) => {
      p.spec.selector = { matchLabel: { a: "b" } };
    },
    "misspelt metadata field (nmae)": (p) => {
      p.metadata.nmae = p.metadata.name;
    },
    "misspelt top-level field (spek)": (p) => {
      p.spek = p.spec;
    },
    "bad enum value (failStrategy: FAIL_OPENED)": (p) => {
      p.spec.failStrategy = "FAIL_OPENED";
    },
    "wrong type (priority: high)": (p) => {
      p.spec.priority = "high";
    },
  };
  const failures = [];
  for (const [name, mutate] of Object.entries(mutations)) {
    const copy = structuredClone(plugin);
    mutate(copy);
    if (check(copy).length === 0) failures.push(`accepted a ${name}`);
  }
  return failures;
}

function main() {
  const dir = process.argv[2];
  if (!dir) {
    console.error("usage: node check_istio.mjs <dir>");
    process.exit(2);
  }
  const docs = yamlFiles(dir)
    .flatMap(loadDocs)
    .filter((d) => String(d.value.apiVersion || "").includes("istio.io/"));
  const plugins = docs.filter((d) => d.value.kind === "WasmPlugin");
  if (plugins.length === 0) {
    console.error(`check_istio: no WasmPlugin under ${dir}`);
    process.exit(1);
  }
  let bad = 0;
  for (const d of docs) {
    const problems = check(d.value);
    if (problems.length) {
      bad++;
      console.error(`INVALID ${describe(d)}`);
      for (const p of problems) console.error(`  ${p}`);
    }
  }
  // The self-test mutates a valid WasmPlugin (when there is one).
  const valid = plugins.find((d) => check(d.value).length === 0);
  const selfFailures = valid ? selfTest(valid.value) : [];
  for (const f of selfFailures) console.error(`check_istio: self-test: ${f}`);
  const where = relative(process.cwd(), dir) || dir;
  if (selfFailures.length) process.exit(1);
  if (bad) {
    console.error(`check_istio: ${bad} of ${docs.length} Istio resources under ${where} invalid`);
    process.exit(1);
  }
  console.log(
    `check_istio: ${docs.length} Istio resources under ${where} valid ` +
      `(@kubernetes-models/istio schemas, unknown fields rejected; self-test ok)`,
  );
}

main();
