#!/usr/bin/env python3
"""Writes the filter as an OCI image (an OCI image layout directory) that Istio can pull.

Format: the Wasm image spec's "compat" variant, which Istio's image fetcher
(pkg/wasm/imagefetcher.go) tries first: one layer of media type
application/vnd.oci.image.layer.v1.tar+gzip, a tar holding `plugin.wasm`, and the manifest
annotation module.wasm.image/variant=compat. It uses only standard media types, so every
registry and every tool (skopeo, crane, docker/podman pull) handles it; Istio's other variant
(custom Wasm artifact media types) needs exactly two layers and registries that accept
artifacts.

No Docker engine, no build tool: the layout is plain files. The image is reproducible: the
same .wasm gives the same digests (fixed tar metadata, gzip without name or time, sorted JSON).

    scripts/oci.py --wasm target/wasm32-wasip1/release/fleet_cache.wasm \
                   --out target/oci/fleet-cache --tag 0.1.0

Prints the manifest digest (what a WasmPlugin can pin: oci://<repo>@sha256:...).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_NAME = "plugin.wasm"
IMAGE_TITLE = "fleet-cache"


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(wasm):
    """A tar with one regular file, plugin.wasm, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(WASM_NAME)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    # No file name and mtime 0 in the gzip header: same input, same bytes.
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def build(wasm, tag):
    """Returns (blobs by digest, manifest descriptor)."""
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar)
    config = canonical_json(
        {
            # A Wasm module runs on any host; these are the values the OCI Wasm artifact
            # guidance uses. Istio's fetcher reads the manifest directly and ignores them.
            "architecture": "wasm",
            "os": "wasip1",
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
            "config": {},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": sha256(layer), "size": len(layer)}],
            "annotations": {
                "module.wasm.image/variant": "compat",
                "org.opencontainers.image.title": IMAGE_TITLE,
                "org.opencontainers.image.version": tag,
            },
        }
    )
    blobs = {sha256(b): b for b in (layer, config, manifest)}
    descriptor = {
        "mediaType": MANIFEST_TYPE,
        "digest": sha256(manifest),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    return blobs, descriptor


def write_layout(out, blobs, descriptor):
    if os.path.exists(out):
        # Only ever replace an OCI layout (or an empty directory), never anything else.
        if os.listdir(out) and not os.path.exists(os.path.join(out, "oci-layout")):
            sys.exit(f"oci.py: {out} exists and is not an OCI layout; not replacing it")
        shutil.rmtree(out)
    blob_dir = os.path.join(out, "blobs", "sha256")
    os.makedirs(blob_dir)
    for digest, data in blobs.items():
        with open(os.path.join(blob_dir, digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(
            canonical_json(
                {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [descriptor]}
            )
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", required=True, help="the .wasm `make build` produced")
    ap.add_argument("--out", required=True, help="OCI layout directory to (re)create")
    ap.add_argument("--tag", required=True, help="the image's tag (its ref.name in the layout)")
    args = ap.parse_args()

    with open(args.wasm, "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"oci.py: {args.wasm} is not a Wasm module")
    blobs, descriptor = build(wasm, args.tag)
    write_layout(args.out, blobs, descriptor)
    print(descriptor["digest"])


if __name__ == "__main__":
    main()
