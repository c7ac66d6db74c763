//! Request -> cache key.
//!
//! The key material is everything that selects a response: namespace, scheme, authority,
//! path, normalised query, configured headers and, for a response that varies, the normalised
//! values of the headers it varies on. The material is hashed (SHA-256) into the Redis key, so
//! no request byte reaches a store command; the material itself is kept in the entry to detect
//! a collision or a foreign value on read.

use crate::config::{Config, KeyConfig};
use crate::http::RequestHead;
use crate::store::layout;
use sha2::{Digest, Sha256};
use std::collections::BinaryHeap;

/// The key of a resource before Vary is known: what the first lookup reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Unambiguous (length-prefixed) encoding of the request parts that select the entry. Kept
    /// in memory only (a variant's key is derived from it): request values such as cookies or
    /// tokens that `Vary` names are in it, so it never reaches the store.
    pub material: Vec<u8>,
    /// SHA-256 of the material: the Redis key's name, and what a stored value carries to prove
    /// it was written for this key (no request byte in the clear).
    pub digest: [u8; 32],
    /// The Redis key (`store::layout`): the resource's, or a variant's within it.
    pub redis_key: String,
}

impl CacheKey {
    fn from_material(material: Vec<u8>, redis_key: impl FnOnce(&[u8]) -> String) -> CacheKey {
        let digest: [u8; 32] = Sha256::digest(&material).into();
        CacheKey {
            redis_key: redis_key(&digest),
            digest,
            material,
        }
    }

    /// The primary key of a request: without Vary.
    pub fn primary(cfg: &Config, req: &RequestHead) -> CacheKey {
        let (path, query) = match req.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.path.as_str(), None),
        };
        // Sized once: the key is built for every request, hits included.
        let mut m = Material(Vec::with_capacity(
            64 + cfg.namespace.len()
                + req.authority.len()
                + req.path.len()
                + 96 * cfg.key.headers.len(),
        ));
        m.field(b"fleet-cache/1");
        m.field(cfg.namespace.as_bytes());
        let scheme = if req.scheme.is_empty() {
            "http"
        } else {
            req.scheme.as_str()
        };
        m.field_with(|out| push_lower(out, scheme));
        let host = authority_without_default_port(&req.authority, scheme);
        m.field_with(|out| push_lower(out, host));
        m.field(path.as_bytes());
        m.field_with(|out| push_query(out, query, &cfg.key));
        for name in &cfg.key.headers {
            m.field(name.as_bytes());
            m.header(name, req);
        }
        CacheKey::from_material(m.0, |d| layout::resource_key(&cfg.namespace, d))
    }

    /// The key of one variant: the primary key plus the normalised values of the request
    /// headers the response varies on. `names` are lower-cased and sorted.
    pub fn variant(&self, names: &[String], req: &RequestHead) -> CacheKey {
        let mut m = Material(self.material.clone());
        m.field(b"vary");
        for name in names {
            m.field(name.as_bytes());
            m.header(name, req);
        }
        CacheKey::from_material(m.0, |d| layout::variant_key(&self.redis_key, d))
    }
}

/// The Redis key of the set listing the resources that carry `tag` (purge by tag):
/// `<namespace>:tag:<sha256 of tag>`.
pub fn tag_set_key(namespace: &str, tag: &str) -> String {
    let mut m = Material::default();
    m.field(b"fleet-cache/tag/1");
    m.field(namespace.as_bytes());
    m.field(tag.as_bytes());
    layout::tag_set_key(namespace, &Sha256::digest(&m.0))
}

/// Length-prefixed fields, so `("ab","c")` and `("a","bc")` never encode alike.
#[derive(Default)]
struct Material(Vec<u8>);

impl Material {
    fn field(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// A field written in place by `write` (no intermediate string); its length prefix is
    /// filled in after.
    fn field_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        write(&mut self.0);
        let len = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// A request header's normalised value; an absent header and an empty one are different
    /// requests (a marker byte no header value can contain tells them apart).
    fn header(&mut self, name: &str, req: &RequestHead) {
        if req.has(name) {
            self.field(normalize_header_value(name, req.values(name)).as_bytes());
        } else {
            self.field(b"\xff absent");
        }
    }
}

/// Lower-case hex of `bytes`, appended to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// Whether two authorities name one origin under `scheme`: case aside, and the scheme's
/// default port aside (`Example.COM:80` over http is `example.com`).
pub fn same_authority(a: &str, b: &str, scheme: &str) -> bool {
    authority_without_default_port(a, scheme)
        .eq_ignore_ascii_case(authority_without_default_port(b, scheme))
}

/// The authority trimmed and without the scheme's default port; case left as sent.
fn authority_without_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let authority = authority.trim();
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    match authority.strip_suffix(default_port) {
        // Not `[::1]` alone: only strip a port that follows a host.
        Some(host) if !host.is_empty() => host,
        _ => authority,
    }
}

fn push_lower(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().map(|b| b.to_ascii_lowercase()));
}

fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(n, _)| n)
}

/// The query as the key sees it, appended to `out`. Without a configured normalisation it is
/// kept exactly as sent: an origin may tell `/x?a=1&&b=2` from `/x?a=1&b=2`, and `/x?` from
/// `/x` (the `?` is part of the key). With `key.query_ignore` or `key.query_sort`, ignored
/// parameters and empty ones are dropped and, when sorting, the rest sorted by name (a stable
/// sort keeps repeated parameters in their order). Parameters are compared as sent, without
/// decoding.
fn push_query(out: &mut Vec<u8>, query: Option<&str>, cfg: &KeyConfig) {
    let Some(query) = query else {
        return;
    };
    out.push(b'?');
    if cfg.query_ignore.is_empty() && !cfg.query_sort {
        out.extend_from_slice(query.as_bytes());
        return;
    }
    let kept = query.split('&').filter(|p| !p.is_empty()).filter(|p| {
        let name = param_name(p);
        !cfg.query_ignore
            .iter()
            .any(|ig| match ig.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == ig,
            })
    });
    let join = |out: &mut Vec<u8>, params: &mut dyn Iterator<Item = &str>| {
        for (i, p) in params.enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            out.extend_from_slice(p.as_bytes());
        }
    };
    if cfg.query_sort {
        // Each name split off once, not on every comparison. Parameters of one name keep
        // their order (`a=2&a=1` is not `a=1&a=2`): the position breaks ties, so any sort
        // orders as a stable one. A heap's (O(n log n) however many parameters a hostile URL
        // has): 4 KB less .wasm than the slice sorts' quicksort and its fallbacks.
        let params: Vec<(&str, usize, &str)> = kept
            .enumerate()
            .map(|(i, p)| (param_name(p), i, p))
            .collect();
        let params = BinaryHeap::from(params).into_sorted_vec();
        join(out, &mut params.into_iter().map(|(_, _, p)| p));
    } else {
        join(out, &mut { kept });
    }
}

/// Headers whose value is a comma-separated list of case-insensitive items, so `a ,B` and
/// `a, b` select one variant. Their order is kept: at equal `q`, common negotiation code
/// (Express' `negotiator`, Django) breaks ties by position, so `json, html` and `html, json`
/// can get different responses.
const CASE_INSENSITIVE_LISTS: [&str; 5] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "te",
];

/// Normalises the values of a header for keying: several lines become one list, optional
/// whitespace goes (around commas too), and for the known case-insensitive list headers, case
/// and empty items go too (their order stays: see [`CASE_INSENSITIVE_LISTS`]).
pub fn normalize_header_value<'a>(name: &str, values: impl Iterator<Item = &'a str>) -> String {
    let mut items: Vec<String> = Vec::new();
    let listed = CASE_INSENSITIVE_LISTS.contains(&name);
    for v in values {
        if listed {
            items.extend(
                v.split(',')
                    .map(|i| {
                        i.split(';')
                            .map(|p| p.trim())
                            .collect::<Vec<_>>()
                            .join(";")
                            .to_ascii_lowercase()
                    })
                    .filter(|i| !i.is_empty()),
            );
        } else {
            // Any value may be a list (RFC 9110 §5.6.1): whitespace around its commas is not
            // part of it, so `1,2` and ` 1, 2 ` select one variant; inner runs become one space.
            items.extend(
                v.split(',')
                    .map(|i| i.split_ascii_whitespace().collect::<Vec<_>>().join(" ")),
            );
        }
    }
    items.join(",")
}

/// What a response's `Vary` says about its variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No Vary: one response for every request of the resource.
    None,
    /// Varies on these request headers (lower-cased, sorted, deduplicated).
    Headers(Vec<String>),
    /// `Vary: *`: never served from a cache.
    Any,
}

/// Header names a response may vary on and be stored: past it, as `Vary: *`. Also bounds
/// [`insert_sorted`]'s work on an origin's list.
const MAX_VARY_NAMES: usize = 64;

/// Inserts `name` into the sorted list `names` unless it is there already. Sorting a list by
/// insertion is quadratic, fine for the short lists it is used on (Vary names, key headers),
/// and a sort's monomorph costs the .wasm ~3 KB.
pub fn insert_sorted(names: &mut Vec<String>, name: String) {
    if let Err(i) = names.binary_search(&name) {
        names.insert(i, name);
    }
}

impl Vary {
    pub fn parse<'a>(values: impl Iterator<Item = &'a str>) -> Vary {
        let mut names: Vec<String> = Vec::new();
        for v in values {
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = name.to_ascii_lowercase();
                // A member that is not a field name can't select a variant: as `*`, the
                // response is not stored (a stored record with it would be refused on read).
                if name == "*" || !crate::entry::valid_name(&name) {
                    return Vary::Any;
                }
                insert_sorted(&mut names, name);
                if names.len() > MAX_VARY_NAMES {
                    // No real response varies on that many: as `*` (not stored).
                    return Vary::Any;
                }
            }
        }
        if names.is_empty() {
            Vary::None
        } else {
            Vary::Headers(names)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::for_test("GET", path, headers)
    }

    fn key(cfg: &Config, r: &RequestHead) -> String {
        CacheKey::primary(cfg, r).redis_key
    }

    #[test]
    fn a_vary_member_that_is_not_a_field_name_is_vary_star() {
        assert_eq!(Vary::parse(["Accept, x y"].into_iter()), Vary::Any);
        assert_eq!(Vary::parse(["accept, x\u{1}"].into_iter()), Vary::Any);
        assert_eq!(
            Vary::parse(["Accept, X-Y"].into_iter()),
            Vary::Headers(vec!["accept".into(), "x-y".into()])
        );
    }

    #[test]
    fn key_is_namespace_plus_sha256_as_the_hash_tag() {
        let k = key(&Config::default(), &req("/a", &[]));
        assert!(k.starts_with("default:{") && k.ends_with('}'));
        assert_eq!(k.len(), "default:{}".len() + 64);
        assert!(
            k["default:{".len()..k.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
    }

    /// Keys are what the whole fleet's stored entries are found by: a change in how they are
    /// derived orphans every entry (and mixes versions during a rollout). Pinned here. Changed
    /// with entry format 3 (the query's `?` joins the key), and for Redis Cluster (the digest
    /// became the hash tag: same digests, braces around them), releases that need a new
    /// `namespace` anyway (README, "Entry format changes").
    #[test]
    fn keys_are_stable_across_versions() {
        let mut cfg = Config::default();
        cfg.key.query_sort = true;
        cfg.key.query_ignore = vec!["utm_*".into()];
        cfg.key.headers = vec!["accept-encoding".into()];
        let mut r = req("/a/b?z=1&utm_x=2&a=3", &[("accept-encoding", "GZIP, br")]);
        r.scheme = "HTTPS".into();
        r.authority = "Example.COM:443".into();
        let plain = key(&Config::default(), &req("/f/1k", &[]));
        assert_eq!(
            key(&cfg, &r),
            "default:{721d1fce97bebfd4bc14dfb18a1b13e981d1e961d0b1f6358dfe9a17ad547e0d}"
        );
        assert_eq!(
            plain,
            "default:{85f7a3e65e729d6c66bc5553ac2df08cddc38eb781e5180710d95e75b963f3f9}"
        );
    }

    #[test]
    fn authority_case_and_default_port_do_not_matter() {
        let cfg = Config::default();
        let mut a = req("/a", &[]);
        let base = key(&cfg, &a);
        a.authority = "EXAMPLE.com:80".into();
        assert_eq!(key(&cfg, &a), base);
        a.authority = "example.com:8080".into();
        assert_ne!(key(&cfg, &a), base);
        a.authority = "example.com:443".into();
        a.scheme = "https".into();
        let https = key(&cfg, &a);
        assert_ne!(https, base, "scheme is part of the key");
        a.authority = "example.com".into();
        assert_eq!(key(&cfg, &a), https);
    }

    #[test]
    fn path_query_and_namespace_separate_entries() {
        let cfg = Config::default();
        let base = key(&cfg, &req("/a?x=1", &[]));
        assert_ne!(key(&cfg, &req("/a?x=2", &[])), base);
        assert_ne!(key(&cfg, &req("/a", &[])), base);
        assert_ne!(key(&cfg, &req("/a?", &[])), key(&cfg, &req("/a?x", &[])));
        let other = Config {
            namespace: "other".into(),
            ..Config::default()
        };
        assert_ne!(
            key(&other, &req("/a?x=1", &[]))["other:".len()..],
            base["default:".len()..]
        );
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let cfg = Config::default();
        let mut a = req("/b", &[]);
        a.authority = "exa".into();
        let mut b = req("/b", &[]);
        b.authority = "ex".into();
        b.path = "a/b".into();
        assert_ne!(key(&cfg, &a), key(&cfg, &b));
    }

    #[test]
    fn query_ignore_and_sort() {
        let mut cfg = Config::default();
        cfg.key.query_ignore = vec!["utm_*".into(), "fbclid".into()];
        let plain = key(&cfg, &req("/a?b=2&a=1", &[]));
        assert_eq!(
            key(&cfg, &req("/a?b=2&utm_source=x&a=1&fbclid=9", &[])),
            plain
        );
        assert_ne!(key(&cfg, &req("/a?a=1&b=2", &[])), plain, "order kept");
        cfg.key.query_sort = true;
        assert_eq!(
            key(&cfg, &req("/a?a=1&b=2", &[])),
            key(&cfg, &req("/a?b=2&a=1", &[]))
        );
        // Repeated parameters keep their relative order.
        let mut query = Vec::new();
        push_query(&mut query, Some("b=1&a=2&a=1"), &cfg.key);
        assert_eq!(query, b"?a=2&a=1&b=1");
    }

    #[test]
    fn configured_headers_join_the_key() {
        let mut cfg = Config::default();
        cfg.key.headers = vec!["x-tenant".into()];
        let a = key(&cfg, &req("/a", &[("x-tenant", "blue")]));
        let b = key(&cfg, &req("/a", &[("x-tenant", "green")]));
        let none = key(&cfg, &req("/a", &[]));
        let empty = key(&cfg, &req("/a", &[("x-tenant", "")]));
        assert_ne!(a, b);
        assert_ne!(a, none);
        assert_ne!(empty, none, "absent and empty differ");
    }

    #[test]
    fn variants_differ_by_varied_header_and_normalise() {
        let cfg = Config::default();
        let names = vec!["accept".to_string()];
        let variant = |h: &[(&str, &str)]| {
            let r = req("/a", h);
            CacheKey::primary(&cfg, &r).variant(&names, &r).redis_key
        };
        let a = variant(&[("accept", "a")]);
        // In the resource's slot: its key, with the resource's hash tag, is the prefix.
        let primary = CacheKey::primary(&cfg, &req("/a", &[])).redis_key;
        assert!(a.starts_with(&format!("{primary}:")), "{a}");
        assert_eq!(a.matches('{').count(), 1, "{a}: one hash tag");
        assert_ne!(a, variant(&[("accept", "b")]));
        assert_ne!(a, variant(&[]));
        assert_ne!(variant(&[("accept", "")]), variant(&[]));
        assert_eq!(
            variant(&[("accept", "text/html, Application/JSON")]),
            variant(&[("accept", "text/html,application/json")])
        );
        // Order can decide the response at equal q: never merged.
        assert_ne!(
            variant(&[("accept", "text/html, application/json")]),
            variant(&[("accept", "application/json, text/html")])
        );
        assert_eq!(
            variant(&[("accept", "text/html"), ("accept", "application/json")]),
            variant(&[("accept", "text/html, application/json")])
        );
        assert_ne!(
            a,
            CacheKey::primary(&cfg, &req("/a", &[("accept", "a")])).redis_key
        );
    }

    #[test]
    fn rfc9110_5_6_1_whitespace_around_commas_selects_no_other_variant() {
        let n = |v: &'static str| normalize_header_value("x-list", [v].into_iter());
        assert_eq!(n("1,2"), n(" 1, 2 "));
        assert_eq!(n("1,2"), n("1 ,\t2"));
        assert_eq!(
            normalize_header_value("x-list", ["1", "2"].into_iter()),
            n("1, 2"),
            "two lines are one list"
        );
        assert_ne!(n("1,2"), n("2,1"), "order is kept");
        assert_ne!(n("a b"), n("ab"));
        let a = |v: &'static str| normalize_header_value("accept", [v].into_iter());
        assert_eq!(
            a("text/html,application/json"),
            a(" text/html , application/json ")
        );
        assert_ne!(
            a("text/html, application/json"),
            a("application/json, text/html")
        );
    }

    #[test]
    fn the_query_is_kept_exactly_without_a_configured_normalisation() {
        let cfg = Config::default();
        let k = |p: &str| key(&cfg, &req(p, &[]));
        assert_ne!(k("/x?a=1&&b=2"), k("/x?a=1&b=2"));
        assert_ne!(k("/x?"), k("/x"));
        assert_ne!(k("/x?a&"), k("/x?a"));
        assert_eq!(k("/x?a=1&b=2"), k("/x?a=1&b=2"));
        // A configured normalisation may merge them.
        let mut sorted = Config::default();
        sorted.key.query_sort = true;
        let s = |p: &str| key(&sorted, &req(p, &[]));
        assert_eq!(s("/x?b=2&&a=1"), s("/x?a=1&b=2"));
        assert_ne!(s("/x?"), s("/x"), "the `?` stays significant");
    }

    #[test]
    fn unknown_headers_keep_case_but_not_whitespace() {
        assert_eq!(
            normalize_header_value("x-a", ["  Foo   Bar "].into_iter()),
            "Foo Bar"
        );
        assert_eq!(
            normalize_header_value("accept-encoding", ["gzip, BR ,, deflate"].into_iter()),
            "gzip,br,deflate"
        );
        assert_eq!(
            normalize_header_value("accept", ["text/html ; q=0.5"].into_iter()),
            "text/html;q=0.5"
        );
    }

    #[test]
    fn vary_parsing() {
        assert_eq!(Vary::parse([].into_iter()), Vary::None);
        assert_eq!(Vary::parse([" , "].into_iter()), Vary::None);
        assert_eq!(
            Vary::parse(["Accept-Encoding, accept", "X-A"].into_iter()),
            Vary::Headers(vec![
                "accept".into(),
                "accept-encoding".into(),
                "x-a".into()
            ])
        );
        assert_eq!(Vary::parse(["accept, *"].into_iter()), Vary::Any);
    }

    #[test]
    fn vary_names_are_sorted_and_deduplicated_and_bounded() {
        assert_eq!(
            Vary::parse(["Accept-Language, accept", "X-A, accept"].into_iter()),
            Vary::Headers(vec![
                "accept".into(),
                "accept-language".into(),
                "x-a".into()
            ])
        );
        let many: Vec<String> = (0..=MAX_VARY_NAMES).map(|i| format!("x-{i}")).collect();
        assert_eq!(
            Vary::parse([many.join(",").as_str()].into_iter()),
            Vary::Any
        );
        let ok: Vec<String> = (0..MAX_VARY_NAMES).map(|i| format!("x-{i}")).collect();
        let both = format!("{}, {}", ok.join(","), ok.join(","));
        assert!(
            matches!(Vary::parse([both.as_str()].into_iter()), Vary::Headers(h) if h.len() == MAX_VARY_NAMES)
        );
    }
}
