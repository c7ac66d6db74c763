#!/usr/bin/env python3
"""Checks the Kubernetes objects under a directory without a cluster:
`.venv/bin/python scripts/manifests/check_k8s.py istio`.

- Every object (all but Istio's kinds, which check_istio.mjs checks, and the Kustomization)
  against the Kubernetes OpenAPI schemas carried by kubernetes-validate, in strict mode: unknown
  fields fail, as `kubectl apply --validate=strict` would. Against the oldest and the newest
  Kubernetes version below.
- What the store must have: every Deployment container has resource requests and limits and
  both probes.
- The kustomization: known fields only, every resource it lists exists, and every manifest in
  the directory is listed (so `kubectl apply -k` deploys all of them).

It first proves, on copies of a real Deployment, that misspelt fields and bad values fail.
Exit status: 0 when everything is valid, 1 otherwise.
"""

import copy
import os
import sys

import kubernetes_validate
import yaml

# Kubernetes versions to validate against: the oldest one current Istio releases support, and
# the newest schemas kubernetes-validate carries.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

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
    """What the issue asks of every workload: resources and probes."""
    problems = []
    if doc.get("kind") == "Deployment":
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            name = c.get("name", "?")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not res.get(part):
                    problems.append(f"container {name}: no resources.{part}")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"container {name}: no {probe}")
    return problems


def check(doc):
    if not isinstance(doc, dict):
        return ["not an object"]
    return schema_problems(doc) + policy_problems(doc)


def kustomization_problems(root, path, doc):
    problems = [f"unknown field {k}" for k in doc if k not in KUSTOMIZATION_FIELDS]
    base = os.path.dirname(path)
    listed = set()
    for r in doc.get("resources", []):
        p = os.path.normpath(os.path.join(base, r))
        listed.add(p)
        if not os.path.isfile(p):
            problems.append(f"resource {r} does not exist")
    for f in yaml_files(root):
        f = os.path.normpath(f)
        if f != os.path.normpath(path) and f not in listed:
            problems.append(f"{os.path.relpath(f, base)} is not listed in resources")
    return problems


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
    objects, problems = [], []
    kustomizations = 0
    for path in yaml_files(root):
        try:
            docs = load(path)
        except yaml.YAMLError as e:
            problems.append(f"{path}: YAML: {e}")
            continue
        for i, doc in enumerate(docs):
            where = f"{path} #{i}"
            if not isinstance(doc, dict):
                problems.append(f"{where}: not an object")
            elif is_istio(doc):
                continue  # check_istio.mjs
            elif is_kustomization(doc):
                kustomizations += 1
                problems += [f"{where} Kustomization: {p}" for p in kustomization_problems(root, path, doc)]
            else:
                objects.append((where, doc))
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
        f"check_k8s: {len(objects)} Kubernetes objects and {kustomizations} kustomization under "
        f"{root} valid (Kubernetes {' and '.join(VERSIONS)}, strict; self-test ok)"
    )


if __name__ == "__main__":
    main()
