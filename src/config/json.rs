//! The plugin configuration's JSON text, read into a small tree that `config.rs` then reads
//! field by field.
//!
//! json-event-parser checks the syntax and says where it is broken; the tree is built here
//! with what serde_json's `Value` had and `fields.rs` relies on: objects sorted by key (the
//! first error reported is serde's), the last of duplicate keys winning, and numbers told
//! apart as u64, i64 or f64 the way serde_json's parser did.

use json_event_parser::{JsonEvent, LowLevelJsonParser};

pub(super) enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

pub(super) enum Number {
    /// A non-negative integer.
    U64(u64),
    /// A negative integer.
    I64(i64),
    /// A number with a fraction or an exponent, an integer too long for 64 bits, or `-0`, as
    /// written.
    F64(String),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::U64(n) => write!(f, "{n}"),
            Number::I64(n) => write!(f, "{n}"),
            Number::F64(text) => f.write_str(text),
        }
    }
}

/// An object's members sorted by key, each key once: the last of duplicates wins, as in
/// serde_json's `Map`.
#[derive(Default)]
pub(super) struct Object(Vec<(String, Value)>);

impl Object {
    fn insert(&mut self, key: String, value: Value) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, (String, Value)> {
        self.0.iter()
    }
}

impl<'o> IntoIterator for &'o Object {
    type Item = &'o (String, Value);
    type IntoIter = std::slice::Iter<'o, (String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// serde_json's nesting limit. Also keeps the recursive drop of the tree shallow.
const MAX_DEPTH: usize = 128;

/// Parses one JSON document; the error says what is wrong and where (`... at line 3 column 5`).
pub(super) fn parse(json: &[u8]) -> Result<Value, String> {
    let mut parser = LowLevelJsonParser::new().with_max_stack_size(MAX_DEPTH);
    let mut input = json;
    let mut next = move || loop {
        let step = parser.parse_next(input, true);
        input = &input[step.consumed_bytes..];
        if let Some(event) = step.event {
            return event.map_err(|e| {
                let at = e.location().start;
                // At the end of a truncated text the parser names the token it wanted
                // ("Object keys must be strings" for `{"a":1,`): say what happened instead.
                let what = if at.offset >= json.len() as u64 {
                    "Unexpected end of file"
                } else {
                    e.message()
                };
                format!("{what} at line {} column {}", at.line + 1, at.column + 1)
            });
        }
    };
    // The arrays and objects being filled, innermost last, each with the key it goes under in
    // its parent.
    let mut open: Vec<(Value, Option<String>)> = Vec::new();
    let mut key = None;
    loop {
        let value = match next()? {
            JsonEvent::StartObject => {
                open.push((Value::Object(Object::default()), key.take()));
                continue;
            }
            JsonEvent::StartArray => {
                open.push((Value::Array(Vec::new()), key.take()));
                continue;
            }
            JsonEvent::ObjectKey(k) => {
                key = Some(k.into_owned());
                continue;
            }
            JsonEvent::EndObject | JsonEvent::EndArray => match open.pop() {
                Some((v, k)) => {
                    key = k;
                    v
                }
                None => Value::Null,
            },
            JsonEvent::String(s) => Value::String(s.into_owned()),
            JsonEvent::Number(n) => Value::Number(number(&n)),
            JsonEvent::Boolean(b) => Value::Bool(b),
            JsonEvent::Null => Value::Null,
            // Not before the root is complete: the parser reports an error first.
            JsonEvent::Eof => return Err("Unexpected end of file".to_string()),
        };
        match open.last_mut() {
            Some((Value::Array(a), _)) => a.push(value),
            Some((Value::Object(o), _)) => o.insert(key.take().unwrap_or_default(), value),
            // The root: only whitespace may follow it.
            _ => return next().map(|_| value),
        }
    }
}

/// A number as serde_json's `Value` told them apart: an integer that fits a u64, a negative
/// one that fits an i64, anything else a float. No configuration field takes a float, so a
/// float is only ever named in an error: it keeps its text as written.
fn number(text: &str) -> Number {
    if let Ok(n) = text.parse::<u64>() {
        return Number::U64(n);
    }
    match text.parse::<i64>() {
        // `-0` is a float to serde_json.
        Ok(n) if n < 0 => Number::I64(n),
        _ => Number::F64(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kind serde_json's `Value` made of the same text.
    fn serde_json_kind(text: &str) -> &'static str {
        let n: serde_json::Number = serde_json::from_str(text).unwrap();
        if n.is_u64() {
            "u64"
        } else if n.is_i64() {
            "i64"
        } else {
            "f64"
        }
    }

    fn ours(text: &str) -> (&'static str, String) {
        let n = number(text);
        let kind = match n {
            Number::U64(_) => "u64",
            Number::I64(_) => "i64",
            Number::F64(_) => "f64",
        };
        (kind, n.to_string())
    }

    #[test]
    fn numbers_are_told_apart_as_serde_json_told_them_apart() {
        for text in [
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "-1.5",
            "1e3",
            "1E3",
            "0e0",
            "-0.0",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999999",
            "1e-400",
        ] {
            let (kind, shown) = ours(text);
            assert_eq!(kind, serde_json_kind(text), "{text}");
            assert_eq!(shown, text, "named as written");
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        match v {
            Value::Object(o) => o.iter().map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn objects_are_sorted_and_the_last_duplicate_wins() {
        let v = parse(br#"{"b":1,"a":{"y":[1,{"z":null}],"x":"s"},"b":2}"#).unwrap();
        assert_eq!(keys(&v), ["a", "b"]);
        let Value::Object(o) = &v else { unreachable!() };
        assert!(matches!(o.get("b"), Some(Value::Number(Number::U64(2)))));
        let a = o.get("a").unwrap();
        assert_eq!(keys(a), ["x", "y"]);
        let Value::Object(a) = a else { unreachable!() };
        let Some(Value::Array(y)) = a.get("y") else {
            panic!("y")
        };
        assert_eq!(y.len(), 2);
        assert_eq!(keys(&y[1]), ["z"]);
    }

    #[test]
    fn strings_are_unescaped() {
        let v = parse(br#"{"k\u00e9":"a\"\\\/\b\f\n\r\t\ud83d\ude00"}"#).unwrap();
        let Value::Object(o) = &v else { unreachable!() };
        let Some(Value::String(s)) = o.get("k\u{e9}") else {
            panic!("key")
        };
        assert_eq!(s, "a\"\\/\u{8}\u{c}\n\r\t\u{1f600}");
    }

    #[test]
    fn syntax_errors_say_where() {
        for (text, at) in [
            ("{\"a\":1,\n  \"b\":2\n  \"c\":3}", " at line 3 column 3"),
            ("{\"a\":}", " at line 1 column 6"),
            ("{\"a\":1,}", " at line 1 column 8"),
            ("{\"a\":1} x", " at line 1 column 9"),
            ("{\"a\":[1,2", " at line 1 column 10"),
            ("{\"a\":tru}", " at line 1 column 6"),
            ("{\"a\":\"\u{1}\"}", " at line 1 column 7"),
            ("{\"a\":\"\\ud800\"}", " at line 1 column "),
            ("{\"a\":01}", " at line 1 column 7"),
            ("{\"a\":1.}", " at line 1 column "),
            ("{a:1}", " at line 1 column 2"),
            ("{\"a\":1,\n", "Unexpected end of file at line 2 column 1"),
            ("{", "Unexpected end of file at line 1 column 2"),
        ] {
            let e = parse(text.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{text}"));
            assert!(e.contains(at), "{text}: {e}");
        }
        assert!(parse(b"{\"a\":\xff}").is_err());
        assert!(parse(b"{\"a\":\"\xff\"}").is_err());
        // A float too large for f64 is still a float, named as written.
        assert!(parse(br#"{"a":-1e400}"#).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(100).as_bytes()).is_ok());
        let e = parse(deep(100_000).as_bytes()).err().unwrap();
        assert!(e.contains(" at line 1 column "), "{e}");
    }
}
