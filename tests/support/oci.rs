//! The filter's OCI image (scripts/oci.py, what `make oci` runs): building one into a test's
//! temp dir, reading an OCI image layout with every digest and size checked, and extracting
//! the module the way Istio's image fetcher does (pkg/wasm/imagefetcher.go, "compat" variant:
//! the last layer must be `application/vnd.oci.image.layer.v1.tar+gzip`, and the module is the
//! tar entry whose base name is `plugin.wasm`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::stack::{REPO, WASM_PATH};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const WASM_FILE: &str = "plugin.wasm";

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Runs scripts/oci.py on the `make build` module into `out`; returns the manifest digest it
/// printed.
pub fn build_image(out: &Path, tag: &str) -> String {
    if !Path::new(WASM_PATH).exists() {
        panic!("{WASM_PATH} does not exist: run `make build` first");
    }
    let o = Command::new("python3")
        .arg(format!("{REPO}/scripts/oci.py"))
        .args(["--wasm", WASM_PATH, "--out"])
        .arg(out)
        .args(["--tag", tag])
        .stdin(Stdio::null())
        .output()
        .expect("run python3 scripts/oci.py");
    assert!(
        o.status.success(),
        "scripts/oci.py failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// One blob of the layout, checked against its descriptor (digest and size).
pub fn read_blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let d = descriptor["digest"].as_str().expect("descriptor digest");
    let hex = d
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {d} is not sha256"));
    let path = layout.join("blobs/sha256").join(hex);
    let data = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        digest(&data),
        d,
        "{} does not hash to its name",
        path.display()
    );
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(data.len() as u64),
        "size of {d} in its descriptor"
    );
    data
}

pub struct Image {
    pub layout: PathBuf,
    pub index: Value,
    pub manifest_digest: String,
    pub manifest: Value,
    pub config: Value,
    /// (media type, compressed bytes), in manifest order.
    pub layers: Vec<(String, Vec<u8>)>,
}

fn json(data: &[u8], what: &str) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

/// Opens the image tagged `tag` in the OCI layout at `layout`, checking every blob.
pub fn open(layout: &Path, tag: &str) -> Image {
    let oci_layout = json(
        &fs::read(layout.join("oci-layout")).expect("read oci-layout"),
        "oci-layout",
    );
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index = json(
        &fs::read(layout.join("index.json")).expect("read index.json"),
        "index.json",
    );
    assert_eq!(index["schemaVersion"], 2);
    let descriptor = index["manifests"]
        .as_array()
        .expect("index manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in index.json: {index}"))
        .clone();
    assert_eq!(descriptor["mediaType"], MANIFEST_TYPE);
    let manifest = json(&read_blob(layout, &descriptor), "the manifest");
    let config = json(&read_blob(layout, &manifest["config"]), "the config");
    let layers = manifest["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| {
            let media_type = l["mediaType"]
                .as_str()
                .expect("layer mediaType")
                .to_string();
            (media_type, read_blob(layout, l))
        })
        .collect();
    Image {
        layout: layout.to_path_buf(),
        manifest_digest: descriptor["digest"].as_str().expect("digest").to_string(),
        index,
        manifest,
        config,
        layers,
    }
}

/// `gzip -dc` of `data`.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().expect("gzip stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip output");
    writer.join().expect("gzip writer").expect("write to gzip");
    assert!(
        out.status.success(),
        "gzip -dc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub struct TarEntry {
    pub name: String,
    /// b'0' (or 0) for a regular file.
    pub kind: u8,
    pub mode: u32,
    pub data: Vec<u8>,
}

fn octal(field: &[u8]) -> u64 {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(s.trim(), 8).unwrap_or_else(|e| panic!("tar octal field {s:?}: {e}"))
}

/// The entries of a (ustar) tar archive.
pub fn tar_entries(tar: &[u8]) -> Vec<TarEntry> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break; // end-of-archive blocks
        }
        let stored: u64 = h[..148]
            .iter()
            .chain(&[b' '; 8])
            .chain(&h[156..])
            .map(|&b| b as u64)
            .sum();
        assert_eq!(octal(&h[148..156]), stored, "tar header checksum at {at}");
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let prefix_end = h[345..500].iter().position(|&b| b == 0).unwrap_or(155);
        let mut name = String::from_utf8(h[..name_end].to_vec()).expect("utf-8 name");
        if prefix_end > 0 {
            name = format!(
                "{}/{name}",
                String::from_utf8_lossy(&h[345..345 + prefix_end])
            );
        }
        let size = octal(&h[124..136]) as usize;
        let start = at + 512;
        assert!(
            start + size <= tar.len(),
            "tar entry {name} runs past the end"
        );
        entries.push(TarEntry {
            name,
            kind: h[156],
            mode: octal(&h[100..108]) as u32,
            data: tar[start..start + size].to_vec(),
        });
        at = start + size.div_ceil(512) * 512;
    }
    entries
}

/// The module, extracted as Istio's fetcher extracts a compat image (see the module doc).
pub fn extract_plugin_wasm(image: &Image) -> Vec<u8> {
    let (media_type, layer) = image.layers.last().expect("the image has no layer");
    assert_eq!(
        media_type, LAYER_TYPE,
        "Istio's fetcher wants a {LAYER_TYPE} last layer"
    );
    tar_entries(&gunzip(layer))
        .into_iter()
        .find(|e| e.name.rsplit('/').next() == Some(WASM_FILE))
        .unwrap_or_else(|| panic!("no {WASM_FILE} in the layer"))
        .data
}
