//! Plugin JSON -> validated [`Config`].
//!
//! Every field has a default, unknown fields are refused, and every error names the field
//! (`store.timeout_ms: must be at least 1`), because the only place an operator sees it is one
//! line of Envoy's log.

mod collapse;
mod credentials;
mod fields;
mod json;
mod read;
mod rules;
mod stale;

pub use collapse::CollapseConfig;
pub use rules::{Rule, RulesConfig};
pub use stale::StaleConfig;

use json::Value;
use std::fmt;

/// The filter's settings, validated. Built once per plugin configuration and shared by every
/// request of the VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub store: StoreConfig,
    /// Readable prefix of every Redis key (`<namespace>:<sha256>`): lets operators tell
    /// deployments apart and keeps them from ever sharing entries.
    pub namespace: String,
    /// Lifetime (seconds) given to a cacheable response that carries no freshness information.
    /// 0 means such responses are not stored.
    pub default_ttl_s: u64,
    /// Upper bound on any lifetime, whatever the origin says.
    pub max_ttl_s: u64,
    /// Heuristic freshness (RFC 9111 §4.2.2): this percentage of the time since
    /// `Last-Modified`, for responses without explicit freshness. 0 turns heuristics off.
    pub heuristic_percent: u8,
    /// Cap on a heuristic lifetime.
    pub heuristic_max_s: u64,
    /// How long a stale entry stays in the store for revalidation (or for clients that accept
    /// staleness) after its freshness ends.
    pub keep_stale_s: u64,
    /// Stale windows for responses that set none (RFC 5861).
    pub stale: StaleConfig,
    /// Collapsed misses: one origin fetch for concurrent misses of a resource, fleet-wide.
    pub collapse: CollapseConfig,
    /// How long a resource whose response was not storable is remembered as such (seconds;
    /// hit-for-miss): its requests skip the lookup on this worker and the wait for another's
    /// fetch everywhere. 0 turns it off.
    pub hit_for_miss_s: u64,
    /// Treat client `Cache-Control: no-cache` / `Pragma: no-cache` as an ordinary request (as
    /// CDNs often do) instead of going to the origin.
    pub ignore_client_no_cache: bool,
    /// Serve requests that accept `text/event-stream` from a fresh entry despite client
    /// `no-cache`: browsers' `EventSource` always sends it, so without this a stored stream
    /// never reaches a browser from the cache (narrower than `ignore_client_no_cache`).
    pub event_stream_ignores_no_cache: bool,
    /// The targeted cache-control field (RFC 9213) this cache obeys over `Cache-Control`, lower
    /// case; not forwarded downstream. `None`: disabled.
    pub cdn_cache_control: Option<String>,
    /// Largest body recorded; a longer response still streams to the client but is not stored.
    pub max_body_bytes: usize,
    /// Bytes all the recordings of one worker may hold at once; past it new chunks drop their
    /// recording (the response still streams).
    pub max_recording_bytes: usize,
    /// Methods answered from the cache (GET, HEAD; HEAD is served from the GET entry).
    pub methods: Vec<Method>,
    /// Response statuses that may be stored.
    pub statuses: Vec<u16>,
    pub key: KeyConfig,
    pub set_cookie: SetCookiePolicy,
    /// The cache's name in `Cache-Status` (RFC 9211).
    pub cache_name: String,
    /// Response header listing the response's tags (space or comma separated), for purge by
    /// tag; lower case. `None`: tags are not recorded.
    pub tag_header: Option<String>,
    pub purge: PurgeConfig,
    pub memory: MemoryConfig,
    pub compression: CompressionConfig,
    /// Which requests the cache handles at all (hosts, paths).
    pub rules: RulesConfig,
}

/// Compressed entries (`packing.rs`): bodies that compress well are stored packed.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// Bodies shorter than this are stored as they are (zlib's framing eats what small ones
    /// would save).
    pub min_bytes: u64,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_bytes: 4096,
        }
    }
}

/// The in-proxy tier (per worker): a small LRU in front of Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// Bytes per worker; 0 turns the tier off.
    pub max_bytes: usize,
    /// How long a value read from Redis is used from memory at most: the bound on how late a
    /// purge or a newer entry elsewhere in the fleet is seen here.
    pub max_age_ms: u64,
}

/// Who may purge. Without a token, purging is disabled and PURGE requests are refused.
#[derive(Clone, PartialEq, Default)]
pub struct PurgeConfig {
    pub token: Option<String>,
    /// Request header carrying the token (lower case).
    pub header: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Envoy cluster of the Webdis gateway.
    pub cluster: String,
    /// `:authority` sent on store callouts.
    pub authority: String,
    /// Deadline of a lookup: the most a request can be held back by a slow store.
    pub timeout_ms: u64,
    /// Deadline of a write (they can carry megabytes, and nobody waits on them).
    pub publish_timeout_ms: u64,
    /// Extra wait per MiB for an entry too large for one store answer (read in pieces).
    pub large_entry_ms_per_mib: u64,
    /// Consecutive failed store callouts that open the circuit breaker (0: never).
    pub breaker_failures: u64,
    /// First period the breaker stays open, ms (doubled per failed probe).
    pub breaker_backoff_ms: u64,
    /// Longest period the breaker stays open, ms.
    pub breaker_max_backoff_ms: u64,
    /// HTTP Basic credentials sent on every store callout (`store.credentials` or
    /// `store.credentials_env`), for Webdis' ACL.
    pub authorization: Option<credentials::Authorization>,
    /// The store is a Redis Cluster (behind Envoy's redis_proxy): every callout touches keys
    /// of one slot.
    pub redis_cluster: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cluster: "fleet_cache_store".into(),
            authority: "webdis".into(),
            timeout_ms: 100,
            publish_timeout_ms: 5_000,
            large_entry_ms_per_mib: 20,
            breaker_failures: 5,
            breaker_backoff_ms: 250,
            breaker_max_backoff_ms: 1_000,
            authorization: None,
            redis_cluster: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyConfig {
    /// Query parameters left out of the key (`utm_*` ends with `*`: a prefix).
    pub query_ignore: Vec<String>,
    /// Sort query parameters by name so `?a=1&b=2` and `?b=2&a=1` share an entry.
    pub query_sort: bool,
    /// Request headers (lower-cased) whose values always join the key.
    pub headers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// What to do with a response that sets a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCookiePolicy {
    /// Don't store it (`"no-store"`): the cookie is usually meant for one client.
    #[default]
    NoStore,
    /// Store the response without its `Set-Cookie` headers (`"strip"`; the client that caused
    /// the fetch still gets them).
    Strip,
}

/// A refused configuration: which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

// The token never reaches a log line.
impl fmt::Debug for PurgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("header", &self.header)
            .finish()
    }
}

/// The statuses RFC 9110 §15.1 calls cacheable by default (heuristically cacheable).
pub const DEFAULT_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

// The raw shape, as read from JSON (every field defaulted, unknown fields refused). Kept apart
// from `Config` so validated types never hold unchecked values.
struct RawConfig {
    store: StoreConfig,
    /// `store.credentials` and `store.credentials_env`, as given (read into
    /// `store.authorization` by validation).
    store_credentials: String,
    store_credentials_env: String,
    namespace: String,
    default_ttl_s: u64,
    max_ttl_s: u64,
    heuristic_percent: u8,
    heuristic_max_s: u64,
    keep_stale_s: u64,
    stale: StaleConfig,
    collapse: CollapseConfig,
    hit_for_miss_s: u64,
    ignore_client_no_cache: bool,
    event_stream_ignores_no_cache: bool,
    cdn_cache_control: String,
    max_body_bytes: u64,
    max_recording_bytes: u64,
    methods: Vec<Method>,
    statuses: Vec<u16>,
    key: RawKey,
    set_cookie: SetCookiePolicy,
    cache_name: String,
    tag_header: String,
    purge: RawPurge,
    memory: RawMemory,
    compression: CompressionConfig,
    rules: RulesConfig,
}

struct RawMemory {
    max_bytes: u64,
    max_age_ms: u64,
}

impl Default for RawMemory {
    fn default() -> Self {
        RawMemory {
            max_bytes: 32 * 1024 * 1024,
            max_age_ms: 1_000,
        }
    }
}

struct RawPurge {
    token: String,
    header: String,
}

impl Default for RawPurge {
    fn default() -> Self {
        RawPurge {
            token: String::new(),
            header: "x-purge-token".into(),
        }
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            store: StoreConfig::default(),
            store_credentials: String::new(),
            store_credentials_env: String::new(),
            namespace: "default".into(),
            default_ttl_s: 0,
            max_ttl_s: 86_400,
            heuristic_percent: 10,
            heuristic_max_s: 86_400,
            keep_stale_s: 3_600,
            stale: StaleConfig::default(),
            collapse: CollapseConfig::default(),
            hit_for_miss_s: 60,
            ignore_client_no_cache: false,
            event_stream_ignores_no_cache: false,
            cdn_cache_control: "CDN-Cache-Control".into(),
            max_body_bytes: 16 * 1024 * 1024,
            max_recording_bytes: 256 * 1024 * 1024,
            methods: vec![Method::Get, Method::Head],
            statuses: DEFAULT_STATUSES.to_vec(),
            key: RawKey::default(),
            set_cookie: SetCookiePolicy::NoStore,
            cache_name: "fleet-cache".into(),
            tag_header: "surrogate-key".into(),
            purge: RawPurge::default(),
            memory: RawMemory::default(),
            compression: CompressionConfig::default(),
            rules: RulesConfig::default(),
        }
    }
}

#[derive(Default)]
struct RawKey {
    query_ignore: Vec<String>,
    query_sort: bool,
    headers: Vec<String>,
}

/// The longest lookup deadline accepted: past it, "fail-open with bounded latency" is no
/// longer a meaningful promise.
const MAX_TIMEOUT_MS: u64 = 60_000;

impl Config {
    /// Parses and validates the plugin configuration. Empty input means all defaults.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_env(json, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`], reading the VM's environment (`store.credentials_env`) with `env`.
    pub fn parse_with_env(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = if json.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            // A config is an object, nothing else.
            if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(err("", "the configuration must be a JSON object"));
            }
            let Value::Object(top) = json::parse(json).map_err(|e| err("", e))? else {
                return Err(err("", "the configuration must be a JSON object"));
            };
            for section in read::sections() {
                if top
                    .get(section)
                    .is_some_and(|v| !matches!(v, Value::Object(_)))
                {
                    return Err(err(section, "must be a JSON object"));
                }
            }
            let mut raw = RawConfig::default();
            read::read_object(&mut raw, "", &top)?;
            raw
        };
        raw.validate(env)
    }
}

// Not inlined: dozens of call sites, run once per configuration (~KB of .wasm otherwise).
#[inline(never)]
fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    error(field, reason.into())
}

#[inline(never)]
fn error(field: &str, reason: String) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason,
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl RawConfig {
    fn validate(mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        self.store.authorization =
            credentials::authorization(&self.store_credentials, &self.store_credentials_env, env)?;
        self.stale.validate()?;
        self.collapse.validate()?;
        let s = &self.store;
        if s.cluster.is_empty() {
            return Err(err("store.cluster", "must not be empty"));
        }
        if s.authority.is_empty() {
            return Err(err("store.authority", "must not be empty"));
        }
        for (field, v) in [
            ("store.timeout_ms", s.timeout_ms),
            ("store.publish_timeout_ms", s.publish_timeout_ms),
        ] {
            if v == 0 {
                return Err(err(field, "must be at least 1"));
            }
            if v > MAX_TIMEOUT_MS {
                return Err(err(field, format!("must be at most {MAX_TIMEOUT_MS}")));
            }
        }
        for (field, v, max) in [
            (
                "store.large_entry_ms_per_mib",
                s.large_entry_ms_per_mib,
                10_000,
            ),
            ("store.breaker_failures", s.breaker_failures, 1_000),
            (
                "store.breaker_max_backoff_ms",
                s.breaker_max_backoff_ms,
                600_000,
            ),
        ] {
            if v > max {
                return Err(err(field, format!("must be at most {max}")));
            }
        }
        if s.breaker_backoff_ms == 0 {
            return Err(err("store.breaker_backoff_ms", "must be at least 1"));
        }
        if s.breaker_backoff_ms > s.breaker_max_backoff_ms {
            return Err(err(
                "store.breaker_backoff_ms",
                "must be at most store.breaker_max_backoff_ms",
            ));
        }
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(err(
                "namespace",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if self.max_ttl_s == 0 {
            return Err(err("max_ttl_s", "must be at least 1"));
        }
        if self.default_ttl_s > self.max_ttl_s {
            return Err(err("default_ttl_s", "must not exceed max_ttl_s"));
        }
        // Redis' PX takes milliseconds in a signed 64-bit integer; a decade is plenty.
        if self.max_ttl_s > 10 * 365 * 86_400 {
            return Err(err("max_ttl_s", "must be at most ten years"));
        }
        if self.heuristic_percent > 100 {
            return Err(err("heuristic_percent", "must be 0-100"));
        }
        if self.keep_stale_s > 10 * 365 * 86_400 {
            return Err(err("keep_stale_s", "must be at most ten years"));
        }
        let cdn_cache_control = match self.cdn_cache_control.as_str() {
            "" => None,
            f if is_header_name(f) => Some(f.to_ascii_lowercase()),
            f => {
                return Err(err(
                    "cdn_cache_control",
                    format!("{f:?} is not a header name (\"\" disables it)"),
                ));
            }
        };
        if self.max_body_bytes == 0 {
            return Err(err("max_body_bytes", "must be at least 1"));
        }
        // Redis refuses values past 512 MiB; stay well inside a worker's memory.
        if self.max_body_bytes > 256 * 1024 * 1024 {
            return Err(err("max_body_bytes", "must be at most 268435456 (256 MiB)"));
        }
        if self.max_recording_bytes < self.max_body_bytes {
            return Err(err(
                "max_recording_bytes",
                "must be at least max_body_bytes (one whole recording)",
            ));
        }
        // A wasm32 VM addresses 4 GiB in all; leave room for everything else.
        if self.max_recording_bytes > 2 * 1024 * 1024 * 1024 {
            return Err(err(
                "max_recording_bytes",
                "must be at most 2147483648 (2 GiB)",
            ));
        }
        if self.methods.is_empty() {
            return Err(err("methods", "must name at least one of GET, HEAD"));
        }
        if self.statuses.is_empty() {
            return Err(err("statuses", "must name at least one status"));
        }
        if let Some(bad) = self.statuses.iter().find(|s| !(200..=599).contains(*s)) {
            return Err(err(
                "statuses",
                format!("{bad} is not a final status (200-599)"),
            ));
        }
        if let Some(bad) = self.statuses.iter().find(|s| **s == 206 || **s == 304) {
            return Err(err(
                "statuses",
                format!("{bad} is a partial or validation answer, not a storable whole response"),
            ));
        }
        for (i, p) in self.key.query_ignore.iter().enumerate() {
            if p.is_empty() || p == "*" {
                return Err(err(
                    &format!("key.query_ignore[{i}]"),
                    "must name a parameter or a prefix ending in *",
                ));
            }
        }
        let mut headers = Vec::with_capacity(self.key.headers.len());
        for (i, h) in self.key.headers.iter().enumerate() {
            if !is_header_name(h) {
                return Err(err(
                    &format!("key.headers[{i}]"),
                    format!("{h:?} is not a header name"),
                ));
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "cookie" || lower == "authorization" {
                // Keying on credentials would store one entry per user: a private cache in a
                // shared store. Refuse rather than fill Redis with it.
                return Err(err(
                    &format!("key.headers[{i}]"),
                    format!("{h:?} carries credentials; keying on it makes a per-user cache"),
                ));
            }
            crate::key::insert_sorted(&mut headers, lower);
        }
        let tag_header = match self.tag_header.as_str() {
            "" => None,
            h if is_header_name(h) => Some(h.to_ascii_lowercase()),
            h => {
                return Err(err(
                    "tag_header",
                    format!("{h:?} is not a header name (\"\" disables tags)"),
                ));
            }
        };
        if !is_header_name(&self.purge.header) {
            return Err(err(
                "purge.header",
                format!("{:?} is not a header name", self.purge.header),
            ));
        }
        let token = match self.purge.token.as_str() {
            "" => None,
            // A short token can be guessed; purging everything is a denial of service.
            t if t.len() < 16 => {
                return Err(err("purge.token", "must be at least 16 characters"));
            }
            t if !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(err(
                    "purge.token",
                    "must be printable ASCII without spaces (it travels in a header)",
                ));
            }
            t => Some(t.to_string()),
        };
        if self.memory.max_bytes > 1024 * 1024 * 1024 {
            return Err(err(
                "memory.max_bytes",
                "must be at most 1073741824 (1 GiB per worker)",
            ));
        }
        if self.hit_for_miss_s > 604_800 {
            return Err(err("hit_for_miss_s", "must be at most 604800 (a week)"));
        }
        if self.memory.max_age_ms > 60_000 {
            // Past a minute, purges and newer entries elsewhere stay invisible too long for
            // "one cache for the fleet".
            return Err(err("memory.max_age_ms", "must be at most 60000"));
        }
        if self.cache_name.is_empty() || !is_header_name(&self.cache_name) {
            return Err(err(
                "cache_name",
                "must be a token (letters, digits, - _ . and the like)",
            ));
        }
        Ok(Config {
            store: self.store,
            namespace: self.namespace,
            default_ttl_s: self.default_ttl_s,
            max_ttl_s: self.max_ttl_s,
            heuristic_percent: self.heuristic_percent,
            heuristic_max_s: self.heuristic_max_s,
            keep_stale_s: self.keep_stale_s,
            stale: self.stale,
            collapse: self.collapse,
            hit_for_miss_s: self.hit_for_miss_s,
            ignore_client_no_cache: self.ignore_client_no_cache,
            event_stream_ignores_no_cache: self.event_stream_ignores_no_cache,
            cdn_cache_control,
            max_body_bytes: self.max_body_bytes as usize,
            max_recording_bytes: self.max_recording_bytes as usize,
            methods: self.methods,
            statuses: self.statuses,
            key: KeyConfig {
                query_ignore: self.key.query_ignore,
                query_sort: self.key.query_sort,
                headers,
            },
            set_cookie: self.set_cookie,
            cache_name: self.cache_name,
            tag_header,
            purge: PurgeConfig {
                token,
                header: self.purge.header.to_ascii_lowercase(),
            },
            memory: MemoryConfig {
                max_bytes: self.memory.max_bytes as usize,
                max_age_ms: self.memory.max_age_ms,
            },
            compression: self.compression,
            rules: self.rules,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        RawConfig::default()
            .validate(&|_| None)
            .expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s.as_bytes())
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.store.timeout_ms, 100);
        assert_eq!(c.methods, vec![Method::Get, Method::Head]);
        assert_eq!(c.cdn_cache_control.as_deref(), Some("cdn-cache-control"));
        assert_eq!(
            parse(r#"{"cdn_cache_control":""}"#)
                .unwrap()
                .cdn_cache_control,
            None
        );
        assert_eq!(parse("{}").unwrap(), c);
    }

    #[test]
    fn store_breaker_and_large_entry_fields() {
        let c = parse(
            r#"{"store":{"large_entry_ms_per_mib":5,"breaker_failures":0,
                "breaker_backoff_ms":10,"breaker_max_backoff_ms":20}}"#,
        )
        .unwrap();
        assert_eq!(c.store.large_entry_ms_per_mib, 5);
        assert_eq!(c.store.breaker_failures, 0);
        assert_eq!(c.store.breaker_backoff_ms, 10);
        assert_eq!(c.store.breaker_max_backoff_ms, 20);
        for (text, field) in [
            (
                r#"{"store":{"breaker_backoff_ms":0}}"#,
                "store.breaker_backoff_ms",
            ),
            (
                r#"{"store":{"breaker_backoff_ms":5000,"breaker_max_backoff_ms":1000}}"#,
                "store.breaker_backoff_ms",
            ),
            (
                r#"{"store":{"breaker_failures":1001}}"#,
                "store.breaker_failures",
            ),
            (
                r#"{"store":{"large_entry_ms_per_mib":10001}}"#,
                "store.large_entry_ms_per_mib",
            ),
            (
                r#"{"store":{"breaker_max_backoff_ms":-1}}"#,
                "store.breaker_max_backoff_ms",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().field, field, "{text}");
        }
    }

    #[test]
    fn store_credentials_are_read_inline_or_from_the_vm_environment() {
        let c = parse(r#"{"store":{"credentials":"fleet-cache:pw"}}"#).unwrap();
        let basic = "Basic ZmxlZXQtY2FjaGU6cHc=";
        assert_eq!(c.store.authorization.unwrap().header_value(), basic);
        let env = |n: &str| (n == "FC_STORE").then(|| "fleet-cache:pw".to_string());
        let c = Config::parse_with_env(br#"{"store":{"credentials_env":"FC_STORE"}}"#, &env);
        assert_eq!(
            c.unwrap().store.authorization.unwrap().header_value(),
            basic
        );
        let e = Config::parse_with_env(br#"{"store":{"credentials_env":"OTHER"}}"#, &env);
        assert_eq!(e.unwrap_err().field, "store.credentials_env");
        assert_eq!(Config::default().store.authorization, None);
        // The config's Debug (a log line could print it) never shows the credentials.
        let c = parse(r#"{"store":{"credentials":"fleet-cache:pw-7781"}}"#).unwrap();
        assert!(!format!("{c:?}").contains("pw-7781"));
    }

    #[test]
    fn full_config_is_read() {
        let c = parse(
            r#"{"store":{"cluster":"s","authority":"a","timeout_ms":50,"publish_timeout_ms":900},
                "namespace":"shop","default_ttl_s":5,"max_ttl_s":60,"max_body_bytes":1024,
                "methods":["GET"],"statuses":[200],"set_cookie":"strip","cache_name":"edge",
                "key":{"query_ignore":["utm_*"],"query_sort":true,"headers":["X-Tenant"]},
                "stale":{"while_revalidate_s":30,"if_error_s":600},
                "collapse":{"max_wait_ms":0,"poll_ms":20,
                    "exempt_content_types":["Text/Event-Stream"]},
                "hit_for_miss_s":5}"#,
        )
        .unwrap();
        assert_eq!(c.stale.while_revalidate_s, 30);
        assert_eq!(c.stale.if_error_s, 600);
        assert_eq!(c.collapse.max_wait_ms, 0);
        assert_eq!(c.collapse.poll_ms, 20);
        assert_eq!(c.collapse.exempt_content_types, ["text/event-stream"]);
        assert_eq!(c.hit_for_miss_s, 5);
        assert_eq!(c.store.cluster, "s");
        assert_eq!(c.store.timeout_ms, 50);
        assert_eq!(c.key.headers, vec!["x-tenant".to_string()]);
        assert!(c.key.query_sort);
        assert_eq!(c.set_cookie, SetCookiePolicy::Strip);
        assert_eq!(c.cache_name, "edge");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse(r#"{"store":{"timeout":5}}"#).unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        assert!(e.to_string().contains("store"), "{e}");
        let e = parse(r#"{"bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse(r#"{"store":{"timeout_ms":"fast"}}"#).unwrap_err();
        assert_eq!(e.field, "store.timeout_ms");
        let e = parse(r#"{"methods":["POST"]}"#).unwrap_err();
        assert!(e.field.starts_with("methods"), "{e}");
        let e = parse(r#"{"set_cookie":"keep"}"#).unwrap_err();
        assert_eq!(e.field, "set_cookie");
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let cases = [
            (r#"{"store":{"timeout_ms":0}}"#, "store.timeout_ms"),
            (
                r#"{"store":{"publish_timeout_ms":0}}"#,
                "store.publish_timeout_ms",
            ),
            (r#"{"store":{"timeout_ms":600000}}"#, "store.timeout_ms"),
            (r#"{"store":{"cluster":""}}"#, "store.cluster"),
            (r#"{"namespace":"a b"}"#, "namespace"),
            (r#"{"namespace":""}"#, "namespace"),
            (r#"{"max_ttl_s":0}"#, "max_ttl_s"),
            (r#"{"default_ttl_s":100,"max_ttl_s":10}"#, "default_ttl_s"),
            (r#"{"max_body_bytes":0}"#, "max_body_bytes"),
            (r#"{"heuristic_percent":101}"#, "heuristic_percent"),
            (r#"{"cdn_cache_control":"a b"}"#, "cdn_cache_control"),
            (r#"{"max_recording_bytes":1}"#, "max_recording_bytes"),
            (r#"{"methods":[]}"#, "methods"),
            (r#"{"statuses":[99]}"#, "statuses"),
            (r#"{"statuses":[206]}"#, "statuses"),
            (r#"{"key":{"headers":["bad header"]}}"#, "key.headers[0]"),
            (r#"{"key":{"headers":["Authorization"]}}"#, "key.headers[0]"),
            (r#"{"key":{"query_ignore":["*"]}}"#, "key.query_ignore[0]"),
            (r#"{"cache_name":"a;b"}"#, "cache_name"),
            (r#"{"tag_header":"a b"}"#, "tag_header"),
            (r#"{"purge":{"token":"short"}}"#, "purge.token"),
            (
                r#"{"purge":{"token":"long enough but spaced"}}"#,
                "purge.token",
            ),
            (r#"{"purge":{"header":""}}"#, "purge.header"),
            (r#"{"purge":"x"}"#, "purge"),
            (r#"{"memory":{"max_age_ms":600000}}"#, "memory.max_age_ms"),
            (
                r#"{"memory":{"max_bytes":99999999999}}"#,
                "memory.max_bytes",
            ),
            (r#"{"stale":{"if_error_s":604801}}"#, "stale.if_error_s"),
            (
                r#"{"stale":{"while_revalidate_s":-1}}"#,
                "stale.while_revalidate_s",
            ),
            (r#"{"stale":{"grace_s":1}}"#, "stale.grace_s"),
            (r#"{"stale":30}"#, "stale"),
            (
                r#"{"collapse":{"max_wait_ms":300001}}"#,
                "collapse.max_wait_ms",
            ),
            (r#"{"collapse":{"poll_ms":5}}"#, "collapse.poll_ms"),
            (
                r#"{"collapse":{"exempt_content_types":["sse"]}}"#,
                "collapse.exempt_content_types[0]",
            ),
            (r#"{"collapse":{"lock_ms":5}}"#, "collapse.lock_ms"),
            (r#"{"hit_for_miss_s":604801}"#, "hit_for_miss_s"),
            (r#"{"rules":{"include":[{}]}}"#, "rules.include[0]"),
            (r#"{"rules":{"include":["/a"]}}"#, "rules.include[0]"),
            (
                r#"{"rules":{"exclude":[{"path":"a"}]}}"#,
                "rules.exclude[0].path",
            ),
            (
                r#"{"rules":{"exclude":[{"path":"/a","path_prefix":"/b"}]}}"#,
                "rules.exclude[0]",
            ),
            (
                r#"{"rules":{"include":[{"host":"a b"}]}}"#,
                "rules.include[0].host",
            ),
            (
                r#"{"rules":{"include":[{"regex":".*"}]}}"#,
                "rules.include[0].regex",
            ),
            (
                r#"{"rules":{"include":[{"host":5}]}}"#,
                "rules.include[0].host",
            ),
        ];
        for (json, field) in cases {
            let e = parse(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }

    #[test]
    fn errors_keep_serde_wording() {
        // The messages operators saw when the config was read by serde derive; an Envoy log
        // line is all they get, so they stay as they were.
        let cases = [
            (
                r#"{"store":{"timeout_ms":"fast"}}"#,
                r#"store.timeout_ms: invalid type: string "fast", expected u64"#,
            ),
            (
                r#"{"store":{"timeout_ms":-1}}"#,
                "store.timeout_ms: invalid value: integer `-1`, expected u64",
            ),
            (
                r#"{"store":{"timeout_ms":1e3}}"#,
                "store.timeout_ms: invalid type: floating point `1e3`, expected u64",
            ),
            (
                r#"{"heuristic_percent":256}"#,
                "heuristic_percent: invalid value: integer `256`, expected u8",
            ),
            (
                r#"{"statuses":[200,null]}"#,
                "statuses[1]: invalid type: null, expected u16",
            ),
            (
                r#"{"ignore_client_no_cache":1}"#,
                "ignore_client_no_cache: invalid type: integer `1`, expected a boolean",
            ),
            (
                r#"{"key":{"headers":{}}}"#,
                "key.headers: invalid type: map, expected a sequence",
            ),
            (
                r#"{"key":{"query_ignore":[true]}}"#,
                "key.query_ignore[0]: invalid type: boolean `true`, expected a string",
            ),
            (
                r#"{"methods":["POST"]}"#,
                "methods[0]: unknown variant `POST`, expected `GET` or `HEAD`",
            ),
            (
                r#"{"methods":[["GET"]]}"#,
                "methods[0]: invalid type: sequence, expected string or map",
            ),
            (
                r#"{"set_cookie":{"strip":1}}"#,
                "set_cookie.strip: invalid type: integer `1`, expected unit",
            ),
            (
                r#"{"set_cookie":{}}"#,
                "set_cookie: invalid value: map, expected map with a single key",
            ),
            (
                r#"{"purge":{"bogus":""}}"#,
                "purge.bogus: unknown field `bogus`, expected `token` or `header`",
            ),
            (
                r#"{"store":{"timeout":5}}"#,
                "store.timeout: unknown field `timeout`, expected one of `cluster`, \
                 `authority`, \
                 `timeout_ms`, `publish_timeout_ms`, `large_entry_ms_per_mib`, `breaker_failures`, \
                 `breaker_backoff_ms`, `breaker_max_backoff_ms`, `credentials`, `credentials_env`, `redis_cluster`",
            ),
            // Fields are taken in the object's (sorted) order: the first error is serde's.
            (
                r#"{"store":{"timeout_ms":"x","bogus":1}}"#,
                "store.bogus: unknown field `bogus`, expected one of `cluster`, `authority`, \
                 `timeout_ms`, `publish_timeout_ms`, `large_entry_ms_per_mib`, `breaker_failures`, \
                 `breaker_backoff_ms`, `breaker_max_backoff_ms`, `credentials`, `credentials_env`, `redis_cluster`",
            ),
            (
                r#"{"max_ttl_s":"x","default_ttl_s":"y"}"#,
                r#"default_ttl_s: invalid type: string "y", expected u64"#,
            ),
        ];
        for (json, message) in cases {
            assert_eq!(parse(json).unwrap_err().to_string(), message, "{json}");
        }
        // The unit-variant object form serde accepted still reads.
        let c = parse(r#"{"methods":[{"HEAD":null}],"set_cookie":{"strip":null}}"#).unwrap();
        assert_eq!(c.methods, vec![Method::Head]);
        assert_eq!(c.set_cookie, SetCookiePolicy::Strip);
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
        assert_eq!(parse(r#"{"store":[]}"#).unwrap_err().field, "store");
        assert_eq!(parse(r#"{"key":"x"}"#).unwrap_err().field, "key");
    }
}
