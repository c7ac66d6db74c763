//! The OCI image `make oci` builds (scripts/oci.py) is one Istio's image fetcher accepts: an
//! OCI layout whose manifest, config and single layer are consistent (digests, sizes, diff_id),
//! in the Wasm image "compat" variant, holding exactly the module `make build` produced.
//! Run with `cargo test --test oci`.

mod support;

use std::fs;

use support::oci::{self, CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, WASM_FILE};
use support::stack::WASM_PATH;

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fleet-cache-oci-")
        .tempdir()
        .expect("tempdir")
}

#[test]
fn image_layout_is_consistent_and_holds_the_built_module() {
    let dir = temp_dir();
    let layout = dir.path().join("fleet-cache");
    let printed = oci::build_image(&layout, "1.2.3-test");
    let image = oci::open(&layout, "1.2.3-test");
    assert_eq!(printed, image.manifest_digest, "the digest oci.py prints");

    // The index: one manifest, tagged.
    let manifests = image.index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{}", image.index);

    // The manifest: OCI image manifest, OCI config, exactly one tar+gzip layer, compat variant.
    let m = &image.manifest;
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], MANIFEST_TYPE);
    assert_eq!(m["config"]["mediaType"], CONFIG_TYPE);
    assert_eq!(image.layers.len(), 1, "one layer: {m}");
    assert_eq!(image.layers[0].0, LAYER_TYPE);
    assert_eq!(m["annotations"]["module.wasm.image/variant"], "compat");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.version"],
        "1.2.3-test"
    );

    // The config: its one diff_id is the digest of the uncompressed layer.
    let tar = oci::gunzip(&image.layers[0].1);
    assert_eq!(image.config["rootfs"]["type"], "layers");
    assert_eq!(
        image.config["rootfs"]["diff_ids"],
        serde_json::json!([oci::digest(&tar)])
    );
    assert!(image.config["architecture"].is_string() && image.config["os"].is_string());

    // The layer: exactly one regular file, plugin.wasm, byte-identical to `make build`'s.
    let entries = oci::tar_entries(&tar);
    assert_eq!(entries.len(), 1, "one file in the layer");
    let e = &entries[0];
    assert_eq!(e.name, WASM_FILE);
    assert!(e.kind == b'0' || e.kind == 0, "a regular file");
    assert_eq!(e.mode & 0o777, 0o644);
    let built = fs::read(WASM_PATH).expect("read the built module");
    assert!(
        e.data == built,
        "the layer's plugin.wasm is the module `make build` wrote"
    );
    assert_eq!(oci::extract_plugin_wasm(&image), built);

    // Nothing else in the layout: manifest, config and layer are its only blobs.
    let blobs = fs::read_dir(layout.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 3);
}

#[test]
fn image_is_reproducible() {
    let (a, b) = (temp_dir(), temp_dir());
    let first = oci::build_image(&a.path().join("img"), "1.0.0");
    let again = oci::build_image(&b.path().join("img"), "1.0.0");
    assert_eq!(first, again, "same module and tag, same manifest digest");

    // Another tag changes the manifest (its annotations), not the layer.
    let other = oci::build_image(&b.path().join("img"), "1.0.1");
    assert_ne!(first, other);
    let layer = |dir: &std::path::Path, tag: &str| {
        oci::open(&dir.join("img"), tag).manifest["layers"][0]["digest"].clone()
    };
    assert_eq!(layer(a.path(), "1.0.0"), layer(b.path(), "1.0.1"));
}
