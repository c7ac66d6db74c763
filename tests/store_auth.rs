//! Authenticated store access, through real processes: the filter sends HTTP Basic credentials
//! (`store.credentials`, or `store.credentials_env` from the VM's environment), Webdis' ACL
//! accepts commands only with them (`http_basic_auth`, envoy/webdis-auth.json), Webdis logs in
//! to an Envoy redis_proxy (envoy/redis-proxy.yaml) with its password, and the proxy logs in to
//! Redis as its own ACL user: Redis' `default` user is off. A credential never shows in a
//! response or in Envoy's log.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::client::request;
use support::secured::{
    PROXY_PASSWORD, REDIS_PASSWORD, WEBDIS_PASSWORD, WEBDIS_USER, basic, credentials, options,
    repo_file, unauthenticated_ping,
};
use support::{Resp, Stack, StackOptions, poll};

/// The whole chain secured; `store` is what the plugin config says about credentials.
fn secured(store: Value) -> Stack {
    secured_with(store, None, 2)
}

fn secured_with(store: Value, envoy_template: Option<String>, workers: usize) -> Stack {
    Stack::start(StackOptions {
        envoy_template,
        concurrency: workers,
        ..options(store, "envoy/redis-proxy.yaml", "")
    })
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

#[test]
fn webdis_and_redis_refuse_whoever_has_no_credentials() {
    let st = secured(json!({ "credentials": credentials() }));
    let webdis = |auth: Option<String>| {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        request(st.webdis_port(), "GET", "/GET/some-key", &headers, &[]).expect("webdis answers")
    };
    assert_eq!(webdis(None).status, 403, "no credentials");
    assert_eq!(
        webdis(Some(basic(WEBDIS_USER, "wrong"))).status,
        403,
        "a wrong password"
    );
    assert_eq!(
        webdis(Some(basic("someone", WEBDIS_PASSWORD))).status,
        403,
        "a wrong user"
    );
    let ok = webdis(Some(basic(WEBDIS_USER, WEBDIS_PASSWORD)));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().contains("\"GET\":null"), "{}", ok.text());
    // PING for anyone (readiness probes): it reads no key.
    let ping = request(st.webdis_port(), "GET", "/PING", &[], &[]).unwrap();
    assert!(
        ping.status == 200 && ping.text().contains("PONG"),
        "{}",
        ping.text()
    );
    // A command the ACL does not enable stays refused, credentials or not.
    let set = request(
        st.webdis_port(),
        "GET",
        "/SET/k/v",
        &[("authorization", &basic(WEBDIS_USER, WEBDIS_PASSWORD))],
        &[],
    )
    .unwrap();
    assert_eq!(set.status, 403);
    // Redis itself: the default user is off.
    assert!(unauthenticated_ping(st.redis_port()).starts_with("-NOAUTH"));
}

#[test]
fn the_filter_presents_its_credentials_and_caches_through_the_secured_chain() {
    let st = secured(json!({ "credentials": credentials() }));
    let path = "/auth/a?cc=max-age%3D60";
    let miss = st.get(path, &[]);
    assert_eq!(miss.status, 200);
    assert!(
        cache_status(&miss).contains("fwd=uri-miss"),
        "{}",
        cache_status(&miss)
    );
    assert!(
        poll(Duration::from_secs(5), || !st.keys().is_empty()),
        "the entry reached Redis through Webdis and the redis_proxy"
    );
    let hit = st.get(path, &[]);
    assert!(
        cache_status(&hit).starts_with("fleet-cache; hit"),
        "{}",
        cache_status(&hit)
    );
    assert_eq!(hit.body, miss.body);
    assert_eq!(st.stat(0, "fleet_cache_store_errors").unwrap_or(0), 0);
}

#[test]
fn wrong_credentials_fail_open_say_so_and_never_show_the_secret() {
    let wrong = "wrong-pw-c4f1e2";
    // One worker: its breaker sees every refusal (each worker counts its own).
    let st = secured_with(
        json!({ "credentials": format!("{WEBDIS_USER}:{wrong}") }),
        None,
        1,
    );
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = st.get(&format!("/auth/b{i}?cc=max-age%3D60"), &[]);
        assert_eq!(
            r.status, 200,
            "the origin answers: the cache only steps aside"
        );
        for (n, values) in &r.headers {
            for v in values {
                assert!(
                    !v.contains(wrong) && !v.contains(WEBDIS_PASSWORD),
                    "{n}: {v}"
                );
            }
        }
        statuses.push(cache_status(&r));
    }
    assert!(
        statuses[0].contains("detail=store-forbidden"),
        "the refusal is named: {statuses:?}"
    );
    assert!(st.keys().is_empty(), "nothing was written");
    assert!(st.stat(0, "fleet_cache_store_errors").unwrap_or(0) > 0);
    // The breaker opened and the log says why, without the credential.
    assert!(
        poll(Duration::from_secs(3), || st
            .envoy_log(0)
            .contains("store failing (store-forbidden")),
        "{}",
        st.envoy_log(0)
    );
    let log = st.envoy_log(0);
    for secret in [wrong, WEBDIS_PASSWORD, PROXY_PASSWORD, REDIS_PASSWORD] {
        assert!(!log.contains(secret), "{secret} in Envoy's log");
    }
}

#[test]
fn credentials_from_the_vm_environment() {
    // As Istio's WasmPlugin `vmConfig.env` gives them: the VM's environment.
    let yaml = repo_file("envoy/envoy.yaml");
    let anchor = "                  vm_id: fleet_cache\n";
    assert!(yaml.contains(anchor), "envoy/envoy.yaml's vm_config moved");
    let yaml = yaml.replace(
        anchor,
        &format!(
            "{anchor}                  environment_variables:\n                    \
             key_values: {{ FLEET_CACHE_STORE_CREDENTIALS: \"{WEBDIS_USER}:{WEBDIS_PASSWORD}\" }}\n"
        ),
    );
    let st = secured_with(
        json!({ "credentials_env": "FLEET_CACHE_STORE_CREDENTIALS" }),
        Some(yaml),
        2,
    );
    let path = "/auth/env?cc=max-age%3D60";
    st.get(path, &[]);
    assert!(poll(Duration::from_secs(5), || !st.keys().is_empty()));
    let hit = st.get(path, &[]);
    assert!(
        cache_status(&hit).starts_with("fleet-cache; hit"),
        "{}",
        cache_status(&hit)
    );
}

#[test]
fn a_missing_environment_variable_refuses_the_config_naming_the_field() {
    let config = json!({
        "store": {"cluster": "fleet_cache_store", "authority": "webdis",
                  "credentials_env": "FLEET_CACHE_NOT_SET"}
    });
    let log = Stack::start_envoy_expect_failure(&config.to_string());
    assert!(
        log.contains("store.credentials_env") && log.contains("FLEET_CACHE_NOT_SET"),
        "{log}"
    );
}
