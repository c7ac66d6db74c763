//! Removing entries: operators' purges (by URL, by tag; authenticated) and the invalidation
//! that a successful unsafe request causes (RFC 9111 §4.4). Pure: which keys, which replies.

use crate::config::Config;
use crate::flow::OwnedReply;
use crate::http::{RequestHead, ResponseHead};
use crate::key::{CacheKey, same_authority, tag_set_key};
use crate::store::StoreError;

/// The request method operators purge with (as Varnish, nginx and Squid do).
pub const PURGE_METHOD: &str = "PURGE";
/// Purge by tag instead of by URL: the tags, space or comma separated.
pub const PURGE_TAGS_HEADER: &str = "x-purge-tags";

/// Most tags one response carries into the store (more are counted and not recorded), and one
/// purge may name (more are refused: never a silent partial purge).
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes; longer ones are treated as the ones past [`MAX_TAGS`].
pub const MAX_TAG_LEN: usize = 256;

/// What a PURGE request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum PurgeRequest {
    /// Refused (purging disabled, or no valid token): answer this.
    Refused(OwnedReply),
    /// Remove these resources (their keys).
    Resources(Vec<String>),
    /// Remove every resource listed in these tag sets (their keys).
    Tags(Vec<String>),
}

pub fn purge_request(cfg: &Config, req: &RequestHead) -> PurgeRequest {
    let Some(token) = &cfg.purge.token else {
        return PurgeRequest::Refused(text_reply(
            405,
            "purging is disabled: the cache has no purge.token configured\n",
        ));
    };
    let presented = req.header(&cfg.purge.header).unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return PurgeRequest::Refused(text_reply(
            403,
            &format!(
                "purge refused: missing or wrong {} header\n",
                cfg.purge.header
            ),
        ));
    }
    if req.has(PURGE_TAGS_HEADER) {
        let (tags, over) = tags_of(req.values(PURGE_TAGS_HEADER));
        if over > 0 {
            return PurgeRequest::Refused(text_reply(
                400,
                &format!(
                    "purge refused: {PURGE_TAGS_HEADER} names {} tags ({over} over the limit); \
                     at most {MAX_TAGS} per request, each at most {MAX_TAG_LEN} bytes: nothing \
                     was purged\n",
                    tags.len() + over
                ),
            ));
        }
        if tags.is_empty() {
            return PurgeRequest::Refused(text_reply(
                400,
                &format!("purge refused: {PURGE_TAGS_HEADER} names no tag\n"),
            ));
        }
        return PurgeRequest::Tags(
            tags.iter()
                .map(|t| tag_set_key(&cfg.namespace, t))
                .collect(),
        );
    }
    PurgeRequest::Resources(vec![CacheKey::primary(cfg, req).redis_key])
}

/// The answer to a purge once the store has answered.
pub fn purge_reply(result: Result<u64, StoreError>) -> OwnedReply {
    match result {
        Ok(n) => {
            let mut r = text_reply(200, &format!("{{\"purged\":{n}}}\n"));
            r.headers[0].1 = "application/json".into();
            r
        }
        Err(e) => text_reply(
            502,
            &format!("purge failed: the store answered {}\n", e.as_str()),
        ),
    }
}

/// The tag sets (their keys) a response joins from the configured tag header, deduplicated
/// and bounded, and how many of its tags were past the bounds (not recorded: the caller
/// counts them).
pub fn response_tags(cfg: &Config, resp: &ResponseHead) -> (Vec<String>, usize) {
    match &cfg.tag_header {
        Some(h) => {
            let (tags, over) = tags_of(resp.values(h));
            let keys = tags
                .iter()
                .map(|t| tag_set_key(&cfg.namespace, t))
                .collect();
            (keys, over)
        }
        None => (Vec::new(), 0),
    }
}

/// The distinct tags of a header's values, at most [`MAX_TAGS`] of at most [`MAX_TAG_LEN`]
/// bytes, and how many others were named (too many or too long).
fn tags_of<'a>(values: impl Iterator<Item = &'a str>) -> (Vec<String>, usize) {
    let mut tags: Vec<String> = Vec::new();
    let mut over = 0;
    for v in values {
        for t in v.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
            if t.is_empty() || tags.iter().any(|x| x == t) {
                continue;
            }
            if t.len() > MAX_TAG_LEN || tags.len() == MAX_TAGS {
                over += 1;
            } else {
                tags.push(t.to_string());
            }
        }
    }
    (tags, over)
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI, and
/// the URIs in `Location` and `Content-Location` when they have the same origin. Returns the
/// resource keys to remove (empty when nothing is to be invalidated).
pub fn invalidation_targets(cfg: &Config, req: &RequestHead, resp: &ResponseHead) -> Vec<String> {
    let safe = matches!(
        req.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | PURGE_METHOD
    );
    if safe || !(200..400).contains(&resp.status) {
        return Vec::new();
    }
    let mut keys = vec![CacheKey::primary(cfg, req).redis_key];
    for name in ["location", "content-location"] {
        if let Some(path) = resp.header(name).and_then(|v| same_origin_path(req, v)) {
            let target = RequestHead {
                path,
                ..req.clone()
            };
            let key = CacheKey::primary(cfg, &target).redis_key;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The path (and query) of a URI reference if it points at the request's own origin: an
/// absolute path, or an absolute URI with the same scheme and authority.
fn same_origin_path(req: &RequestHead, uri: &str) -> Option<String> {
    let uri = uri.trim();
    if uri.starts_with('/') && !uri.starts_with("//") {
        return Some(uri.to_string());
    }
    // The scheme ends at the first colon (RFC 3986 §3.1); an authority follows `//`.
    let (scheme, rest) = uri.split_once(':')?;
    let rest = rest.strip_prefix("//")?;
    let req_scheme = if req.scheme.is_empty() {
        "http"
    } else {
        req.scheme.as_str()
    };
    if !scheme.eq_ignore_ascii_case(req_scheme) {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    same_authority(authority, &req.authority, scheme).then(|| path.to_string())
}

fn text_reply(status: u16, body: &str) -> OwnedReply {
    OwnedReply {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.as_bytes().to_vec(),
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PurgeConfig;

    const TOKEN: &str = "0123456789abcdef-token";

    fn cfg() -> Config {
        Config {
            purge: PurgeConfig {
                token: Some(TOKEN.into()),
                header: "x-purge-token".into(),
            },
            ..Config::default()
        }
    }

    fn purge(headers: &[(&str, &str)]) -> PurgeRequest {
        purge_request(&cfg(), &RequestHead::for_test("PURGE", "/a?x=1", headers))
    }

    #[test]
    fn purging_needs_the_token() {
        let PurgeRequest::Refused(r) = purge(&[]) else {
            panic!()
        };
        assert_eq!(r.status, 403);
        let PurgeRequest::Refused(r) = purge(&[("x-purge-token", "0123456789abcdef-tokeX")]) else {
            panic!()
        };
        assert_eq!(r.status, 403);
        let off = purge_request(
            &Config::default(),
            &RequestHead::for_test("PURGE", "/", &[]),
        );
        assert!(matches!(off, PurgeRequest::Refused(r) if r.status == 405));
    }

    #[test]
    fn purge_by_url_targets_the_resource_key() {
        let expected = CacheKey::primary(&cfg(), &RequestHead::for_test("GET", "/a?x=1", &[]));
        assert_eq!(
            purge(&[("x-purge-token", TOKEN)]),
            PurgeRequest::Resources(vec![expected.redis_key])
        );
    }

    #[test]
    fn purge_by_tag_targets_tag_sets() {
        let r = purge(&[("x-purge-token", TOKEN), ("x-purge-tags", "a, b a")]);
        assert_eq!(
            r,
            PurgeRequest::Tags(vec![
                tag_set_key("default", "a"),
                tag_set_key("default", "b")
            ])
        );
        assert!(matches!(
            purge(&[("x-purge-token", TOKEN), ("x-purge-tags", " ,")]),
            PurgeRequest::Refused(r) if r.status == 400
        ));
    }

    #[test]
    fn a_purge_naming_more_tags_than_the_limit_is_refused_whole() {
        let forty: String = (0..40).map(|i| format!("t{i} ")).collect();
        let PurgeRequest::Refused(r) = purge(&[("x-purge-token", TOKEN), ("x-purge-tags", &forty)])
        else {
            panic!("a partial purge")
        };
        assert_eq!(r.status, 400);
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.contains("40 tags") && text.contains("at most 32"),
            "{text}"
        );
        let long = format!("ok {}", "x".repeat(MAX_TAG_LEN + 1));
        assert!(matches!(
            purge(&[("x-purge-token", TOKEN), ("x-purge-tags", &long)]),
            PurgeRequest::Refused(r) if r.status == 400
        ));
        let max: String = (0..MAX_TAGS).map(|i| format!("t{i} ")).collect();
        assert!(matches!(
            purge(&[("x-purge-token", TOKEN), ("x-purge-tags", &max)]),
            PurgeRequest::Tags(t) if t.len() == MAX_TAGS
        ));
    }

    #[test]
    fn response_tags_are_bounded_and_deduplicated() {
        let c = cfg();
        let many: String = (0..100).map(|i| format!("t{i} ")).collect();
        let r = ResponseHead::for_test(200, &[("surrogate-key", &many), ("surrogate-key", "t1")]);
        let (tags, over) = response_tags(&c, &r);
        assert_eq!(
            (tags.len(), over),
            (MAX_TAGS, 100 - MAX_TAGS),
            "counted, not silent"
        );
        let long = "x".repeat(MAX_TAG_LEN + 1);
        let r = ResponseHead::for_test(200, &[("surrogate-key", &long)]);
        assert_eq!(response_tags(&c, &r), (vec![], 1));
        let off = Config {
            tag_header: None,
            ..cfg()
        };
        let r = ResponseHead::for_test(200, &[("surrogate-key", "a")]);
        assert_eq!(response_tags(&off, &r), (vec![], 0));
    }

    #[test]
    fn rfc9111_4_4_unsafe_methods_invalidate_target_and_same_origin_locations() {
        let c = cfg();
        let key =
            |path: &str| CacheKey::primary(&c, &RequestHead::for_test("GET", path, &[])).redis_key;
        let post = RequestHead::for_test("POST", "/items", &[]);
        let created = ResponseHead::for_test(
            201,
            &[
                ("location", "/items/7"),
                ("content-location", "http://EXAMPLE.com:80/items/7?v=1"),
            ],
        );
        assert_eq!(
            invalidation_targets(&c, &post, &created),
            vec![key("/items"), key("/items/7"), key("/items/7?v=1")]
        );
        let elsewhere = ResponseHead::for_test(
            200,
            &[
                ("location", "http://other.example/x"),
                ("content-location", "https://example.com/y"),
            ],
        );
        assert_eq!(
            invalidation_targets(&c, &post, &elsewhere),
            vec![key("/items")]
        );
        for method in ["PUT", "DELETE", "PATCH"] {
            let r = RequestHead::for_test(method, "/items", &[]);
            assert_eq!(
                invalidation_targets(&c, &r, &ResponseHead::for_test(204, &[])),
                vec![key("/items")]
            );
        }
        // Errors and safe methods invalidate nothing.
        assert!(invalidation_targets(&c, &post, &ResponseHead::for_test(500, &[])).is_empty());
        assert!(invalidation_targets(&c, &post, &ResponseHead::for_test(404, &[])).is_empty());
        let get = RequestHead::for_test("GET", "/items", &[]);
        assert!(invalidation_targets(&c, &get, &ResponseHead::for_test(200, &[])).is_empty());
    }

    #[test]
    fn purge_replies() {
        assert_eq!(purge_reply(Ok(3)).status, 200);
        assert_eq!(purge_reply(Ok(3)).body, b"{\"purged\":3}\n");
        assert_eq!(purge_reply(Err(StoreError::Unavailable)).status, 502);
    }
}
