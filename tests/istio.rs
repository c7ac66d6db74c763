//! istio/ works verbatim: each WasmPlugin in istio/, turned into the Envoy configuration Istio
//! would give the proxy, runs on real Envoy against the store that istio/'s manifests
//! configure (real Webdis and Redis, or a Redis Cluster behind Envoy's redis_proxy with
//! istio/cluster/), and shows a MISS then a HIT. What is deployed is what `kubectl apply -k`
//! deploys: the kustomization rendered by kustomize. The store runs as its containers run:
//! Redis from the container's own command (its users built from the Secret), the Cluster
//! formed by the bootstrap Job's own script, Webdis the upstream version the image has
//! (`.venv/webdis-upstream`) with the container's environment, the redis_proxy's config as in
//! its ConfigMap; the Secret is the test's, and only addresses are changed (loopback).
//! A wrong manifest fails here:
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
//! - a Service port becomes the cluster `outbound|<port>||<name>.<namespace>.svc.cluster.local`;
//! - `vmConfig.env` with `valueFrom: HOST` passes the proxy's environment variable to the VM
//!   (`vm_config.environment_variables.host_env_keys`).
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
use support::redis_script::RedisScript;
use support::stack::REPO;
use support::{Stack, StackOptions};
use support::{client, oci, secured};

// ---------------------------------------------------------------------------------------------
// istio/ as Kubernetes reads it

fn istio_dir() -> PathBuf {
    std::env::var_os("FLEET_CACHE_ISTIO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("istio"))
}

const KUSTOMIZE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/kustomize");
const WEBDIS_UPSTREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/webdis-upstream");

/// Every object `kubectl apply -k <dir>` deploys: the kustomization rendered by kustomize.
fn manifests_of(dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new(KUSTOMIZE)
        .arg("build")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{KUSTOMIZE}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "kustomize build {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 manifests");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("kustomize's YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// istio/: one Redis.
fn manifests() -> Vec<Value> {
    manifests_of(&istio_dir())
}

/// istio/cluster/: a Redis Cluster.
fn cluster_manifests() -> Vec<Value> {
    manifests_of(&istio_dir().join("cluster"))
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
    // vmConfig.env: HOST variables pass through from the proxy's environment, INLINE ones
    // are set.
    let mut host_keys = Vec::new();
    let mut inline = serde_json::Map::new();
    for e in spec["vmConfig"]["env"].as_array().into_iter().flatten() {
        let name = str_of(&e["name"], "vmConfig.env name").to_string();
        match e["valueFrom"].as_str().unwrap_or("INLINE") {
            "HOST" => host_keys.push(json!(name)),
            "INLINE" => {
                inline.insert(name, e["value"].clone());
            }
            other => panic!("vmConfig.env valueFrom {other} is not one Istio knows"),
        }
    }
    if !host_keys.is_empty() || !inline.is_empty() {
        config["vm_config"]["environment_variables"] =
            json!({ "host_env_keys": host_keys, "key_values": inline });
    }
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

// ---------------------------------------------------------------------------------------------
// The store, as its containers run it

/// The test's Secret `fleet-cache-store` (README: the operator creates it; never in istio/).
const SECRET: &[(&str, &str)] = &[
    (
        "webdis-credentials",
        "fleet-cache:istio-test-webdis-pw-31f9",
    ),
    ("redis-password", "istio-test-redis-pw-8c2e"),
    ("redis-admin-password", "istio-test-admin-pw-5a7d"),
];

fn secret(key: &str) -> String {
    SECRET
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("the Secret fleet-cache-store has no key {key} (README)"))
}

/// What a proxy's environment holds for a WasmPlugin's `vmConfig.env` HOST variable: the
/// README has the proxy container take it from the Secret.
fn proxy_env(name: &str) -> String {
    match name {
        "FLEET_CACHE_STORE_CREDENTIALS" => secret("webdis-credentials"),
        other => panic!("README says nothing of the proxy variable {other}"),
    }
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

/// A container's environment as the kubelet sets it: values, and keys of the Secret.
fn container_env(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = str_of(&e["name"], "env name").to_string();
            let value = match e["valueFrom"]["secretKeyRef"].as_object() {
                Some(r) => {
                    assert_eq!(r["name"], "fleet-cache-store", "{name}: another Secret");
                    secret(str_of(&r["key"], "secretKeyRef key"))
                }
                None => str_of(&e["value"], "env value").to_string(),
            };
            (name, value)
        })
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {env:?}"))
}

/// A container's `sh -c` script with its mounts made the test's: a ConfigMap's mount point
/// holds that ConfigMap's files (written under `work`), any other volume is the node's own
/// directory (`{{DIR}}`); `conf_file`, the Redis config, is the harness' (`{{REDIS_CONF}}`).
fn container_script(
    docs: &[Value],
    workload: &Value,
    c: &Value,
    work: &Path,
    conf_file: Option<&str>,
) -> String {
    let command: Vec<&str> = c["command"]
        .as_array()
        .expect("a command")
        .iter()
        .map(|a| str_of(a, "command argument"))
        .collect();
    assert_eq!(command[..2], ["sh", "-c"], "a shell script: {command:?}");
    let mut script = command[2].to_string();
    if let Some(f) = conf_file {
        assert!(script.contains(f), "the script does not read {f}");
        script = script.replace(f, "{{REDIS_CONF}}");
    }
    let volumes = workload["spec"]["template"]["spec"]["volumes"].as_array();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let mount = str_of(&m["mountPath"], "mountPath");
        let config_map = volumes
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .and_then(|v| v["configMap"]["name"].as_str());
        let local = match config_map {
            Some(name) => {
                let dir = work.join(format!("configmap-{name}"));
                fs::create_dir_all(&dir).unwrap();
                let cm = find(docs, "ConfigMap", name);
                for (file, text) in cm["data"].as_object().expect("ConfigMap data") {
                    fs::write(dir.join(file), str_of(text, file)).unwrap();
                }
                dir.to_str().expect("utf-8 path").to_string()
            }
            None => "{{DIR}}".to_string(),
        };
        script = script.replace(mount, &local);
    }
    script
}

/// The ConfigMap's Webdis config as Webdis reads it, on loopback: only where it listens and
/// logs changes (Redis' address comes from the environment).
fn webdis_template(config_map: &Value) -> String {
    let text = str_of(&config_map["data"]["webdis.json"], "webdis.json");
    let mut cfg: Value = serde_json::from_str(text).expect("webdis.json is JSON");
    cfg["http_host"] = json!("127.0.0.1");
    cfg["http_port"] = json!("@WEBDIS_PORT@");
    cfg["logfile"] = json!("{{WEBDIS_LOG}}");
    serde_json::to_string_pretty(&cfg)
        .unwrap()
        .replace("\"@WEBDIS_PORT@\"", "{{WEBDIS_PORT}}")
}

/// The redis_proxy's config from its ConfigMap, on loopback: its listener, its admin and its
/// seed nodes become the harness' placeholders.
fn redis_proxy_template(config_map: &Value) -> String {
    let mut text = str_of(&config_map["data"]["envoy.yaml"], "envoy.yaml").to_string();
    let loopback = |port: &str| format!("{{ address: 127.0.0.1, port_value: {port} }}");
    let mut swaps = vec![
        (
            "{ address: 0.0.0.0, port_value: 6380 }".to_string(),
            loopback("{{PROXY_PORT}}"),
        ),
        (
            "{ address: 127.0.0.1, port_value: 9901 }".to_string(),
            loopback("{{ADMIN_PORT}}"),
        ),
    ];
    // Node i of the StatefulSet is the harness' node i.
    for i in 0..6 {
        let placeholder = match i {
            0 => "{{REDIS_PORT}}".to_string(),
            _ => format!("{{{{REDIS_PORT_{}}}}}", i + 1),
        };
        swaps.push((
            format!(
                "{{ address: redis-cluster-{i}.redis-cluster.fleet-cache.svc.cluster.local, port_value: 6379 }}"
            ),
            loopback(&placeholder),
        ));
    }
    for (from, to) in swaps {
        assert!(
            text.contains(&from),
            "the redis_proxy config no longer has {from}"
        );
        text = text.replace(&from, &to);
    }
    assert!(
        !text.contains("svc.cluster.local"),
        "an address left: {text}"
    );
    text
}

/// The store of `docs` (istio/ or istio/cluster/) as the harness runs it.
fn store_options(docs: &[Value], work: &Path) -> StackOptions {
    let redis_conf = str_of(
        &find(docs, "ConfigMap", "redis-config")["data"]["redis.conf"],
        "redis.conf",
    );
    let cluster = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "redis-cluster");
    let redis = cluster.unwrap_or_else(|| find(docs, "Deployment", "redis"));
    let node = container(redis, "redis");
    let mut redis_env = container_env(node);
    let form = cluster.map(|_| {
        let job = find(docs, "Job", "redis-cluster-bootstrap");
        let c = container(job, "bootstrap");
        redis_env.extend(container_env(c).into_iter().filter(|(k, _)| k != "NODES"));
        container_script(docs, job, c, work, None)
    });
    let redis_script = RedisScript {
        start: container_script(docs, redis, node, work, Some("/etc/redis/redis.conf")),
        env: redis_env,
        form,
    };

    // Webdis: where the manifest points it is checked, then made the test's address.
    let webdis = find(docs, "Deployment", "webdis");
    let mut webdis_env = container_env(container(webdis, "webdis"));
    let (host, port) = (
        env_value(&webdis_env, "REDIS_HOST").to_string(),
        env_value(&webdis_env, "REDIS_PORT").to_string(),
    );
    let (redis_proxy, redis_proxy_env) = if cluster.is_some() {
        let proxy = container(webdis, "redis-proxy");
        assert_eq!(
            (host.as_str(), port.as_str()),
            (
                "127.0.0.1",
                proxy["ports"][0]["containerPort"].to_string().as_str()
            ),
            "Webdis talks to the redis_proxy in its pod"
        );
        (
            Some(redis_proxy_template(find(
                docs,
                "ConfigMap",
                "redis-proxy-config",
            ))),
            container_env(proxy),
        )
    } else {
        let service = find(docs, "Service", "redis");
        assert_eq!(
            host, "redis.fleet-cache.svc.cluster.local",
            "Webdis' Redis host"
        );
        assert_eq!(
            port,
            service["spec"]["ports"][0]["port"].to_string(),
            "Webdis' Redis port"
        );
        (None, Vec::new())
    };
    for (k, v) in webdis_env.iter_mut() {
        match k.as_str() {
            "REDIS_HOST" => *v = "127.0.0.1".into(),
            "REDIS_PORT" => *v = "{{REDIS_PORT}}".into(),
            _ => {}
        }
    }
    StackOptions {
        webdis_template: Some(webdis_template(find(docs, "ConfigMap", "webdis-config"))),
        webdis_binary: Some(WEBDIS_UPSTREAM.into()),
        webdis_env,
        redis_conf: Some(redis_conf.to_string()),
        redis_script: Some(redis_script),
        redis_cluster: cluster.is_some(),
        redis_proxy,
        redis_proxy_env,
        ..StackOptions::default()
    }
}

/// The store's ACLs are the ones the filter is developed and tested against (envoy/): the
/// commands it needs change with it.
fn assert_same_acls(docs: &[Value]) {
    let rights = str_of(
        &find(docs, "ConfigMap", "redis-config")["data"]["store-user.acl"],
        "store-user.acl",
    );
    let dev_redis = fs::read_to_string(format!("{REPO}/envoy/redis.conf")).unwrap();
    let dev_rights = dev_redis
        .lines()
        .find_map(|l| l.strip_prefix("user default on nopass "))
        .expect("envoy/redis.conf's store user");
    assert_eq!(
        rights.trim(),
        dev_rights.trim(),
        "the store user's rights in istio/ (redis-config) differ from envoy/redis.conf's"
    );
    let acl = |text: &str| {
        let v: Value = serde_json::from_str(
            &text
                .replace("{{REDIS_PORT}}", "0")
                .replace("{{WEBDIS_PORT}}", "0")
                .replace("{{WEBDIS_CREDENTIALS}}", "<credentials>")
                .replace("$WEBDIS_CREDENTIALS", "<credentials>"),
        )
        .expect("webdis config is JSON");
        v["acl"].clone()
    };
    let istio = str_of(
        &find(docs, "ConfigMap", "webdis-config")["data"]["webdis.json"],
        "webdis.json",
    );
    let dev_webdis = fs::read_to_string(format!("{REPO}/envoy/webdis-auth.json")).unwrap();
    assert_eq!(
        acl(istio),
        acl(&dev_webdis),
        "the Webdis ACL in istio/ (webdis-config) differs from envoy/webdis-auth.json"
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

/// Runs the WasmPlugin of `plugin_namespace` in `docs` (istio/ or istio/cluster/ rendered) as
/// Istio would, against the store `docs` deploys, and checks MISS then HIT.
fn plugin_works_verbatim(docs: &[Value], plugin_namespace: &str) {
    let plugin = *wasm_plugins(docs)
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

    // The store: the Webdis Service's Istio cluster; a Cluster only with redis_cluster.
    let webdis = find(docs, "Service", "webdis");
    let cluster = service_cluster(webdis, "http");
    assert_eq!(
        config["store"]["cluster"], cluster,
        "store.cluster must be the cluster Istio generates for the webdis Service"
    );
    let host = cluster.rsplit("||").next().unwrap();
    assert_eq!(config["store"]["authority"], host, "store.authority");
    let on_cluster = docs.iter().any(|d| d["kind"] == "StatefulSet");
    assert_eq!(
        config["store"]["redis_cluster"].as_bool().unwrap_or(false),
        on_cluster,
        "store.redis_cluster must say whether the store is a Redis Cluster"
    );
    assert_same_acls(docs);

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
    let envoy_env = ecds["resources"][0]["typed_config"]["config"]["vm_config"]
        ["environment_variables"]["host_env_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let k = str_of(k, "host_env_keys");
            (k.to_string(), proxy_env(k))
        })
        .collect();

    let namespace = str_of(&config["namespace"], "pluginConfig.namespace").to_string();
    let s = Stack::start(StackOptions {
        envoy_template: Some(envoy),
        namespace: Some(namespace.clone()),
        envoy_env,
        ..store_options(docs, &work_dir)
    });

    let authorized = [("x-authorized", "yes")];
    // The store answers keyed commands: a redis_proxy that is ready (and answers Webdis' PING
    // itself) may still be finding the Cluster's nodes for its first ones, and a lookup it
    // answers late is (rightly) a store timeout. Uncacheable paths, so nothing is stored.
    let mut warmup = 0;
    let answered = support::stack::poll(Duration::from_secs(10), || {
        warmup += 1;
        let r = s.get(&format!("/istio-warmup-{warmup}?cc=no-store"), &authorized);
        !r.header("cache-status").unwrap_or("").contains("store-")
    });
    assert!(
        answered,
        "the store never answered a lookup:\n{}",
        s.envoy_log(0)
    );
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

    // The store as istio/ configures it. Webdis: nothing without the credentials (PING aside,
    // for probes), and with them only what the filter sends; Redis refuses what a script must
    // not do, and whoever has no password.
    let webdis_get = |path: &str, credentials: Option<&str>| {
        let auth = credentials.map(|c| {
            let (user, password) = c.split_once(':').unwrap();
            secured::basic(user, password)
        });
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        client::request(s.webdis_port(), "GET", path, &headers, b"").expect("webdis answers")
    };
    let good = secret("webdis-credentials");
    let key = format!("/GET/{}.raw", s.keys()[0]);
    assert_eq!(webdis_get(&key, None).status, 403, "no credentials");
    assert_eq!(
        webdis_get(&key, Some("fleet-cache:wrong")).status,
        403,
        "wrong ones"
    );
    assert_eq!(webdis_get(&key, Some(&good)).status, 200, "the filter's");
    assert_eq!(webdis_get("/PING", None).status, 200, "PING, for probes");
    assert_eq!(webdis_get("/KEYS/*", Some(&good)).status, 403);
    assert_eq!(webdis_get("/FLUSHALL", Some(&good)).status, 403);
    // (One key: the redis_proxy routes a script by its first key.)
    let script = webdis_get(
        "/EVAL/return%20redis.call('FLUSHALL')/1/some-key.raw",
        Some(&good),
    );
    assert!(
        script.text().contains("ERR") || script.text().contains("NOPERM"),
        "a script may flush the store: {}",
        script.text()
    );
    assert_eq!(s.keys().len(), 1, "the entry survived the script");
    let noauth = secured::unauthenticated_ping(s.redis_port());
    assert!(
        noauth.starts_with("-NOAUTH"),
        "Redis' default user answers: {noauth}"
    );
    // The secrets appear in no log: the filter's, Webdis', Redis'.
    for (what, log) in [
        ("envoy", s.envoy_log(0)),
        ("webdis", s.webdis_log()),
        ("redis", s.redis_log()),
    ] {
        for (key, value) in SECRET {
            assert!(
                !log.contains(value),
                "{what}'s log shows the Secret's {key}"
            );
        }
    }
    // The Redis container's probes, as the kubelet runs them (in the container, with its
    // environment), against the node: they pass, and fail with a wrong password.
    let redis = docs
        .iter()
        .find(|d| {
            d["kind"] == "StatefulSet"
                || (d["kind"] == "Deployment" && d["metadata"]["name"] == "redis")
        })
        .expect("a Redis workload");
    let node = container(redis, "redis");
    for probe in ["readinessProbe", "livenessProbe"] {
        let command = &node[probe]["exec"]["command"];
        assert_eq!(command[0], "sh", "{probe}: an exec probe");
        let script = str_of(&command[2], "probe script").replace(
            "-h 127.0.0.1",
            &format!("-h 127.0.0.1 -p {}", s.redis_port()),
        );
        assert!(
            script.contains(" -p "),
            "{probe} does not name 127.0.0.1: {script}"
        );
        let run = |env: Vec<(String, String)>| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .envs(env)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("sh")
                .status
                .success()
        };
        assert!(run(container_env(node)), "{probe} fails: {script}");
        let wrong = container_env(node)
            .into_iter()
            .map(|(k, v)| {
                if k.ends_with("PASSWORD") {
                    (k, "wrong".into())
                } else {
                    (k, v)
                }
            })
            .collect();
        assert!(!run(wrong), "{probe} passes without the password: {script}");
    }
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
    plugin_works_verbatim(&manifests(), "istio-system");
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
    let namespace = str_of(&sidecar["metadata"]["namespace"], "namespace").to_string();
    plugin_works_verbatim(&docs, &namespace);
}

/// istio/cluster/: six nodes started by the StatefulSet's command, formed by the bootstrap
/// Job's script, Webdis through the redis_proxy of its pod.
#[test]
fn gateway_wasmplugin_misses_then_hits_on_the_redis_cluster() {
    plugin_works_verbatim(&cluster_manifests(), "istio-system");
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
    for p in wasm_plugins(&[manifests(), cluster_manifests()].concat()) {
        let text = struct_json(&p["spec"]["pluginConfig"]);
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p["spec"]["pluginConfig"], "{text}");
    }
}
