//! Reading the plugin JSON into the raw config, field by field, by path.
//!
//! One table ([`target`]) says where each field's value goes and how it is read; one loop
//! reads any object with it. Each field used to be an arm of its section's reader, with the
//! reading inlined into it: ~14 KB of .wasm for code that runs once per configuration, where
//! this costs a few. Entries are taken in the object's order (keys sorted, as serde_json's
//! map had them: the first error reported is the one serde reported), unknown fields are
//! refused, and `fields` words the errors as serde did.

use super::json::{Object, Value};
use super::{ConfigError, Method, RawConfig, SetCookiePolicy, err, fields};

/// Where a field's value goes, and so how it is read.
enum Target<'r> {
    U64(&'r mut u64),
    U8(&'r mut u8),
    Bool(&'r mut bool),
    Str(&'r mut String),
    Strings(&'r mut Vec<String>),
    Statuses(&'r mut Vec<u16>),
    Methods(&'r mut Vec<Method>),
    SetCookie(&'r mut SetCookiePolicy),
    Rules(&'r mut Vec<super::Rule>),
    /// An object whose fields are read as `<path>.<field>`.
    Section,
}

/// The fields of each object: what an unknown-field error says was expected.
const FIELDS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "store",
            "namespace",
            "default_ttl_s",
            "max_ttl_s",
            "heuristic_percent",
            "heuristic_max_s",
            "keep_stale_s",
            "stale",
            "collapse",
            "hit_for_miss_s",
            "ignore_client_no_cache",
            "event_stream_ignores_no_cache",
            "cdn_cache_control",
            "max_body_bytes",
            "max_recording_bytes",
            "methods",
            "statuses",
            "key",
            "set_cookie",
            "cache_name",
            "tag_header",
            "purge",
            "memory",
            "compression",
            "rules",
        ],
    ),
    (
        "store",
        &[
            "cluster",
            "authority",
            "timeout_ms",
            "publish_timeout_ms",
            "large_entry_ms_per_mib",
            "breaker_failures",
            "breaker_backoff_ms",
            "breaker_max_backoff_ms",
            "credentials",
            "credentials_env",
            "redis_cluster",
        ],
    ),
    ("key", &["query_ignore", "query_sort", "headers"]),
    ("purge", &["token", "header"]),
    ("memory", &["max_bytes", "max_age_ms"]),
    ("compression", &["enabled", "min_bytes"]),
    ("stale", &["while_revalidate_s", "if_error_s"]),
    (
        "collapse",
        &["max_wait_ms", "poll_ms", "exempt_content_types"],
    ),
    ("rules", &["include", "exclude"]),
];

/// The sections: objects of their own (checked to be objects before any field is read).
pub(super) fn sections() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(s, _)| *s).filter(|s| !s.is_empty())
}

/// Where the field at `path` goes in `raw`; `None` for no such field. Every field is here,
/// once (and in [`FIELDS`] for the error message).
fn target<'r>(raw: &'r mut RawConfig, path: &str) -> Option<Target<'r>> {
    use Target::*;
    let (s, k, p, m) = (
        &mut raw.store,
        &mut raw.key,
        &mut raw.purge,
        &mut raw.memory,
    );
    Some(match path {
        "store" | "key" | "purge" | "memory" | "compression" | "stale" | "collapse" | "rules" => {
            Section
        }
        "namespace" => Str(&mut raw.namespace),
        "default_ttl_s" => U64(&mut raw.default_ttl_s),
        "max_ttl_s" => U64(&mut raw.max_ttl_s),
        "heuristic_percent" => U8(&mut raw.heuristic_percent),
        "heuristic_max_s" => U64(&mut raw.heuristic_max_s),
        "keep_stale_s" => U64(&mut raw.keep_stale_s),
        "hit_for_miss_s" => U64(&mut raw.hit_for_miss_s),
        "ignore_client_no_cache" => Bool(&mut raw.ignore_client_no_cache),
        "event_stream_ignores_no_cache" => Bool(&mut raw.event_stream_ignores_no_cache),
        "cdn_cache_control" => Str(&mut raw.cdn_cache_control),
        "max_body_bytes" => U64(&mut raw.max_body_bytes),
        "max_recording_bytes" => U64(&mut raw.max_recording_bytes),
        "methods" => Methods(&mut raw.methods),
        "statuses" => Statuses(&mut raw.statuses),
        "set_cookie" => SetCookie(&mut raw.set_cookie),
        "cache_name" => Str(&mut raw.cache_name),
        "tag_header" => Str(&mut raw.tag_header),
        "store.cluster" => Str(&mut s.cluster),
        "store.authority" => Str(&mut s.authority),
        "store.timeout_ms" => U64(&mut s.timeout_ms),
        "store.publish_timeout_ms" => U64(&mut s.publish_timeout_ms),
        "store.large_entry_ms_per_mib" => U64(&mut s.large_entry_ms_per_mib),
        "store.breaker_failures" => U64(&mut s.breaker_failures),
        "store.breaker_backoff_ms" => U64(&mut s.breaker_backoff_ms),
        "store.breaker_max_backoff_ms" => U64(&mut s.breaker_max_backoff_ms),
        "store.credentials" => Str(&mut raw.store_credentials),
        "store.credentials_env" => Str(&mut raw.store_credentials_env),
        "store.redis_cluster" => Bool(&mut s.redis_cluster),
        "key.query_ignore" => Strings(&mut k.query_ignore),
        "key.query_sort" => Bool(&mut k.query_sort),
        "key.headers" => Strings(&mut k.headers),
        "purge.token" => Str(&mut p.token),
        "purge.header" => Str(&mut p.header),
        "memory.max_bytes" => U64(&mut m.max_bytes),
        "memory.max_age_ms" => U64(&mut m.max_age_ms),
        "compression.enabled" => Bool(&mut raw.compression.enabled),
        "compression.min_bytes" => U64(&mut raw.compression.min_bytes),
        "stale.while_revalidate_s" => U64(&mut raw.stale.while_revalidate_s),
        "stale.if_error_s" => U64(&mut raw.stale.if_error_s),
        "collapse.max_wait_ms" => U64(&mut raw.collapse.max_wait_ms),
        "collapse.poll_ms" => U64(&mut raw.collapse.poll_ms),
        "collapse.exempt_content_types" => Strings(&mut raw.collapse.exempt_content_types),
        "rules.include" => Rules(&mut raw.rules.include),
        "rules.exclude" => Rules(&mut raw.rules.exclude),
        _ => return None,
    })
}

const METHODS: &[&str] = &["GET", "HEAD"];
const SET_COOKIE: &[&str] = &["no-store", "strip"];

/// Reads the fields of `obj`, the object at `parent` ("" for the top), over `raw`.
pub(super) fn read_object(
    raw: &mut RawConfig,
    parent: &str,
    obj: &Object,
) -> Result<(), ConfigError> {
    for (k, v) in obj {
        let path = fields::join(parent, k);
        let Some(target) = target(raw, &path) else {
            let expected = FIELDS
                .iter()
                .find(|(s, _)| *s == parent)
                .map_or(&[][..], |(_, f)| *f);
            return Err(fields::unknown_field(parent, k, expected));
        };
        match target {
            Target::Section => match v {
                Value::Object(o) => read_object(raw, &path, o)?,
                _ => return Err(err(&path, "must be a JSON object")),
            },
            Target::U64(r) => *r = fields::u64(v, &path)?,
            Target::U8(r) => *r = fields::u8(v, &path)?,
            Target::Bool(r) => *r = fields::boolean(v, &path)?,
            Target::Str(r) => *r = fields::string(v, &path)?,
            Target::Strings(r) => {
                let items = fields::array(v, &path)?;
                *r = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    r.push(fields::string(item, &format!("{path}[{i}]"))?);
                }
            }
            Target::Statuses(r) => {
                let items = fields::array(v, &path)?;
                *r = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    r.push(fields::u16(item, &format!("{path}[{i}]"))?);
                }
            }
            Target::Methods(r) => {
                let items = fields::array(v, &path)?;
                *r = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    r.push(
                        match fields::variant(item, &format!("{path}[{i}]"), METHODS)? {
                            0 => Method::Get,
                            _ => Method::Head,
                        },
                    );
                }
            }
            Target::Rules(r) => *r = super::rules::read(v, &path)?,
            Target::SetCookie(r) => {
                *r = match fields::variant(v, &path, SET_COOKIE)? {
                    0 => SetCookiePolicy::NoStore,
                    _ => SetCookiePolicy::Strip,
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_field_has_a_target_and_every_target_is_listed() {
        let mut raw = RawConfig::default();
        for (section, names) in FIELDS {
            for name in *names {
                let path = fields::join(section, name);
                assert!(
                    target(&mut raw, &path).is_some(),
                    "{path} is listed, not read"
                );
            }
        }
        for section in sections() {
            assert!(matches!(target(&mut raw, section), Some(Target::Section)));
        }
        // And nothing is read that is not listed: an unlisted path has no target.
        assert!(target(&mut raw, "store.nope").is_none());
        assert!(target(&mut raw, "nope").is_none());
    }
}
