//! What to do with a request before any lookup.

use super::CacheControl;
use crate::config::{Config, Method};
use crate::http::RequestHead;

/// What to do with a request before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Look the request up (GET or HEAD).
    Lookup(Method),
    /// Don't look up (the client asked for a fresh answer), but record the response.
    Refresh(Method),
    /// Not the cache's business: pass it on, don't record.
    Bypass(BypassReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// The method is not configured for caching.
    Method,
    /// The client sent `Cache-Control: no-store`.
    NoStore,
    /// A protocol upgrade (WebSocket): a tunnel, not a response.
    Upgrade,
    /// Outside the configured `rules` (hosts, paths).
    Excluded,
}

pub fn request_policy(cfg: &Config, req: &RequestHead) -> RequestPolicy {
    let method = match req.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return RequestPolicy::Bypass(BypassReason::Method),
    };
    if !cfg.methods.contains(&method) {
        return RequestPolicy::Bypass(BypassReason::Method);
    }
    if !cfg.rules.admits(&req.authority, &req.path) {
        return RequestPolicy::Bypass(BypassReason::Excluded);
    }
    if req.has("upgrade") {
        return RequestPolicy::Bypass(BypassReason::Upgrade);
    }
    let cc = CacheControl::parse(req.values("cache-control"));
    if cc.no_store {
        return RequestPolicy::Bypass(BypassReason::NoStore);
    }
    // Pragma: no-cache is the HTTP/1.0 spelling, honoured only without Cache-Control
    // (RFC 9111 §5.4).
    let pragma_no_cache = !req.has("cache-control")
        && req.values("pragma").any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
        });
    if (cc.no_cache || pragma_no_cache)
        && !cfg.ignore_client_no_cache
        && !(cfg.event_stream_ignores_no_cache && accepts_event_stream(req))
    {
        return RequestPolicy::Refresh(method);
    }
    // Preconditions the stored response can't evaluate for the origin (RFC 9110 §13.2.1):
    // the origin answers them; a full 200 that comes back is still recorded.
    if req.has("if-match")
        || req.has("if-unmodified-since")
        || (req.has("if-range") && req.has("range"))
    {
        return RequestPolicy::Refresh(method);
    }
    RequestPolicy::Lookup(method)
}

/// Whether the request accepts `text/event-stream` (as `EventSource` asks for it).
fn accepts_event_stream(req: &RequestHead) -> bool {
    req.values("accept").any(|v| {
        v.split(',').any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::for_test("GET", "/", headers)
    }

    #[test]
    fn event_stream_requests_may_ignore_client_no_cache_and_only_they() {
        // What a browser's EventSource sends.
        let sse = get(&[
            ("accept", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("pragma", "no-cache"),
        ]);
        let json = get(&[
            ("accept", "application/json"),
            ("cache-control", "no-cache"),
        ]);
        let cfg = Config::default();
        assert_eq!(
            request_policy(&cfg, &sse),
            RequestPolicy::Refresh(Method::Get)
        );
        let on = Config {
            event_stream_ignores_no_cache: true,
            ..Config::default()
        };
        assert_eq!(
            request_policy(&on, &sse),
            RequestPolicy::Lookup(Method::Get)
        );
        assert_eq!(
            request_policy(&on, &json),
            RequestPolicy::Refresh(Method::Get)
        );
        let listed = get(&[
            ("accept", "text/html;q=0.5, TEXT/Event-Stream ; q=1"),
            ("cache-control", "no-cache"),
        ]);
        assert_eq!(
            request_policy(&on, &listed),
            RequestPolicy::Lookup(Method::Get)
        );
        let no_store = get(&[
            ("accept", "text/event-stream"),
            ("cache-control", "no-store"),
        ]);
        assert_eq!(
            request_policy(&on, &no_store),
            RequestPolicy::Bypass(BypassReason::NoStore),
            "no-store is still honoured"
        );
    }

    #[test]
    fn request_policy_cases() {
        let cfg = Config::default();
        let mut r = get(&[]);
        assert_eq!(request_policy(&cfg, &r), RequestPolicy::Lookup(Method::Get));
        r.method = "HEAD".into();
        assert_eq!(
            request_policy(&cfg, &r),
            RequestPolicy::Lookup(Method::Head)
        );
        r.method = "POST".into();
        assert_eq!(
            request_policy(&cfg, &r),
            RequestPolicy::Bypass(BypassReason::Method)
        );
        let get_only = Config {
            methods: vec![Method::Get],
            ..Config::default()
        };
        r.method = "HEAD".into();
        assert_eq!(
            request_policy(&get_only, &r),
            RequestPolicy::Bypass(BypassReason::Method)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("cache-control", "no-store")])),
            RequestPolicy::Bypass(BypassReason::NoStore)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("cache-control", "no-cache")])),
            RequestPolicy::Refresh(Method::Get)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("pragma", "no-cache")])),
            RequestPolicy::Refresh(Method::Get)
        );
        assert_eq!(
            request_policy(
                &cfg,
                &get(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])
            ),
            RequestPolicy::Lookup(Method::Get)
        );
        for h in [
            ("if-match", "\"a\""),
            ("if-unmodified-since", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ] {
            assert_eq!(
                request_policy(&cfg, &get(&[h])),
                RequestPolicy::Refresh(Method::Get),
                "{h:?}"
            );
        }
        assert_eq!(
            request_policy(&cfg, &get(&[("if-range", "\"a\""), ("range", "bytes=0-1")])),
            RequestPolicy::Refresh(Method::Get)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("if-range", "\"a\"")])),
            RequestPolicy::Lookup(Method::Get),
            "If-Range without Range means nothing"
        );
        let ignoring = Config {
            ignore_client_no_cache: true,
            ..Config::default()
        };
        assert_eq!(
            request_policy(&ignoring, &get(&[("cache-control", "no-cache")])),
            RequestPolicy::Lookup(Method::Get)
        );
        assert_eq!(
            request_policy(&ignoring, &get(&[("pragma", "no-cache")])),
            RequestPolicy::Lookup(Method::Get)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("upgrade", "websocket")])),
            RequestPolicy::Bypass(BypassReason::Upgrade)
        );
    }

    #[test]
    fn requests_outside_the_rules_are_bypassed_before_anything_else() {
        let cfg = Config::parse(
            br#"{"rules":{"include":[{"path_prefix":"/api/"}],"exclude":[{"path":"/api/me"}]}}"#,
        )
        .unwrap();
        let get = |path: &str| RequestHead::for_test("GET", path, &[]);
        assert_eq!(
            request_policy(&cfg, &get("/api/items")),
            RequestPolicy::Lookup(Method::Get)
        );
        for path in ["/static/a.css", "/api/me", "/api/me?x=1"] {
            assert_eq!(
                request_policy(&cfg, &get(path)),
                RequestPolicy::Bypass(BypassReason::Excluded),
                "{path}"
            );
        }
        // Other methods stay what they were (an unsafe request still invalidates).
        let post = RequestHead::for_test("POST", "/static/a.css", &[]);
        assert_eq!(
            request_policy(&cfg, &post),
            RequestPolicy::Bypass(BypassReason::Method)
        );
    }
}
