//! The `Cache-Status` response header (RFC 9211): how this cache handled the request.

/// Why the request went forward to the origin (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing stored for the URI.
    UriMiss,
    /// The URI is stored, but not the variant this request selects.
    VaryMiss,
    /// Stored, but stale.
    Stale,
    /// The request asked not to be served from cache (`no-cache`).
    Request,
    /// The method is not cached.
    Method,
    /// The cache chose not to handle the request (upgrade, `no-store`).
    Bypass,
    /// A lookup was not possible (store error): RFC 9211's plain "miss", with a `detail`.
    Miss,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Method => "method",
            Fwd::Bypass => "bypass",
            Fwd::Miss => "miss",
        }
    }
}

/// `<name>; hit; ttl=<remaining freshness>[; detail=<detail>]` (ttl negative when a client
/// accepted a stale one).
pub fn hit(name: &str, ttl_s: i64, detail: Option<&str>) -> String {
    use std::fmt::Write;
    // Sized once: built for every hit.
    let mut s = String::with_capacity(name.len() + 64);
    let _ = write!(s, "{name}; hit; ttl={ttl_s}");
    if let Some(d) = detail {
        s.push_str("; detail=");
        s.push_str(d);
    }
    s
}

/// `<name>; fwd=stale; fwd-status=<status>; ttl=<ttl>; detail=stale-if-error`: the request
/// went forward for a stale entry, the origin failed, and the stale entry answered (RFC 5861
/// §4). Not a `hit`: the request was forwarded (RFC 9211 §2.1).
pub fn stale_if_error(name: &str, fwd_status: u16, ttl_s: i64) -> String {
    format!("{name}; fwd=stale; fwd-status={fwd_status}; ttl={ttl_s}; detail=stale-if-error")
}

/// `<name>; detail=<why>`: answered by the cache without a stored response or a forward
/// (`only-if-cached` with nothing usable stored).
pub fn detail_only(name: &str, detail: &str) -> String {
    format!("{name}; detail={detail}")
}

/// `<name>; fwd=<why>[; fwd-status=<status>][; stored][; detail=<detail>]`.
pub fn forwarded(
    name: &str,
    fwd: Fwd,
    fwd_status: Option<u16>,
    stored: bool,
    detail: Option<&str>,
) -> String {
    let mut s = format!("{name}; fwd={}", fwd.as_str());
    if let Some(status) = fwd_status {
        s.push_str(&format!("; fwd-status={status}"));
    }
    if stored {
        s.push_str("; stored");
    }
    if let Some(d) = detail {
        s.push_str("; detail=");
        s.push_str(d);
    }
    s
}

/// Caches closer to the client add their member last (RFC 9211 §2): `ours` after the
/// response's own `Cache-Status` lines (one list); `ours` as it is when there are none.
pub fn append<'a>(existing: impl IntoIterator<Item = &'a str>, ours: String) -> String {
    let mut existing = existing
        .into_iter()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .peekable();
    if existing.peek().is_none() {
        return ours;
    }
    let mut s = String::with_capacity(64 + ours.len());
    for e in existing {
        s.push_str(e);
        s.push_str(", ");
    }
    s.push_str(&ours);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(hit("c", 30, None), "c; hit; ttl=30");
        assert_eq!(
            hit("c", -2, Some("memory")),
            "c; hit; ttl=-2; detail=memory"
        );
        assert_eq!(
            forwarded("c", Fwd::UriMiss, Some(200), true, None),
            "c; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            forwarded("c", Fwd::Miss, None, false, Some("store-timeout")),
            "c; fwd=miss; detail=store-timeout"
        );
        assert_eq!(
            append(Some("origin-cache; hit"), "c; hit".into()),
            "origin-cache; hit, c; hit"
        );
        assert_eq!(append(Some(" "), "c; hit".into()), "c; hit");
        assert_eq!(append(None, "c; hit".into()), "c; hit");
        assert_eq!(
            append(["a; hit", "", " b; fwd=miss "], "c; hit".into()),
            "a; hit, b; fwd=miss, c; hit",
            "several lines are one list"
        );
    }
}
