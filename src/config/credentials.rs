//! The store's credentials: HTTP Basic (RFC 7617) on every store callout, which Webdis checks
//! against its ACL (`http_basic_auth`).
//!
//! Given inline (`store.credentials`, for plain Envoy whose config is already private) or by
//! the name of an environment variable of the Wasm VM (`store.credentials_env`: Istio's
//! `WasmPlugin` `vmConfig.env` fills it from the sidecar's environment, and that from a
//! Secret). The value never appears in an error, a log line or a `Debug` print.

use super::{ConfigError, err};
use std::fmt;

/// The `authorization` header value of store callouts. Its `Debug` says only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization(String);

impl Authorization {
    pub fn header_value(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authorization(<redacted>)")
    }
}

/// The credentials `inline` or in the variable named `env` (at most one of them), as the
/// header value; `None` when neither is given. `lookup` reads the VM's environment.
pub(super) fn authorization(
    inline: &str,
    env: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Authorization>, ConfigError> {
    let (field, value) = match (inline.is_empty(), env.is_empty()) {
        (true, true) => return Ok(None),
        (false, false) => {
            return Err(err(
                "store.credentials_env",
                "give store.credentials or store.credentials_env, not both",
            ));
        }
        (false, true) => ("store.credentials", inline.to_string()),
        (true, false) => {
            if !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err(
                    "store.credentials_env",
                    "must be an environment variable name (A-Z a-z 0-9 _)",
                ));
            }
            match lookup(env) {
                Some(v) if !v.is_empty() => ("store.credentials_env", v),
                _ => {
                    return Err(err(
                        "store.credentials_env",
                        format!("{env} is unset or empty in the Wasm VM's environment"),
                    ));
                }
            }
        }
    };
    // RFC 7617 §2: a user-id can't contain a colon; neither part may hold control characters
    // (they would end up in a header). The reason never quotes the value.
    let Some((user, password)) = value.split_once(':') else {
        return Err(err(field, "must be user:password"));
    };
    if user.is_empty() || password.is_empty() {
        return Err(err(field, "must be user:password, both parts non-empty"));
    }
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(err(field, "must not contain control characters"));
    }
    let mut header = String::with_capacity(6 + value.len().div_ceil(3) * 4);
    header.push_str("Basic ");
    push_base64(&mut header, value.as_bytes());
    Ok(Some(Authorization(header)))
}

/// Standard base64 with padding (RFC 4648 §4), as Basic credentials are sent.
fn push_base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn rfc4648_10_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            push_base64(&mut out, plain.as_bytes());
            assert_eq!(out, encoded, "{plain:?}");
        }
        let mut out = String::new();
        push_base64(&mut out, &[0xfb, 0xff, 0xfe]);
        assert_eq!(out, "+//+");
    }

    #[test]
    fn rfc7617_2_example_inline_or_from_the_environment() {
        let want = "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==";
        let a = authorization("Aladdin:open sesame", "", &no_env).unwrap();
        assert_eq!(a.unwrap().header_value(), want);
        let env = |name: &str| (name == "STORE_AUTH").then(|| "Aladdin:open sesame".to_string());
        let a = authorization("", "STORE_AUTH", &env).unwrap();
        assert_eq!(a.unwrap().header_value(), want);
        assert_eq!(authorization("", "", &no_env).unwrap(), None);
    }

    #[test]
    fn bad_credentials_are_refused_without_quoting_them() {
        let secret = "s3cr3t-value";
        for (inline, env, field) in [
            (format!("user{secret}"), "", "store.credentials"),
            (format!(":{secret}"), "", "store.credentials"),
            ("user:".to_string(), "", "store.credentials"),
            (format!("u:{secret}\r\n"), "", "store.credentials"),
            (format!("u:{secret}"), "ENV", "store.credentials_env"),
            (String::new(), "MISSING", "store.credentials_env"),
            (String::new(), "BAD-NAME", "store.credentials_env"),
        ] {
            let e = authorization(&inline, env, &no_env).unwrap_err();
            assert_eq!(e.field, field, "{inline:?} {env:?}");
            assert!(!e.to_string().contains(secret), "{e}");
        }
        let env = |_: &str| Some(format!("nocolon{secret}"));
        let e = authorization("", "SET", &env).unwrap_err();
        assert_eq!(e.field, "store.credentials_env");
        assert!(!e.to_string().contains(secret), "{e}");
    }

    #[test]
    fn debug_never_prints_the_value() {
        let a = authorization("user:hunter2", "", &no_env).unwrap().unwrap();
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(&a.0[6..]),
            "{shown}"
        );
    }
}
