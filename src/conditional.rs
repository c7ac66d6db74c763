//! Clients' conditional requests answered from a stored response (RFC 9110 §13): a client
//! that already holds the current representation gets a 304 instead of the body.

use crate::http::{RequestHead, header_values};
use crate::policy::http_date_s;

/// Whether the stored response satisfies the client's own validators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No validator of the client's matches: send the full response.
    Send,
    /// The client's copy is current: 304 Not Modified.
    NotModified,
}

/// Evaluates `If-None-Match` (weak comparison, RFC 9110 §13.1.2) and, only without it,
/// `If-Modified-Since` (§13.1.3) against the stored headers, for GET and HEAD. The caller
/// applies it only to a stored 2xx: preconditions are ignored for other answers (§13.2.1).
pub fn evaluate(req: &RequestHead, stored: &[(String, String)]) -> Precondition {
    let stored_header = |name: &str| header_values(stored, name).next();
    if req.has("if-none-match") {
        // `*` matches any current representation, with or without an ETag.
        let current = stored_header("etag").and_then(opaque);
        let matched = req.values("if-none-match").any(|v| {
            v.trim() == "*"
                || split_etags(v)
                    .into_iter()
                    .any(|t| current.is_some() && opaque(t) == current)
        });
        return if matched {
            Precondition::NotModified
        } else {
            Precondition::Send
        };
    }
    if let Some(since) = req.header("if-modified-since").and_then(http_date_s) {
        let modified = stored_header("last-modified").and_then(http_date_s);
        if modified.is_some_and(|m| m <= since) {
            return Precondition::NotModified;
        }
    }
    Precondition::Send
}

/// The opaque part of an entity tag, for weak comparison: `W/"x"` and `"x"` compare equal.
/// `None` for something that is not an entity tag.
fn opaque(tag: &str) -> Option<&str> {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    (t.len() >= 2 && t.starts_with('"') && t.ends_with('"')).then_some(t)
}

/// Splits a list of entity tags; commas inside a quoted tag do not split.
fn split_etags(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    for (i, c) in v.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers a 304 carries (RFC 9110 §15.4.5): those that would have been sent in a 200 and
/// guide caches, and `Last-Modified` when there is no ETag.
pub fn not_modified_headers(stored: &[(String, String)]) -> Vec<(String, String)> {
    let has_etag = stored.iter().any(|(n, _)| n == "etag");
    stored
        .iter()
        .filter(|(n, _)| kept_in_not_modified(n, has_etag))
        .cloned()
        .collect()
}

/// Whether a stored header line (lower-case name) goes into a 304 built from the entry;
/// `has_etag`: the entry has an ETag (then Last-Modified is left out).
pub fn kept_in_not_modified(name: &str, has_etag: bool) -> bool {
    matches!(
        name,
        "cache-control" | "content-location" | "date" | "etag" | "expires" | "vary"
    ) || (name == "last-modified" && !has_etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn eval(req: &[(&str, &str)], st: &[(&str, &str)]) -> Precondition {
        evaluate(&RequestHead::for_test("GET", "/", req), &stored(st))
    }

    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const BEFORE: &str = "Tue, 14 Nov 2023 22:13:19 GMT";
    const AFTER: &str = "Wed, 15 Nov 2023 00:00:00 GMT";

    #[test]
    fn rfc9110_13_1_2_if_none_match_uses_weak_comparison() {
        let st = [("etag", "W/\"v1\"")];
        assert_eq!(
            eval(&[("if-none-match", "\"v1\"")], &st),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "W/\"v1\"")], &st),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "\"a\", W/\"v1\"")], &st),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "\"v2\"")], &st),
            Precondition::Send
        );
        assert_eq!(
            eval(&[("if-none-match", "*")], &st),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "v1")], &st),
            Precondition::Send,
            "not a tag"
        );
        assert_eq!(
            eval(&[("if-none-match", "\"v1\"")], &[]),
            Precondition::Send
        );
        assert_eq!(
            eval(&[("if-none-match", "*")], &[]),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "\"a,b\"")], &[("etag", "\"a,b\"")]),
            Precondition::NotModified
        );
    }

    #[test]
    fn rfc9110_13_1_3_if_modified_since_only_without_if_none_match() {
        let st = [("last-modified", LM), ("etag", "\"v1\"")];
        assert_eq!(
            eval(&[("if-modified-since", LM)], &st),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-modified-since", AFTER)], &st),
            Precondition::NotModified
        );
        assert_eq!(
            eval(&[("if-modified-since", BEFORE)], &st),
            Precondition::Send
        );
        assert_eq!(
            eval(&[("if-modified-since", "garbage")], &st),
            Precondition::Send
        );
        assert_eq!(
            eval(
                &[("if-none-match", "\"v2\""), ("if-modified-since", AFTER)],
                &st
            ),
            Precondition::Send,
            "If-None-Match decides alone"
        );
        assert_eq!(
            eval(&[("if-modified-since", AFTER)], &[]),
            Precondition::Send
        );
    }

    #[test]
    fn rfc9110_15_4_5_not_modified_headers() {
        let st = stored(&[
            ("content-type", "text/plain"),
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("last-modified", LM),
            ("vary", "accept"),
        ]);
        let names: Vec<String> = not_modified_headers(&st)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["etag", "cache-control", "vary"]);
        let st = stored(&[("last-modified", LM)]);
        assert_eq!(not_modified_headers(&st).len(), 1);
    }
}
