//! A reply served from the cache, built without copying what the entry already holds: the
//! body is a slice of the store's answer or of the in-proxy tier's value, and the header lines
//! are the stored ones (shared with the entry) by position, plus the few the cache adds.
//!
//! A hit is the hot path: copying a response's ten-odd header lines for every hit was most of
//! the flow's heap allocations (`cargo run --release --example hit_path`).

use crate::entry::ResponseMeta;
use std::rc::Rc;

/// A local reply built from an entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply<'b> {
    pub status: u16,
    pub headers: ReplyHeaders,
    pub body: Body<'b>,
}

/// A reply body without a copy: a slice of the store's answer, or of a value kept in the
/// in-proxy tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'b> {
    Borrowed(&'b [u8]),
    /// The bytes `start..end` of a shared value.
    Shared(Rc<[u8]>, usize, usize),
}

impl Body<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::Borrowed(b) => b,
            Body::Shared(v, start, end) => &v[*start..*end],
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `first..=last` of this body (positions already checked by the caller).
    pub fn range(self, first: usize, last: usize) -> Self {
        match self {
            Body::Borrowed(b) => Body::Borrowed(&b[first..=last]),
            Body::Shared(v, start, _) => Body::Shared(v, start + first, start + last + 1),
        }
    }

    /// No bytes (a 304, a 416, an error reply).
    pub fn nothing(self) -> Self {
        match self {
            Body::Borrowed(b) => Body::Borrowed(&b[..0]),
            Body::Shared(v, start, _) => Body::Shared(v, start, start),
        }
    }
}

/// A reply's header lines, in order: some of the stored response's (by position), and the
/// ones the cache adds (`cache-status`, `age`, `date`, `content-range`).
#[derive(Debug, Clone)]
pub struct ReplyHeaders {
    stored: Option<Rc<ResponseMeta>>,
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// The stored response's header line at this position.
    Stored(usize),
    Added(&'static str, String),
}

impl ReplyHeaders {
    /// Only lines the cache adds.
    pub fn added() -> ReplyHeaders {
        ReplyHeaders {
            stored: None,
            lines: Vec::new(),
        }
    }

    /// The stored lines `keep` accepts (by lower-case name), in their order; room for
    /// `extra` more.
    pub fn stored(
        meta: &Rc<ResponseMeta>,
        extra: usize,
        keep: impl Fn(&str) -> bool,
    ) -> ReplyHeaders {
        let mut lines = Vec::with_capacity(meta.headers.len() + extra);
        lines.extend(
            meta.headers
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| keep(n))
                .map(|(i, _)| Line::Stored(i)),
        );
        ReplyHeaders {
            stored: Some(Rc::clone(meta)),
            lines,
        }
    }

    pub fn push(&mut self, name: &'static str, value: String) {
        self.lines.push(Line::Added(name, value));
    }

    /// The lines as the host takes them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|line| match line {
            // Positions come from this same entry's list (see `stored`): always there.
            Line::Stored(i) => {
                let (n, v) = self.stored.as_ref()?.headers.get(*i)?;
                Some((n.as_str(), v.as_str()))
            }
            Line::Added(n, v) => Some((*n, v.as_str())),
        })
    }

    /// An owned copy (a reply kept past the entry it came from).
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }
}

/// Two header lists are equal when they list the same lines in the same order, wherever
/// the lines live.
impl PartialEq for ReplyHeaders {
    fn eq(&self, other: &ReplyHeaders) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for ReplyHeaders {}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(headers: &[(&str, &str)]) -> Rc<ResponseMeta> {
        Rc::new(ResponseMeta {
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            chunks: vec![],
            stored_at_ms: 0,
            freshness: crate::policy::Freshness {
                lifetime_s: 60,
                initial_age_s: 0,
                ..Default::default()
            },
            key_digest: [0; 32],
            body_len: 0,
            body_hash: 0,
            packed: false,
        })
    }

    #[test]
    fn stored_lines_are_kept_in_order_then_added_ones() {
        let m = meta(&[
            ("etag", "\"a\""),
            ("cache-status", "up; hit"),
            ("vary", "x"),
        ]);
        let mut h = ReplyHeaders::stored(&m, 1, |n| n != "cache-status");
        h.push("age", "3".into());
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("etag", "\"a\""), ("vary", "x"), ("age", "3")]
        );
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        assert_eq!(get("vary"), Some("x"));
        assert_eq!(get("cache-status"), None);
        assert_eq!(h.iter().count(), 3);
        assert_eq!(h.to_vec()[2], ("age".to_string(), "3".to_string()));
    }

    #[test]
    fn equality_is_by_lines_not_by_where_they_live() {
        let m = meta(&[("etag", "\"a\"")]);
        let stored = ReplyHeaders::stored(&m, 0, |_| true);
        let mut added = ReplyHeaders::added();
        added.push("etag", "\"a\"".into());
        assert_eq!(stored, added);
        added.push("age", "0".into());
        assert_ne!(stored, added);
    }

    #[test]
    fn body_slices_share_the_value() {
        let v: Rc<[u8]> = Rc::from(&b"hello"[..]);
        let b = Body::Shared(v.clone(), 1, 5).range(1, 2);
        assert_eq!(b.bytes(), b"ll");
        assert!(b.nothing().is_empty());
        assert_eq!(Rc::strong_count(&v), 1, "slices dropped with their bodies");
    }
}
