//! monitoring/ against real processes: a real Prometheus scrapes a real Envoy with the filter
//! (its admin `/stats/prometheus`, every second) and evaluates monitoring/alerts.yaml, while
//! the test drives traffic, then faults: garbage in Redis and responses too large to record,
//! then a store outage (Redis stalled, then down). Every alert must become pending or firing
//! during the faults, and every query of monitoring/grafana-dashboard.json must return series:
//! an alert that never fires, a query that returns nothing (a misspelt metric, a wrong label)
//! fails the test.
//!
//! Time is scaled: the rules' windows (minutes to hours) become seconds, so a minute of
//! traffic stands for hours of it; their `for` durations are left to Prometheus' pending state
//! (promtool's unit tests, monitoring/alerts_test.yaml, check them at full scale).
//! Run with `cargo test --test monitoring`.

mod support;

use serde_json::{Value, json};
use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::stack::{REPO, free_port, poll, spawn, stop_children};
use support::{Stack, StackOptions, client};

/// The rules' windows, and what they become here.
const WINDOWS: &[(&str, &str)] = &[
    ("[5m]", "[15s]"),
    ("[10m]", "[15s]"),
    ("[30m]", "[30s]"),
    ("[6h]", "[180s]"),
];
/// Grafana's `$__rate_interval` (four scrape intervals at least).
const RATE_INTERVAL: &str = "15s";

/// A Prometheus server of the test's own, stopped on drop.
struct Prometheus {
    child: Option<Child>,
    port: u16,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, envoy_admin: u16, rules: &str) -> Prometheus {
        let rules_path = dir.join("alerts.yaml");
        fs::write(&rules_path, rules).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n\
                 - job_name: envoy\n  metrics_path: /stats/prometheus\n  \
                 static_configs:\n  - targets: [\"127.0.0.1:{envoy_admin}\"]\n    \
                 labels: {{ namespace: monitoring-test, pod: envoy-0 }}\n",
                rules_path.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn"),
            &log,
        );
        let p = Prometheus {
            child: Some(child),
            port,
            log,
        };
        assert!(
            poll(Duration::from_secs(30), || {
                matches!(client::request(port, "GET", "/-/ready", &[], &[]), Ok(r) if r.status == 200)
            }),
            "prometheus never became ready:\n{}",
            fs::read_to_string(&p.log).unwrap_or_default()
        );
        p
    }

    fn get(&self, path: &str) -> Value {
        let r = client::request(self.port, "GET", path, &[], &[]).expect("prometheus answers");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("prometheus' JSON")
    }

    /// An instant query's result (panics on an error: a query Prometheus cannot parse).
    fn query(&self, promql: &str) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/query?query={}", percent_encode(promql)));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Alerts pending or firing now.
    fn active_alerts(&self) -> Vec<(String, String)> {
        let v = self.get("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Rule groups as loaded: every rule healthy (evaluates without error).
    fn rule_health(&self) -> Vec<(String, String, String)> {
        let v = self.get("/api/v1/rules");
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["health"].as_str().unwrap_or("").to_string(),
                    r["lastError"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_children(&mut [c], Duration::from_secs(2));
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn scaled_rules() -> String {
    let mut rules = fs::read_to_string(format!("{REPO}/monitoring/alerts.yaml")).unwrap();
    for (from, to) in WINDOWS {
        rules = rules.replace(from, to);
    }
    // Every window left is in seconds (comments aside).
    let code: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for w in code.split('[').skip(1) {
        let w = w.split(']').next().unwrap_or("");
        assert!(
            w.ends_with('s') && w[..w.len() - 1].bytes().all(|b| b.is_ascii_digit()),
            "a window WINDOWS does not scale: [{w}]"
        );
    }
    rules
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

/// Every PromQL expression of the dashboard, with Grafana's variables filled.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = fs::read_to_string(format!("{REPO}/monitoring/grafana-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    let expr = t["expr"].as_str().expect("a target's expr");
                    assert!(
                        !expr.replace("$__rate_interval", "").contains('$'),
                        "{title}: a variable the test does not know: {expr}"
                    );
                    (
                        title.clone(),
                        expr.replace("$__rate_interval", RATE_INTERVAL),
                    )
                })
        })
        .collect()
}

#[test]
fn alerts_fire_during_faults_and_every_dashboard_query_has_data() {
    let rules = scaled_rules();
    let names = alert_names(&rules);
    assert_eq!(names.len(), 7, "{names:?}");
    let s = Stack::start(StackOptions {
        plugin_config: json!({
            // Every hit reads the store (so garbage in it is seen), small bodies only.
            "memory": { "max_bytes": 0 },
            "max_body_bytes": 4096,
        }),
        ..StackOptions::default()
    });
    let dir = tempfile::Builder::new()
        .prefix("fleet-cache-prometheus-")
        .tempdir()
        .unwrap();
    let prom = Prometheus::start(dir.path(), s.admin_port(0), &rules);
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<String, String>::new());
    let watch = || {
        for (name, state) in prom.active_alerts() {
            seen.borrow_mut().entry(name).or_insert(state);
        }
    };
    let get = |path: &str| {
        let r = s.get(path, &[]);
        assert!(
            r.status == 200,
            "{path}: {} (the cache must never fail a request)",
            r.status
        );
    };

    // Healthy: mostly hits, for longer than the short windows.
    let keys: Vec<String> = (0..8)
        .map(|i| format!("/mon/{i}?cc=max-age%3D600&size=500"))
        .collect();
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        for k in &keys {
            get(k);
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    watch();
    assert!(
        seen.borrow().is_empty(),
        "alerts while healthy: {:?}",
        seen.borrow()
    );

    // Faults, store up: garbage in place of the entries, and streamed responses (no
    // Content-Length) that outgrow max_body_bytes while recorded.
    let until = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while Instant::now() < until {
        for key in s.keys() {
            s.redis_set(&key, b"not an entry");
        }
        for k in &keys {
            get(k);
        }
        n += 1;
        get(&format!("/mon/big/{n}?cc=max-age%3D600&size=8000&chunks=4"));
        get(&format!(
            "/mon/big/{n}b?cc=max-age%3D600&size=8000&chunks=4"
        ));
        watch();
        std::thread::sleep(Duration::from_millis(100));
    }

    // The outage: Redis stalled (timeouts), then down (errors); the breaker opens. New URLs
    // are recorded and their writes fail.
    s.pause_redis(6000);
    let outage = Instant::now();
    let mut stopped = false;
    while outage.elapsed() < Duration::from_secs(40) {
        if !stopped && outage.elapsed() > Duration::from_secs(6) {
            s.stop_redis();
            stopped = true;
        }
        for k in &keys {
            get(k);
        }
        n += 1;
        get(&format!("/mon/new/{n}?cc=max-age%3D600&size=500"));
        watch();
        if names.iter().all(|a| seen.borrow().contains_key(a))
            && outage.elapsed() > Duration::from_secs(12)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
    }

    // Every dashboard query has series now (every metric exists, every label matches).
    let empty: Vec<String> = dashboard_queries()
        .into_iter()
        .filter(|(_, q)| prom.query(q).is_empty())
        .map(|(title, q)| format!("{title}: {q}"))
        .collect();
    let unhealthy: Vec<_> = prom
        .rule_health()
        .into_iter()
        .filter(|(_, health, _)| health != "ok")
        .collect();
    s.start_redis();

    let missing: Vec<&String> = names
        .iter()
        .filter(|a| !seen.borrow().contains_key(*a))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts that never fired during the faults: {missing:?} (seen: {:?})\nstats:\n{}",
        seen.borrow(),
        s.stats(0)
    );
    assert!(
        unhealthy.is_empty(),
        "rules that failed to evaluate: {unhealthy:?}"
    );
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
}

#[test]
fn the_rules_and_the_dashboard_are_well_formed() {
    // What promtool checks at full scale (make monitoring-check) is also what the scaled copy
    // keeps: the same alerts.
    let full = fs::read_to_string(format!("{REPO}/monitoring/alerts.yaml")).unwrap();
    assert_eq!(alert_names(&full), alert_names(&scaled_rules()));
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for metric in [
        "fleet_cache_hits",
        "fleet_cache_lookups",
        "fleet_cache_store_errors",
        "fleet_cache_store_breaker_open",
        "fleet_cache_bytes_stored",
        "fleet_cache_collapsed",
        "envoy_cluster_upstream_rq_time_bucket",
    ] {
        assert!(
            queries.iter().any(|(_, q)| q.contains(metric)),
            "the dashboard does not show {metric}"
        );
    }
}
