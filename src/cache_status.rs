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

/// `<name>; hit; ttl=<remaining freshness>` (negative when a client accepted a stale one).
/// Appended to `out`: a hit builds its header in one string, after any upstream cache's.
pub fn push_hit(out: &mut String, name: &str, ttl_s: i64) {
    use std::fmt::Write;
    let _ = write!(out, "{name}; hit; ttl={ttl_s}");
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

/// Caches closer to the client add their member last (RFC 9211 §2).
pub fn append(existing: Option<&str>, ours: &str) -> String {
    match existing.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => format!("{e}, {ours}"),
        None => ours.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let mut hit = String::from("up; hit, ");
        push_hit(&mut hit, "c", 30);
        assert_eq!(hit, "up; hit, c; hit; ttl=30");
        assert_eq!(
            forwarded("c", Fwd::UriMiss, Some(200), true, None),
            "c; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            forwarded("c", Fwd::Miss, None, false, Some("store-timeout")),
            "c; fwd=miss; detail=store-timeout"
        );
        assert_eq!(
            append(Some("origin-cache; hit"), "c; hit"),
            "origin-cache; hit, c; hit"
        );
        assert_eq!(append(Some(" "), "c; hit"), "c; hit");
        assert_eq!(append(None, "c; hit"), "c; hit");
    }
}
