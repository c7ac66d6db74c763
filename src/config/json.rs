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
    /// A number with a fraction or an exponent, an integer too long for 64 bits, or `-0`.
    F64(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::U64(n) => write!(f, "{n}"),
            Number::I64(n) => write!(f, "{n}"),
            // serde_json's rendering (`1000.0`, `1e300`); `number` returns only finite floats.
            Number::F64(n) => f.write_str(zmij::Buffer::new().format_finite(*n)),
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
            JsonEvent::Number(n) => Value::Number(number(&n)?),
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

/// A number as serde_json's parser (without `float_roundtrip`) reads it, from the text the
/// JSON grammar allows: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number(text: &str) -> Result<Number, String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut bytes = digits.bytes().peekable();
    let mut significand: u64 = 0;
    let mut exponent: i32 = 0;
    // Digits past what a u64 holds make an integer a float; serde_json drops them.
    let mut dropped = false;
    while let Some(d @ b'0'..=b'9') = bytes.peek().copied() {
        bytes.next();
        match significand
            .checked_mul(10)
            .and_then(|s| s.checked_add(u64::from(d - b'0')))
        {
            Some(s) if !dropped => significand = s,
            _ => {
                dropped = true;
                exponent += 1;
            }
        }
    }
    let mut float = dropped;
    if bytes.peek() == Some(&b'.') {
        bytes.next();
        float = true;
        let mut full = false;
        while let Some(d @ b'0'..=b'9') = bytes.peek().copied() {
            bytes.next();
            if full {
                continue;
            }
            match significand
                .checked_mul(10)
                .and_then(|s| s.checked_add(u64::from(d - b'0')))
            {
                Some(s) => {
                    significand = s;
                    exponent -= 1;
                }
                None => full = true,
            }
        }
    }
    if let Some(b'e' | b'E') = bytes.next() {
        float = true;
        let positive = match bytes.peek() {
            Some(b'-') => {
                bytes.next();
                false
            }
            Some(b'+') => {
                bytes.next();
                true
            }
            _ => true,
        };
        let mut exp: i32 = 0;
        for d in bytes {
            match exp
                .checked_mul(10)
                .and_then(|e| e.checked_add(i32::from(d - b'0')))
            {
                Some(e) => exp = e,
                None if significand != 0 && positive => return Err(out_of_range(text)),
                None => return Ok(Number::F64(if negative { -0.0 } else { 0.0 })),
            }
        }
        exponent = if positive {
            exponent.saturating_add(exp)
        } else {
            exponent.saturating_sub(exp)
        };
    }
    if !float {
        return Ok(if !negative {
            Number::U64(significand)
        } else {
            match (significand as i64).wrapping_neg() {
                // `-0`, or below i64::MIN.
                n if n >= 0 => Number::F64(-(significand as f64)),
                n => Number::I64(n),
            }
        });
    }
    // serde_json's `f64_from_parts`.
    let mut f = significand as f64;
    loop {
        let n = exponent.unsigned_abs();
        if n <= 308 {
            if exponent >= 0 {
                f *= pow10(n);
                if f.is_infinite() {
                    return Err(out_of_range(text));
                }
            } else {
                f /= pow10(n);
            }
            break;
        }
        if f == 0.0 {
            break;
        }
        if exponent >= 0 {
            return Err(out_of_range(text));
        }
        f /= 1e308;
        exponent += 308;
    }
    Ok(Number::F64(if negative { -f } else { f }))
}

/// 10^n (n <= 308) rounded to the nearest f64: serde_json's table entry, worked out instead of
/// stored (the table is 2.4 KB of .wasm; a float in the configuration is an error anyway).
fn pow10(n: u32) -> f64 {
    // 10^n exactly, in little-endian 32-bit limbs (10^308 < 2^1024).
    let mut limbs = [0u32; 32];
    limbs[0] = 1;
    let mut len = 1;
    for _ in 0..n {
        let mut carry = 0;
        for limb in &mut limbs[..len] {
            let v = u64::from(*limb) * 10 + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            limbs[len] = carry as u32;
            len += 1;
        }
    }
    // Its top 64 bits, the lowest of them set if any bit below is: rounding those to 53 bits
    // rounds the whole number.
    let bits = 32 * len as u32 - limbs[len - 1].leading_zeros();
    let shift = bits.saturating_sub(64);
    let mut top = 0u64;
    for p in 0..bits {
        if limbs[(p / 32) as usize] >> (p % 32) & 1 == 1 {
            if p >= shift {
                top |= 1 << (p - shift);
            } else {
                top |= 1;
            }
        }
    }
    top as f64 * f64::from_bits(u64::from(1023 + shift) << 52)
}

fn out_of_range(number: &str) -> String {
    format!("number out of range: `{number}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json made of the same text: its kind and rendering, or that it refused it.
    fn serde_json_number(text: &str) -> Option<(&'static str, String)> {
        let n: serde_json::Number = serde_json::from_str(text).ok()?;
        let kind = if n.is_u64() {
            "u64"
        } else if n.is_i64() {
            "i64"
        } else {
            "f64"
        };
        Some((kind, n.to_string()))
    }

    fn ours(text: &str) -> Option<(&'static str, String)> {
        let n = number(text).ok()?;
        let kind = match n {
            Number::U64(_) => "u64",
            Number::I64(_) => "i64",
            Number::F64(_) => "f64",
        };
        Some((kind, n.to_string()))
    }

    #[test]
    fn numbers_read_as_serde_json_read_them() {
        for text in [
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "-1.5",
            "1e3",
            "1E3",
            "1e+3",
            "1e-3",
            "0.1",
            "123.456e-7",
            "0e0",
            "-0.0",
            "18446744073709551615",
            "18446744073709551616",
            "184467440737095516161",
            "18446744073709551616.0",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999999",
            "0.12345678901234567890123456789",
            "1e22",
            "1e23",
            "1e30",
            "1.7976931348623157e308",
            "1e308",
            "1e309",
            "-1e309",
            "1e400",
            "0e400",
            "1e-300",
            "1e-320",
            "1e-400",
            "1e2147483648",
            "1e-2147483648",
            "-1e-99999999999",
        ] {
            assert_eq!(ours(text), serde_json_number(text), "{text}");
        }
    }

    #[test]
    fn pow10_is_serde_json_table() {
        // Correctly rounded, as the table's literals are: f64's own parser agrees.
        for n in 0..=308 {
            let expected: f64 = format!("1e{n}").parse().unwrap();
            assert_eq!(pow10(n).to_bits(), expected.to_bits(), "10^{n}");
        }
    }

    #[test]
    fn many_numbers_read_as_serde_json_read_them() {
        // A fixed pseudo-random sweep over digit counts, fractions and exponents.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _ in 0..20_000 {
            let mut text = String::new();
            if next(2) == 0 {
                text.push('-');
            }
            let digits = 1 + next(25);
            text.push(char::from(b'1' + next(9) as u8));
            for _ in 1..digits {
                text.push(char::from(b'0' + next(10) as u8));
            }
            if next(2) == 0 {
                text.push('.');
                for _ in 0..1 + next(25) {
                    text.push(char::from(b'0' + next(10) as u8));
                }
            }
            if next(2) == 0 {
                text.push_str(["e", "E", "e-", "e+"][next(4) as usize]);
                text.push_str(&next(350).to_string());
            }
            assert_eq!(ours(&text), serde_json_number(&text), "{text}");
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
        assert_eq!(
            parse(br#"{"a":-1e400}"#).err().unwrap(),
            "number out of range: `-1e400`"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(100).as_bytes()).is_ok());
        let e = parse(deep(100_000).as_bytes()).err().unwrap();
        assert!(e.contains(" at line 1 column "), "{e}");
    }
}
