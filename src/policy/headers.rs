//! Which response headers are stored and replayed.

use crate::entry::never_replayed;
use crate::http::ResponseHead;

/// The headers of a response as they are stored: without hop-by-hop and per-fetch headers,
/// without those `Connection` names, and without `Set-Cookie` when it is stripped.
pub fn stored_headers(
    resp: &ResponseHead,
    strip_set_cookie: bool,
    targeted_field: Option<&str>,
) -> Vec<(String, String)> {
    let connection_listed: Vec<String> = resp
        .values("connection")
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    resp.headers
        .iter()
        .filter(|(name, _)| {
            let n = name.to_ascii_lowercase();
            // Hop-by-hop, per-fetch, pseudo- and `x-envoy-*` headers: an entry holding one is
            // refused on read (`entry::decode`), so the list lives there.
            let dropped = never_replayed(&n)
                || connection_listed.contains(&n)
                || (strip_set_cookie && n == "set-cookie")
                // Meant for this cache (RFC 9213): not for anyone downstream.
                || targeted_field == Some(n.as_str());
            !dropped
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_per_fetch_headers_are_not_stored() {
        let r = ResponseHead::for_test(
            200,
            &[
                ("content-type", "text/plain"),
                ("connection", "close, X-Private-Hop"),
                ("x-private-hop", "1"),
                ("transfer-encoding", "chunked"),
                ("date", "x"),
                ("age", "1"),
                ("content-length", "5"),
                ("x-envoy-upstream-service-time", "3"),
                ("keep-alive", "timeout=5"),
                ("etag", "\"v1\""),
                ("set-cookie", "a=b"),
                ("cdn-cache-control", "max-age=5"),
            ],
        );
        let kept: Vec<String> = stored_headers(&r, false, Some("cdn-cache-control"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // Date is the response's own: stored and replayed (with Age) on a hit.
        assert_eq!(kept, vec!["content-type", "date", "etag", "set-cookie"]);
    }
}
