//! Revalidation of a stored response with the origin (RFC 9111 §4.3): the conditional request
//! built from its validators, and the stored headers updated by a 304.

use crate::http::{ResponseHead, header_values};
use crate::policy;

/// The request headers that ask the origin whether the stored response is still current:
/// `If-None-Match` from its ETag, `If-Modified-Since` from its Last-Modified (§4.3.1). Empty
/// when it has neither.
pub fn conditional_headers(stored: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, cond) in [
        ("etag", "if-none-match"),
        ("last-modified", "if-modified-since"),
    ] {
        if let Some(v) = header_values(stored, name).next() {
            out.push((cond.to_string(), v.to_string()));
        }
    }
    out
}

/// The headers of a background revalidation's callout: the request's pseudo-headers and its
/// own headers (the origin sees what the client asked for, `Vary`'s headers included), but
/// not those of its connection or its own conditions, plus the entry's validators.
pub fn background_request(
    req: &crate::http::RequestHead,
    conditions: &[(String, String)],
) -> Vec<(String, String)> {
    let scheme = if req.scheme.is_empty() {
        "http"
    } else {
        &req.scheme
    };
    let mut out = vec![
        (":method".to_string(), req.method.clone()),
        (":path".to_string(), req.path.clone()),
        (":authority".to_string(), req.authority.clone()),
        (":scheme".to_string(), scheme.to_string()),
    ];
    // Its connection's, its own conditions and range, and Envoy's own.
    const NOT_FORWARDED: [&str; 12] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "range",
        "cache-control",
        "pragma",
        "x-request-id",
    ];
    let prefixes = ["if-", "x-envoy-", "proxy-"];
    let own = |n: &str| {
        !NOT_FORWARDED.iter().any(|f| crate::entry::same(f, n))
            && !prefixes.iter().any(|p| n.starts_with(p))
    };
    out.extend(req.headers.iter().filter(|(n, _)| own(n)).cloned());
    out.extend(conditions.iter().cloned());
    out
}

/// The stored headers updated with those of a 304 (§4.3.4): each header field the 304 carries
/// replaces every stored line of that name, except those never stored (hop-by-hop, per-fetch,
/// `Set-Cookie`, the targeted field).
pub fn merge_not_modified(
    stored: &[(String, String)],
    not_modified: &ResponseHead,
    targeted_field: Option<&str>,
) -> Vec<(String, String)> {
    let fresh = policy::stored_headers(not_modified, true, targeted_field);
    let mut merged: Vec<(String, String)> = stored
        .iter()
        .filter(|(n, _)| !fresh.iter().any(|(f, _)| f == n))
        .cloned()
        .collect();
    merged.extend(fresh);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc9111_4_3_1_validators_become_conditions() {
        let stored = pairs(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ]);
        assert_eq!(
            conditional_headers(&stored),
            pairs(&[
                ("if-none-match", "\"v1\""),
                ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")
            ])
        );
        assert!(conditional_headers(&pairs(&[("content-type", "x")])).is_empty());
    }

    #[test]
    fn rfc9111_4_3_4_a_304_updates_the_stored_headers() {
        let stored = pairs(&[
            ("content-type", "text/plain"),
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]);
        let nm = ResponseHead::for_test(
            304,
            &[
                ("cache-control", "max-age=99"),
                ("x-multi", "c"),
                ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("connection", "close"),
                ("content-length", "0"),
                ("set-cookie", "a=b"),
                ("cdn-cache-control", "max-age=5"),
            ],
        );
        let merged = merge_not_modified(&stored, &nm, Some("cdn-cache-control"));
        assert_eq!(
            merged,
            pairs(&[
                ("content-type", "text/plain"),
                ("etag", "\"v1\""),
                ("cache-control", "max-age=99"),
                ("x-multi", "c"),
                // The 304's Date replaces the stored one (RFC 9111 §4.3.4).
                ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ])
        );
    }
}
