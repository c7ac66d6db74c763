//! Request and response heads: the parts of a message the cache decides on, copied once from
//! the host.

/// All values of a header in a header list, in order (several lines of one name are one
/// list, RFC 9110 §5.3); names compare case-insensitively.
pub fn header_values<'a, 'n>(
    headers: &'a [(String, String)],
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request's head: pseudo-headers split out, other headers with lower-cased names (as HTTP/2
/// and Envoy give them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHead {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    /// Path and query, as sent (`/a/b?x=1`).
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Builds a head from the host's header list, where pseudo-headers come first.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> RequestHead {
        let mut head = RequestHead::default();
        for (name, value) in pairs {
            match name.as_str() {
                ":method" => head.method = value,
                ":scheme" => head.scheme = value,
                ":authority" => head.authority = value,
                ":path" => head.path = value,
                n if n.starts_with(':') => {}
                _ => head.headers.push((name, value)),
            }
        }
        head
    }

    /// All values of a header, in order (several lines of one name are one list, RFC 9110 §5.3).
    pub fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        header_values(&self.headers, name)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[cfg(test)]
impl RequestHead {
    /// A request to `http://example.com<path>` for tests.
    pub fn for_test(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.into(),
            scheme: "http".into(),
            authority: "example.com".into(),
            path: path.into(),
            headers: pairs(headers),
        }
    }
}

#[cfg(test)]
impl ResponseHead {
    pub fn for_test(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            status,
            headers: pairs(headers),
        }
    }
}

#[cfg(test)]
fn pairs(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// A response's head as the origin sent it (or as stored), header names lower-cased.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Builds a head from the host's header list: `:status` (0 if unreadable), and the
    /// headers without the other pseudo-headers.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> ResponseHead {
        let mut resp = ResponseHead::default();
        for (name, value) in pairs {
            if name == ":status" {
                resp.status = value.parse().unwrap_or(0);
            } else if !name.starts_with(':') {
                resp.headers.push((name, value));
            }
        }
        resp
    }

    pub fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        header_values(&self.headers, name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn heads_from_the_hosts_pairs_keep_headers_and_drop_other_pseudo_headers() {
        let resp =
            ResponseHead::from_pairs(pairs(&[(":status", "304"), (":x", "y"), ("etag", "\"a\"")]));
        assert_eq!(resp.status, 304);
        assert_eq!(resp.headers, pairs(&[("etag", "\"a\"")]));
        assert_eq!(
            ResponseHead::from_pairs(pairs(&[(":status", "nope")])).status,
            0
        );
        let req = RequestHead::from_pairs(pairs(&[
            (":method", "GET"),
            (":path", "/a"),
            (":authority", "h"),
            (":scheme", "https"),
            ("accept", "*/*"),
        ]));
        assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/a"));
        assert_eq!(req.headers, pairs(&[("accept", "*/*")]));
    }
}
