//! Redis started the way a manifest's container starts it (istio/: a shell script that builds
//! the store's users from the Secret, then execs redis-server), instead of the harness'
//! `redis-server <conf> <args>`. The script runs as written; only its paths are the test's.

use super::stack::{TEST_ADMIN_PASSWORD, TEST_ADMIN_USER};
use std::path::Path;
use std::process::Command;

#[derive(Clone, Debug)]
pub struct RedisScript {
    /// `sh -c` text in place of `redis-server <conf> <args>`. `{{REDIS_CONF}}` in it becomes
    /// a config file holding the store's redis.conf plus what the harness would pass as
    /// arguments (port, loopback, directory, pidfile, its admin user); `{{DIR}}` the node's
    /// own directory (for a pod's volumes).
    pub start: String,
    /// The script's environment (a pod's env, secrets included).
    pub env: Vec<(String, String)>,
    /// Cluster only: `sh -c` text that forms the cluster from `$NODES` (`host:port ...`), in
    /// place of the harness' `redis-cli --cluster create`. It gets `env` too.
    pub form: Option<String>,
}

impl RedisScript {
    /// The command that starts a node on `port` in `dir` with the store's `conf` (its text).
    /// `extra_conf` is appended to the harness' part (a Cluster node's settings).
    pub fn command(&self, conf: &str, port: u16, dir: &Path, extra_conf: &str) -> Command {
        let conf_path = dir.join(format!("harness-redis-{port}.conf"));
        let text = format!(
            "{conf}\n# The harness' part (what it passes as arguments otherwise):\n\
             port {port}\nbind 127.0.0.1\ndir {dir}\npidfile {dir}/redis-{port}.pid\n\
             user {TEST_ADMIN_USER} on >{TEST_ADMIN_PASSWORD} ~* &* +@all\n{extra_conf}\n",
            dir = dir.display(),
        );
        std::fs::write(&conf_path, text).expect("write the harness' redis.conf");
        let script = self
            .start
            .replace("{{REDIS_CONF}}", conf_path.to_str().expect("utf-8 path"))
            .replace("{{DIR}}", dir.to_str().expect("utf-8 path"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).envs(self.env.iter().cloned());
        cmd
    }

    /// The command that forms a cluster of `ports` on loopback with `form`.
    pub fn form_command(&self, ports: &[u16]) -> Option<Command> {
        let form = self.form.as_ref()?;
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(form)
            .envs(self.env.iter().cloned())
            .env("NODES", nodes.join(" "));
        Some(cmd)
    }
}
