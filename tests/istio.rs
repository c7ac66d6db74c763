//! istio/ works verbatim: each WasmPlugin in istio/, turned into the Envoy configuration Istio
//! would give the proxy, runs on real Envoy against the store that istio/'s ConfigMaps
//! configure (real Webdis and Redis), and shows a MISS then a HIT. A wrong manifest fails here:
//! a plugin config the filter refuses (Envoy never becomes ready), a store.cluster that is not
//! the name Istio gives the Webdis Service's cluster (no hit), a Webdis or Redis ACL that
//! refuses what the filter sends (no hit), a phase that puts the cache before authorization
//! (a cached response reaches an unauthorized client).
//!
//! What Istio does with a WasmPlugin, reproduced here (pilot/pkg/model/extensions.go,
//! pkg/wasm/convert.go):
//! - `pluginConfig` (a protobuf Struct) becomes a JSON string (protojson: numbers are doubles,
//!   keys sorted), handed to the filter as a `google.protobuf.StringValue` configuration;
//! - the filter config is a `TypedExtensionConfig` named `<namespace>.<name>`, delivered by ECDS
//!   (here from a file instead of ADS) to an HTTP filter of that name, with `root_id` =
//!   `pluginName`, the V8 runtime, `failure_policy` from `failStrategy`, and the module the
//!   agent pulled from the OCI image as a local file (here: extracted from the image
//!   scripts/oci.py builds, as Istio's fetcher extracts it);
//! - the filter sits in the HTTP chain by `phase`: AUTHN plugins, authentication, AUTHZ
//!   plugins, authorization (here an RBAC filter that admits requests with `x-authorized`),
//!   STATS plugins, stats, other plugins, router;
//! - a Service port becomes the cluster `outbound|<port>||<name>.<namespace>.svc.cluster.local`.
//!
//! `FLEET_CACHE_ISTIO_DIR=<dir>` runs the tests on another copy of istio/ (to see them fail).
//! Run with `cargo test --test istio`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use support::oci;
use support::stack::REPO;
use support::{Stack, StackOptions};

// ---------------------------------------------------------------------------------------------
// istio/ as Kubernetes reads it

fn istio_dir() -> PathBuf {
    std::env::var_os("FLEET_CACHE_ISTIO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("istio"))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: YAML: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every object the kustomization deploys (`kubectl apply -k istio/`).
fn manifests() -> Vec<Value> {
    let dir = istio_dir();
    let k = yaml_docs(&dir.join("kustomization.yaml"));
    let resources = k[0]["resources"]
        .as_array()
        .expect("kustomization resources");
    resources
        .iter()
        .flat_map(|r| yaml_docs(&dir.join(r.as_str().expect("resource path"))))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in istio/"))
}

fn wasm_plugins(docs: &[Value]) -> Vec<&Value> {
    docs.iter().filter(|d| d["kind"] == "WasmPlugin").collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

// ---------------------------------------------------------------------------------------------
// What Istio makes of them

/// The cluster Istio generates in every proxy for a Service port.
fn service_cluster(service: &Value, port_name: &str) -> String {
    let port = service["spec"]["ports"]
        .as_array()
        .expect("service ports")
        .iter()
        .find(|p| p["name"] == port_name)
        .unwrap_or_else(|| panic!("no port {port_name} in {service}"));
    format!(
        "outbound|{}||{}.{}.svc.cluster.local",
        port["port"],
        str_of(&service["metadata"]["name"], "service name"),
        str_of(&service["metadata"]["namespace"], "service namespace"),
    )
}

/// A number as protojson writes a `google.protobuf.Value` number (a double): the shortest
/// representation that reads back, in exponent form below 1e-6 and from 1e21 (Go's rules).
fn proto_number(n: &serde_json::Number) -> String {
    let f = n.as_f64().expect("a number");
    assert!(f.is_finite(), "a Struct cannot hold {f}");
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let e = format!("{f:e}");
        let (mantissa, exp) = e.split_once('e').expect("exponent");
        let sign = if exp.starts_with('-') { "" } else { "+" };
        format!("{mantissa}e{sign}{exp}")
    } else {
        format!("{f}")
    }
}

/// `pluginConfig` as Istio hands it to the filter: the Struct marshalled by protojson.
fn struct_json(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => proto_number(n),
        Value::String(s) => serde_json::to_string(s).expect("string"),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(struct_json).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => {
            let sorted: BTreeMap<_, _> = m.iter().collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), struct_json(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// The ECDS resource Istio sends for the plugin, after the agent replaced the image with the
/// local file it extracted.
fn extension_config(plugin: &Value, module: &Path) -> (String, Value) {
    let meta = &plugin["metadata"];
    let spec = &plugin["spec"];
    let resource_name = format!(
        "{}.{}",
        str_of(&meta["namespace"], "metadata.namespace"),
        str_of(&meta["name"], "metadata.name")
    );
    let mut config = json!({
        "name": resource_name,
        "root_id": spec["pluginName"].as_str().unwrap_or(""),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": module.to_str().expect("utf-8 path") } },
        },
    });
    if spec["pluginConfig"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": struct_json(&spec["pluginConfig"]),
        });
    }
    let policy = match spec["failStrategy"].as_str() {
        None => None,
        Some("FAIL_OPEN") => Some("FAIL_OPEN"),
        Some("FAIL_CLOSE") => Some("FAIL_CLOSED"),
        Some("FAIL_RELOAD") => Some("FAIL_RELOAD"),
        Some(other) => panic!("failStrategy {other} is not one Istio knows"),
    };
    if let Some(p) = policy {
        config["failure_policy"] = json!(p);
    }
    let ecds = json!({
        "version_info": "1",
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": resource_name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": config,
            },
        }],
    });
    (resource_name, ecds)
}

/// The proxy's listener and clusters. `{{...}}` are the harness' placeholders; `@...@` are
/// filled here.
const ENVOY_TEMPLATE: &str = r#"
# Istio's node identity shape (ECDS subscriptions need one).
node:
  id: sidecar~127.0.0.1~fleet-cache-test.default~default.svc.cluster.local
  cluster: fleet-cache-test.default
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} }
static_resources:
  listeners:
  - name: istio-like
    address:
      socket_address: { address: 127.0.0.1, port_value: {{LISTEN_PORT}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: origin
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: origin, timeout: 60s }
          http_filters:
@FILTERS@
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{ORIGIN_PORT}} }
  - name: "@STORE_CLUSTER@"
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: "@STORE_CLUSTER@"
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{WEBDIS_PORT}} }
"#;

/// Authorization as an AuthorizationPolicy makes it: requests without `x-authorized` get 403.
const AUTHZ_FILTER: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  authorized:
                    permissions: [{ any: true }]
                    principals: [{ header: { name: x-authorized, present_match: true } }]
"#;

const ROUTER_FILTER: &str = r#"          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

fn plugin_filter(resource_name: &str, ecds_path: &Path) -> String {
    format!(
        r#"          - name: "{resource_name}"
            config_discovery:
              config_source:
                path_config_source: {{ path: "{}" }}
                resource_api_version: V3
                initial_fetch_timeout: 0s
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              - type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
"#,
        ecds_path.display()
    )
}

/// The HTTP filter chain Istio builds, with the plugin placed by its phase.
fn http_filters(phase: &str, plugin: &str) -> String {
    let before_authz = matches!(phase, "AUTHN" | "AUTHZ");
    match phase {
        "AUTHN" | "AUTHZ" | "STATS" | "UNSPECIFIED_PHASE" => {}
        other => panic!("phase {other} is not one Istio knows"),
    }
    if before_authz {
        format!("{plugin}{AUTHZ_FILTER}{ROUTER_FILTER}")
    } else {
        format!("{AUTHZ_FILTER}{plugin}{ROUTER_FILTER}")
    }
}

/// envoy/webdis.json's placeholders put into the Webdis config of the ConfigMap, addresses
/// made loopback: the rest (ACL, limits) is used as written.
fn webdis_template(config_map: &Value) -> String {
    let text = str_of(&config_map["data"]["webdis.json"], "webdis.json");
    let mut cfg: Value = serde_json::from_str(text).expect("webdis.json is JSON");
    cfg["redis_host"] = json!("127.0.0.1");
    cfg["http_host"] = json!("127.0.0.1");
    cfg["redis_port"] = json!("@REDIS_PORT@");
    cfg["http_port"] = json!("@WEBDIS_PORT@");
    cfg["logfile"] = json!("{{WEBDIS_LOG}}");
    serde_json::to_string_pretty(&cfg)
        .unwrap()
        .replace("\"@REDIS_PORT@\"", "{{REDIS_PORT}}")
        .replace("\"@WEBDIS_PORT@\"", "{{WEBDIS_PORT}}")
}

/// The store's ACLs are the ones the filter is developed and tested against (envoy/): the
/// commands it needs change with it.
fn assert_same_acls(redis_conf: &str, webdis_template: &str) {
    let user_line = |conf: &str| {
        conf.lines()
            .map(str::trim)
            .find(|l| l.starts_with("user default "))
            .map(str::to_string)
    };
    let dev_redis = fs::read_to_string(format!("{REPO}/envoy/redis.conf")).unwrap();
    assert_eq!(
        user_line(redis_conf),
        user_line(&dev_redis),
        "the Redis ACL in istio/ (redis-config) differs from envoy/redis.conf"
    );
    let acl = |template: &str| {
        let text = template
            .replace("{{REDIS_PORT}}", "0")
            .replace("{{WEBDIS_PORT}}", "0");
        let v: Value = serde_json::from_str(&text).expect("webdis config is JSON");
        v["acl"].clone()
    };
    let dev_webdis = fs::read_to_string(format!("{REPO}/envoy/webdis.json")).unwrap();
    assert_eq!(
        acl(webdis_template),
        acl(&dev_webdis),
        "the Webdis ACL in istio/ (webdis-config) differs from envoy/webdis.json"
    );
}

// ---------------------------------------------------------------------------------------------
// The test

fn wait_published(s: &Stack, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stat(0, "fleet_cache_published").unwrap_or(0) < n {
        assert!(
            Instant::now() < deadline,
            "nothing published; envoy log:\n{}",
            s.envoy_log(0)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the WasmPlugin `namespace/name` of istio/ as Istio would, and checks MISS then HIT.
fn plugin_works_verbatim(plugin_namespace: &str) {
    let docs = manifests();
    let plugin = *wasm_plugins(&docs)
        .iter()
        .find(|p| p["metadata"]["namespace"] == plugin_namespace)
        .unwrap_or_else(|| panic!("no WasmPlugin in namespace {plugin_namespace}"));
    let spec = &plugin["spec"];
    let config = &spec["pluginConfig"];

    // The plugin pulls the image `make oci` builds: oci://<registry>/fleet-cache:<version>.
    let url = str_of(&spec["url"], "spec.url");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        url.starts_with("oci://")
            && (url.ends_with(&format!("/fleet-cache:{version}"))
                || url.contains("/fleet-cache@sha256:")),
        "spec.url {url} is not the image `make oci` builds (fleet-cache:{version})"
    );
    assert!(
        matches!(spec["type"].as_str(), None | Some("HTTP")),
        "an HTTP filter"
    );

    // The store: the Webdis Service's Istio cluster, and Webdis and Redis as configured.
    let webdis = find(&docs, "Service", "webdis");
    let cluster = service_cluster(webdis, "http");
    assert_eq!(
        config["store"]["cluster"], cluster,
        "store.cluster must be the cluster Istio generates for the webdis Service"
    );
    let host = cluster.rsplit("||").next().unwrap();
    assert_eq!(config["store"]["authority"], host, "store.authority");
    let redis_conf = str_of(
        &find(&docs, "ConfigMap", "redis-config")["data"]["redis.conf"],
        "redis.conf",
    );
    let webdis_config = webdis_template(find(&docs, "ConfigMap", "webdis-config"));
    assert_same_acls(redis_conf, &webdis_config);

    // The module, from the image, as Istio's agent gets it.
    let work = tempfile::Builder::new()
        .prefix("fleet-cache-istio-")
        .tempdir()
        .expect("tempdir");
    let work_dir = work.path().to_path_buf();
    let _work = if std::env::var("KEEP_TEST_DIRS").as_deref() == Ok("1") {
        eprintln!("KEEP_TEST_DIRS: kept {}", work.keep().display());
        None
    } else {
        Some(work)
    };
    let layout = work_dir.join("image");
    oci::build_image(&layout, version);
    let module = work_dir.join("plugin.wasm");
    fs::write(
        &module,
        oci::extract_plugin_wasm(&oci::open(&layout, version)),
    )
    .unwrap();

    let (resource_name, ecds) = extension_config(plugin, &module);
    let ecds_path = work_dir.join("ecds.yaml");
    fs::write(&ecds_path, serde_json::to_string_pretty(&ecds).unwrap()).unwrap();
    let phase = spec["phase"].as_str().unwrap_or("UNSPECIFIED_PHASE");
    let envoy = ENVOY_TEMPLATE
        .replace(
            "@FILTERS@\n",
            &http_filters(phase, &plugin_filter(&resource_name, &ecds_path)),
        )
        .replace("@STORE_CLUSTER@", &cluster);

    let namespace = str_of(&config["namespace"], "pluginConfig.namespace").to_string();
    let s = Stack::start(StackOptions {
        envoy_template: Some(envoy),
        webdis_template: Some(webdis_config),
        redis_conf: Some(redis_conf.to_string()),
        namespace: Some(namespace.clone()),
        ..StackOptions::default()
    });

    let authorized = [("x-authorized", "yes")];
    let path = format!("/istio-{plugin_namespace}?cc=max-age%3D60&size=2000");
    let miss = s.get(&path, &authorized);
    assert_eq!(miss.status, 200, "{:?}\n{}", miss.headers, s.envoy_log(0));
    let status = miss.header("cache-status").unwrap_or("");
    assert!(
        status.contains("fwd=uri-miss") && status.contains("stored"),
        "expected a stored MISS, got cache-status {status:?}; envoy log:\n{}",
        s.envoy_log(0)
    );
    wait_published(&s, 1);
    let hit = s.get(&path, &authorized);
    assert_eq!(hit.status, 200);
    assert!(
        hit.header("cache-status")
            .is_some_and(|c| c.starts_with("fleet-cache; hit")),
        "expected a HIT: {:?}",
        hit.headers
    );
    assert_eq!(hit.body, miss.body);
    assert_eq!(s.origin().count(&format!("/istio-{plugin_namespace}")), 1);
    assert_eq!(s.stat(0, "fleet_cache_hits"), Some(1));
    // Entries live under the plugin's namespace.
    assert_eq!(s.keys().len(), 1, "one entry under {namespace}:");

    // Authorization runs first: the cached response does not reach an unauthorized client.
    let denied = s.get(&path, &[]);
    assert_eq!(
        denied.status, 403,
        "phase {phase}: a cached response went to a request authorization refuses"
    );
    assert_eq!(s.stat(0, "fleet_cache_hits"), Some(1));

    // The store as istio/ configures it: Webdis refuses what the filter doesn't send, Redis
    // refuses what a script must not do, and keeps nothing on disk.
    assert_eq!(s.webdis_request("GET", "/KEYS/*", b"").status, 403);
    assert_eq!(s.webdis_request("GET", "/FLUSHALL", b"").status, 403);
    let script = s.webdis_request("GET", "/EVAL/return%20redis.call('FLUSHALL')/0.raw", b"");
    assert!(
        script.text().contains("ERR"),
        "a script may flush the store: {}",
        script.text()
    );
    assert_eq!(s.keys().len(), 1, "the entry survived the script");
    // `save ""`: no snapshots (redis-cli prints the name, then the empty value).
    assert_eq!(s.redis_cli(&["CONFIG", "GET", "save"]).trim_end(), "save");
    assert_eq!(
        s.redis_cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
    assert_eq!(
        s.redis_cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nallkeys-lru"
    );
}

#[test]
fn gateway_wasmplugin_misses_then_hits() {
    plugin_works_verbatim("istio-system");
}

#[test]
fn sidecar_wasmplugin_misses_then_hits() {
    let docs = manifests();
    let sidecar = wasm_plugins(&docs)
        .into_iter()
        .find(|p| p["spec"]["match"].is_array())
        .expect("a WasmPlugin with match (sidecars)");
    assert_eq!(
        sidecar["spec"]["match"],
        json!([{ "mode": "SERVER" }]),
        "inbound (SERVER) only"
    );
    plugin_works_verbatim(str_of(&sidecar["metadata"]["namespace"], "namespace"));
}

#[test]
fn plugin_config_is_marshalled_like_protojson() {
    let v: Value = serde_json::from_str(
        r#"{"b":{"z":1,"a":[true,null,"x\"y"]},"a":16777216,"c":0.5,"d":1e21,"e":0.0000001,"f":-3}"#,
    )
    .unwrap();
    assert_eq!(
        struct_json(&v),
        r#"{"a":16777216,"b":{"a":[true,null,"x\"y"],"z":1},"c":0.5,"d":1e+21,"e":1e-7,"f":-3}"#
    );
    // What the filter gets from istio/ parses back to the manifest's values.
    for p in wasm_plugins(&manifests()) {
        let text = struct_json(&p["spec"]["pluginConfig"]);
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p["spec"]["pluginConfig"], "{text}");
    }
}
