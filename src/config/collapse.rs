//! The `collapse` section: concurrent misses of one resource, through any worker of any proxy,
//! cause one origin fetch (the others wait for its entry).

use super::{ConfigError, err};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollapseConfig {
    /// How long a request waits for another's fetch of the same missing entry at most, from
    /// its arrival; also the lifetime of the fetch's lock (a leader that dies holds it no
    /// longer). 0 turns collapsing off.
    pub max_wait_ms: u64,
    /// How often the waiting requests of a worker look the entry up again (one lookup per key
    /// per interval, however many wait).
    pub poll_ms: u64,
    /// Media types (`type/subtype`, lower case) whose waiting requests are sent to the origin
    /// as soon as the leader's response shows them: a follower of a stream otherwise gets
    /// nothing until the whole recording is done.
    pub exempt_content_types: Vec<String>,
}

impl Default for CollapseConfig {
    fn default() -> Self {
        CollapseConfig {
            max_wait_ms: 10_000,
            poll_ms: 50,
            exempt_content_types: Vec::new(),
        }
    }
}

impl CollapseConfig {
    /// Checks the values, and lower-cases the media types.
    pub(super) fn validate(&mut self) -> Result<(), ConfigError> {
        for (i, t) in self.exempt_content_types.iter_mut().enumerate() {
            t.make_ascii_lowercase();
            if !is_media_type(t) {
                let path = format!("collapse.exempt_content_types[{i}]");
                return Err(err(&path, "must be a media type: type/subtype"));
            }
        }
        if self.max_wait_ms > 300_000 {
            return Err(err("collapse.max_wait_ms", "must be at most 300000"));
        }
        if !(10..=1_000).contains(&self.poll_ms) {
            return Err(err("collapse.poll_ms", "must be between 10 and 1000"));
        }
        Ok(())
    }

    /// Whether a response of this `Content-Type` sends its followers to the origin.
    pub fn exempts(&self, content_type: Option<&str>) -> bool {
        let Some(ct) = content_type else {
            return false;
        };
        let media = ct.split(';').next().unwrap_or("").trim();
        self.exempt_content_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(media))
    }
}

/// `type/subtype`, both tokens (RFC 9110 §8.3.1).
fn is_media_type(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    matches!(t.split_once('/'), Some((a, b)) if token(a) && token(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_types_match_without_parameters_in_any_case() {
        let c = CollapseConfig {
            exempt_content_types: vec!["text/event-stream".into()],
            ..CollapseConfig::default()
        };
        assert!(c.exempts(Some("text/event-stream")));
        assert!(c.exempts(Some("Text/Event-Stream; charset=utf-8")));
        assert!(!c.exempts(Some("application/json")));
        assert!(!c.exempts(None));
        assert!(is_media_type("application/vnd.api+json"));
        assert!(!is_media_type("text"));
        assert!(!is_media_type("text/ html"));
    }
}
