//! A real Redis Cluster on loopback for the tests: six `redis-server --cluster-enabled yes`
//! (three masters, a replica each) made one by `redis-cli --cluster create`, with the
//! store's own redis.conf (its ACL included) plus the cluster settings. Stopped on drop.

use super::redis_script::RedisScript;
use super::stack::{TEST_ADMIN_PASSWORD, TEST_ADMIN_USER, free_port, poll, spawn, stop_children};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub const NODES: usize = 6;

pub struct RedisCluster {
    ports: Vec<u16>,
    nodes: Mutex<Vec<Option<Child>>>,
    dir: PathBuf,
    /// Nodes started and the cluster formed as a manifest does, when given.
    script: Option<RedisScript>,
    conf: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisCluster {
    /// Starts the nodes from `conf` (a redis.conf's text) in `dir`, and forms the cluster;
    /// both with `script` when given.
    pub fn start(dir: &Path, conf: &str, script: Option<&RedisScript>) -> RedisCluster {
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let mut cluster = RedisCluster {
            ports,
            nodes: Mutex::new((0..NODES).map(|_| None).collect()),
            dir: dir.to_path_buf(),
            script: script.cloned(),
            conf: conf.to_string(),
        };
        let conf_path = dir.join("cluster-redis.conf");
        std::fs::write(&conf_path, conf).expect("write the cluster's redis.conf");
        for i in 0..NODES {
            cluster.spawn(i, &conf_path);
        }
        for i in 0..NODES {
            // A port taken between `free_port` and the bind (another process): another port.
            for attempt in 1..=3 {
                let p = cluster.ports[i];
                if poll(Duration::from_secs(10), || cli(p, &["PING"]) == "PONG") {
                    break;
                }
                let log =
                    std::fs::read_to_string(dir.join(format!("redis-{p}.log"))).unwrap_or_default();
                assert!(
                    attempt < 3 && log.contains("Address already in use"),
                    "cluster node {p} never answered:\n{log}"
                );
                cluster.kill(p);
                cluster.ports[i] = free_port();
                cluster.spawn(i, &conf_path);
            }
        }
        cluster.form();
        assert!(
            cluster.wait_healthy(Duration::from_secs(20)),
            "the cluster never became healthy"
        );
        cluster
    }

    /// `redis-cli --cluster create` as the harness' admin, or the script's own.
    fn form(&self) {
        let out = match self
            .script
            .as_ref()
            .and_then(|s| s.form_command(&self.ports))
        {
            Some(mut cmd) => cmd.stdin(Stdio::null()).output(),
            None => {
                let addrs: Vec<String> = self
                    .ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect();
                Command::new("redis-cli")
                    .args(["--user", TEST_ADMIN_USER, "--pass", TEST_ADMIN_PASSWORD])
                    .arg("--no-auth-warning")
                    .arg("--cluster")
                    .arg("create")
                    .args(&addrs)
                    .args(["--cluster-replicas", "1", "--cluster-yes"])
                    .stdin(Stdio::null())
                    .output()
            }
        }
        .expect("form the cluster");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("All 16384 slots covered"),
            "the cluster did not form:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&self, i: usize, conf: &Path) {
        let port = self.ports[i];
        if let Some(script) = &self.script {
            // The node's own directory: its pod's volumes (nodes.conf, the rendered config).
            let dir = self.dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            // Nothing of the cluster's settings added: the script must set them itself.
            let mut cmd = script.command(&self.conf, port, &dir, "");
            let child = spawn(&mut cmd, &self.dir.join(format!("redis-{port}.log")));
            lock(&self.nodes)[i] = Some(child);
            return;
        }
        let mut cmd = Command::new("redis-server");
        cmd.arg(conf)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(self.dir.join(format!("redis-{port}.pid")))
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(self.dir.join(format!("nodes-{port}.conf")))
            // Failover within a few seconds of a master's death.
            .args(["--cluster-node-timeout", "1000"])
            // Replicas sync at once (the default waits 5 s for more replicas to share one
            // transfer): a replica that never synced can't be promoted.
            .args(["--repl-diskless-sync-delay", "0"])
            // The harness' admin user, which replicas also replicate as (the store's own
            // user may not run PSYNC).
            .args(["--user", TEST_ADMIN_USER, "on"])
            .arg(format!(">{TEST_ADMIN_PASSWORD}"))
            .args(["~*", "&*", "+@all"])
            .args(["--masteruser", TEST_ADMIN_USER])
            .args(["--masterauth", TEST_ADMIN_PASSWORD]);
        let child = spawn(&mut cmd, &self.dir.join(format!("redis-{port}.log")));
        lock(&self.nodes)[i] = Some(child);
    }

    /// Every live node says the cluster is ok, three of them are masters (a dead master's
    /// replica promoted), and every replica's link to its master is up.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        poll(timeout, || {
            let live = self.live_ports();
            live.iter()
                .all(|&p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && self.master_ports().len() == NODES / 2
                && live.iter().all(|&p| {
                    let info = cli(p, &["INFO", "replication"]);
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
        })
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    fn live_ports(&self) -> Vec<u16> {
        let nodes = lock(&self.nodes);
        self.ports
            .iter()
            .zip(nodes.iter())
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|&p| cli(p, &["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Kills the node on `port` (SIGKILL: a crash, no goodbye to the cluster).
    pub fn kill(&self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).expect("a node");
        if let Some(mut c) = lock(&self.nodes)[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every key matching `pattern` on any master, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .master_ports()
            .into_iter()
            .flat_map(|p| {
                cli(p, &["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// redis-cli in cluster mode (following redirections) as the admin user.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = *self.live_ports().first().expect("a live node");
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli(port, &all)
    }
}

/// redis-cli against the node on `port` (no redirections) as the admin user; stdout, trimmed.
pub fn node_cli(port: u16, args: &[&str]) -> String {
    cli(port, args)
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(["--user", TEST_ADMIN_USER, "--pass", TEST_ADMIN_PASSWORD])
        .arg("--no-auth-warning")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let mut children: Vec<Child> = lock(&self.nodes)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        stop_children(&mut children, Duration::from_secs(2));
    }
}
