#!/usr/bin/env python3
"""Checks the Kubernetes objects under a directory without a cluster:
`.venv/bin/python scripts/manifests/check_k8s.py istio`.

- Every kustomization that no other one includes (istio/, istio/cluster/) is rendered
  with kustomize (`.venv/kustomize build`, as `kubectl apply -k` would), and every object it
  renders (all but Istio's kinds, which check_istio.mjs checks) is checked against the
  Kubernetes OpenAPI schemas carried by kubernetes-validate, in strict mode: unknown fields
  fail, as `kubectl apply --validate=strict` would. Against the oldest and the newest
  Kubernetes version below. So an overlay's patches are checked by what they produce.
- What the store must have: every Deployment and StatefulSet container has resource requests
  and limits and both probes; every Job container resources.
- The kustomizations: known fields only, every resource and patch they list exists, and every
  manifest in the directory is listed by one of them (so `kubectl apply -k` deploys it).

It first proves, on copies of a real Deployment, that misspelt fields and bad values fail.
Exit status: 0 when everything is valid, 1 otherwise.
"""

import copy
import os
import subprocess
import sys

import kubernetes_validate
import yaml

# Kubernetes versions to validate against: the oldest one current Istio releases support, and
# the newest schemas kubernetes-validate carries.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

KUSTOMIZE = os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "kustomize")

KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "metadata", "resources", "components", "namespace", "namePrefix",
    "nameSuffix", "labels", "commonLabels", "commonAnnotations", "images", "replicas",
    "patches", "configMapGenerator", "secretGenerator", "generatorOptions",
}


def yaml_files(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith((".yaml", ".yml"))]
    return out


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def is_istio(doc):
    return str(doc.get("apiVersion", "")).split("/")[0].endswith("istio.io")


def is_kustomization(doc):
    return str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/")


def schema_problems(doc):
    problems = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path) or "(root)"
            problems.append(f"Kubernetes {version}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"Kubernetes {version}: no schema: {e}")
    return problems


def policy_problems(doc):
    """What the issue asks of every workload: resources, and probes for long-running ones."""
    problems = []
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "Job"):
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []):
            name = c.get("name", "?")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not res.get(part):
                    problems.append(f"container {name}: no resources.{part}")
            if kind == "Job":
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"container {name}: no {probe}")
    return problems


def check(doc):
    if not isinstance(doc, dict):
        return ["not an object"]
    return schema_problems(doc) + policy_problems(doc)


def listed_paths(path, doc):
    """The files and directories a kustomization names: resources and patch files."""
    base = os.path.dirname(path)
    names = list(doc.get("resources", []))
    names += [p["path"] for p in doc.get("patches", []) if isinstance(p, dict) and "path" in p]
    return [(n, os.path.normpath(os.path.join(base, n))) for n in names]


def kustomization_problems(path, doc):
    problems = [f"unknown field {k}" for k in doc if k not in KUSTOMIZATION_FIELDS]
    for name, p in listed_paths(path, doc):
        if not (os.path.isfile(p) or os.path.isfile(os.path.join(p, "kustomization.yaml"))):
            problems.append(f"{name} does not exist (nor a directory with a kustomization)")
    return problems


def render(kustomization_dir):
    out = subprocess.run(
        [KUSTOMIZE, "build", kustomization_dir], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[:5]
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None], []


def self_test(deployment):
    def misspell_container_field(d):
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["readinesProbe"] = c.pop("readinessProbe")

    def misspell_spec_field(d):
        d["spec"]["replica"] = 1

    def misspell_metadata_field(d):
        d["metadata"]["nmae"] = "x"

    def wrong_type(d):
        d["spec"]["replicas"] = "two"

    mutations = {
        "misspelt container field (readinesProbe)": misspell_container_field,
        "misspelt spec field (replica)": misspell_spec_field,
        "misspelt metadata field (nmae)": misspell_metadata_field,
        "wrong type (replicas: two)": wrong_type,
    }
    failures = []
    for name, mutate in mutations.items():
        d = copy.deepcopy(deployment)
        mutate(d)
        if not check(d):
            failures.append(f"accepted a {name}")
    return failures


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_k8s.py <dir>")
    root = sys.argv[1]
    problems = []
    kustomizations = {}  # directory -> its kustomization
    listed = set()
    for path in yaml_files(root):
        try:
            docs = load(path)
        except yaml.YAMLError as e:
            problems.append(f"{path}: YAML: {e}")
            continue
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict):
                problems.append(f"{path} #{i}: not an object")
            elif is_kustomization(doc):
                kustomizations[os.path.normpath(os.path.dirname(path))] = doc
                problems += [f"{path} Kustomization: {p}" for p in kustomization_problems(path, doc)]
                listed |= {p for _, p in listed_paths(path, doc)}
    for f in yaml_files(root):
        f = os.path.normpath(f)
        if os.path.dirname(f) not in kustomizations or os.path.basename(f) != "kustomization.yaml":
            if f not in listed:
                problems.append(f"{f} is listed by no kustomization")
    # Entry points: kustomizations no other one includes.
    entries = sorted(d for d in kustomizations if d not in listed)
    objects = []
    for d in entries:
        docs, errors = render(d)
        problems += [f"kustomize build {d}: {e}" for e in errors]
        for doc in docs or []:
            if not isinstance(doc, dict):
                problems.append(f"kustomize build {d}: an object is not a mapping")
            elif not is_istio(doc):
                objects.append((f"kustomize build {d}:", doc))
    for where, doc in objects:
        meta = doc.get("metadata") or {}
        label = f"{where} {doc.get('kind')} {meta.get('namespace', '')}/{meta.get('name', '')}"
        problems += [f"{label}: {p}" for p in check(doc)]
    if not objects:
        problems.append(f"no Kubernetes objects under {root}")
    deployments = [d for _, d in objects if d.get("kind") == "Deployment" and not check(d)]
    self_failures = self_test(deployments[0]) if deployments else []
    for f in self_failures:
        print(f"check_k8s: self-test: {f}", file=sys.stderr)
    for p in problems:
        print(f"INVALID {p}", file=sys.stderr)
    if problems or self_failures:
        sys.exit(1)
    print(
        f"check_k8s: {len(objects)} Kubernetes objects rendered from {len(entries)} "
        f"kustomizations ({', '.join(entries)}; {len(kustomizations)} in all) valid "
        f"(Kubernetes {' and '.join(VERSIONS)}, strict; self-test ok)"
    )


if __name__ == "__main__":
    main()
