//! The `rules` section: which requests the cache handles at all. A request outside them is
//! passed on without a lookup, a recording or a wait (`fwd=bypass; detail=excluded`).
//!
//! ```json
//! "rules": {"include": [{"host": "api.example.com", "path_prefix": "/v1/"}],
//!           "exclude": [{"path_prefix": "/v1/admin/"}, {"path": "/v1/login"}]}
//! ```
//! A rule matches when every part it names matches: `host` exactly (case aside, port aside)
//! or, written `*.example.com`, any subdomain; `path` the path exactly (query aside);
//! `path_prefix` its start. A request is handled when it matches an `include` rule (or there
//! are none) and no `exclude` rule. No regular expressions: no crate for them fits the .wasm
//! budget, and prefixes and exact matches cover routing's own vocabulary.

use super::json::Value;
use super::{ConfigError, err, fields};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RulesConfig {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Lower case; `*.example.com` matches subdomains of example.com.
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
}

impl RulesConfig {
    /// Whether the cache handles a request for `authority` and `path` (with its query).
    pub fn admits(&self, authority: &str, path: &str) -> bool {
        let host = host_of(authority);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let hits = |r: &Rule| r.matches(&host, path);
        (self.include.is_empty() || self.include.iter().any(hits)) && !self.exclude.iter().any(hits)
    }
}

impl Rule {
    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = self
            .host
            .as_deref()
            .is_none_or(|h| match h.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => h == host,
            });
        host_ok
            && self.path.as_deref().is_none_or(|p| p == path)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

/// The host of an `:authority`, lower case, without its port.
fn host_of(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        // Not the inside of an IPv6 literal (`[::1]`).
        Some((h, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.to_ascii_lowercase()
}

/// Reads a list of rules (the value of `rules.include` or `rules.exclude`).
pub(super) fn read(v: &Value, path: &str) -> Result<Vec<Rule>, ConfigError> {
    let items = fields::array(v, path)?;
    let mut rules = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Value::Object(o) = item else {
            return Err(err(&at, "must be a JSON object"));
        };
        let mut rule = Rule::default();
        for (k, v) in o {
            let field = fields::join(&at, k);
            let value = fields::string(v, &field)?;
            let slot = match k.as_str() {
                "host" => &mut rule.host,
                "path" => &mut rule.path,
                "path_prefix" => &mut rule.path_prefix,
                _ => {
                    return Err(fields::unknown_field(
                        &at,
                        k,
                        &["host", "path", "path_prefix"],
                    ));
                }
            };
            *slot = Some(value);
        }
        if let Some(h) = &mut rule.host {
            h.make_ascii_lowercase();
            let name = h.strip_prefix("*.").unwrap_or(h);
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(err(
                    &format!("{at}.host"),
                    "must be a host name, or *.domain",
                ));
            }
        }
        for (name, p) in [("path", &rule.path), ("path_prefix", &rule.path_prefix)] {
            if p.as_deref().is_some_and(|p| !p.starts_with('/')) {
                return Err(err(&format!("{at}.{name}"), "must start with /"));
            }
        }
        if rule.path.is_some() && rule.path_prefix.is_some() {
            return Err(err(&at, "path and path_prefix exclude each other"));
        }
        if rule == Rule::default() {
            return Err(err(&at, "must name a host, a path or a path_prefix"));
        }
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: Option<&str>, path: Option<&str>, prefix: Option<&str>) -> Rule {
        Rule {
            host: host.map(Into::into),
            path: path.map(Into::into),
            path_prefix: prefix.map(Into::into),
        }
    }

    #[test]
    fn includes_then_excludes_by_host_and_path() {
        let r = RulesConfig {
            include: vec![
                rule(Some("api.example.com"), None, Some("/v1/")),
                rule(Some("*.cdn.example.com"), None, None),
            ],
            exclude: vec![
                rule(None, None, Some("/v1/admin/")),
                rule(None, Some("/v1/login"), None),
            ],
        };
        assert!(r.admits("api.example.com", "/v1/items?page=2"));
        assert!(r.admits("API.Example.com:8443", "/v1/items"));
        assert!(!r.admits("api.example.com", "/v2/items"), "not included");
        assert!(!r.admits("other.example.com", "/v1/items"));
        assert!(!r.admits("api.example.com", "/v1/admin/users"), "excluded");
        assert!(
            !r.admits("api.example.com", "/v1/login?next=/"),
            "exact, query aside"
        );
        assert!(
            r.admits("api.example.com", "/v1/login/help"),
            "exact is exact"
        );
        assert!(r.admits("img.cdn.example.com", "/a.png"));
        assert!(r.admits("a.b.cdn.example.com", "/a.png"));
        assert!(
            !r.admits("cdn.example.com", "/a.png"),
            "a subdomain, not the domain"
        );
        assert!(!r.admits("evilcdn.example.com", "/a.png"));
        // No rules: everything.
        assert!(RulesConfig::default().admits("any", "/"));
        // IPv6 literals keep their colons.
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
    }
}
