//! Reading one JSON value of the plugin configuration into a raw field, with serde's wording.
//!
//! The configuration used to be read with `#[derive(Deserialize)]` and `serde_path_to_error`.
//! That pair instantiates serde's generic machinery per field type and per wrapper, about 70 KB
//! of the release .wasm (issue 5) for code that runs once per configuration. These few
//! non-generic functions do the same job: the messages are the ones serde gave
//! (`invalid type: string "fast", expected u64`, ``unknown field `x`, expected ...``), and
//! `config.rs` visits the fields in the object's order, so the first error reported is the
//! one serde reported.

// Each reader is `#[inline(never)]`: config code runs once per configuration, and inlined
// into every field's arm it cost ~1 KB of .wasm.

use super::ConfigError;
use super::json::{Number, Value};

#[inline(never)]
fn error(path: &str, reason: String) -> ConfigError {
    ConfigError {
        field: path.to_string(),
        reason,
    }
}

/// `parent.name`, or `name` at the top level.
#[inline(never)]
pub(super) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// What a value is, as serde's `Unexpected` (in serde_json's rendering) says it.
#[inline(never)]
fn unexpected(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n @ Number::F64(_)) => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".to_string(),
        Value::Object(_) => "map".to_string(),
    }
}

#[inline(never)]
fn invalid_type(v: &Value, path: &str, expected: &str) -> ConfigError {
    error(
        path,
        format!("invalid type: {}, expected {expected}", unexpected(v)),
    )
}

/// serde's list of what was expected: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
#[inline(never)]
fn one_of(names: &[&str]) -> String {
    match names {
        [] => "nothing".to_string(),
        [a] => format!("`{a}`"),
        [a, b] => format!("`{a}` or `{b}`"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

/// A key the object at `parent` does not have.
#[inline(never)]
pub(super) fn unknown_field(parent: &str, key: &str, fields: &[&str]) -> ConfigError {
    error(
        &join(parent, key),
        format!("unknown field `{key}`, expected {}", one_of(fields)),
    )
}

#[inline(never)]
pub(super) fn string(v: &Value, path: &str) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(invalid_type(v, path, "a string")),
    }
}

#[inline(never)]
pub(super) fn boolean(v: &Value, path: &str) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(invalid_type(v, path, "a boolean")),
    }
}

/// An unsigned integer of at most `max`, named `ty` (`u8`, `u16`, `u64`) in messages.
#[inline(never)]
fn unsigned(v: &Value, path: &str, max: u64, ty: &str) -> Result<u64, ConfigError> {
    match v {
        Value::Number(Number::U64(u)) if *u <= max => Ok(*u),
        Value::Number(n @ (Number::U64(_) | Number::I64(_))) => Err(error(
            path,
            format!("invalid value: integer `{n}`, expected {ty}"),
        )),
        _ => Err(invalid_type(v, path, ty)),
    }
}

#[inline(never)]
pub(super) fn u64(v: &Value, path: &str) -> Result<u64, ConfigError> {
    unsigned(v, path, u64::MAX, "u64")
}

#[inline(never)]
pub(super) fn u16(v: &Value, path: &str) -> Result<u16, ConfigError> {
    unsigned(v, path, u16::MAX.into(), "u16").map(|u| u as u16)
}

#[inline(never)]
pub(super) fn u8(v: &Value, path: &str) -> Result<u8, ConfigError> {
    unsigned(v, path, u8::MAX.into(), "u8").map(|u| u as u8)
}

#[inline(never)]
pub(super) fn array<'v>(v: &'v Value, path: &str) -> Result<&'v [Value], ConfigError> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(invalid_type(v, path, "a sequence")),
    }
}

/// The index in `names` of a unit enum variant, written as serde accepts one: `"name"`, or
/// `{"name": null}`.
#[inline(never)]
pub(super) fn variant(v: &Value, path: &str, names: &[&str]) -> Result<usize, ConfigError> {
    let (name, content) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) if o.len() == 1 => match o.iter().next() {
            Some((k, c)) => (k.as_str(), Some(c)),
            None => (path, None),
        },
        Value::Object(_) => {
            return Err(error(
                path,
                "invalid value: map, expected map with a single key".to_string(),
            ));
        }
        _ => return Err(invalid_type(v, path, "string or map")),
    };
    let Some(i) = names.iter().position(|n| *n == name) else {
        return Err(error(
            path,
            format!("unknown variant `{name}`, expected {}", one_of(names)),
        ));
    };
    match content {
        Some(c) if !matches!(c, Value::Null) => Err(invalid_type(c, &join(path, name), "unit")),
        _ => Ok(i),
    }
}
