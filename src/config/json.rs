//! The plugin configuration's JSON text (RFC 8259), read into a small tree that `config.rs`
//! then reads field by field.
//!
//! Our own recursive-descent reader, about 3 KB of .wasm: json-event-parser did the same job
//! for ~14 KB, and serde_json for 9 KB more (the .wasm must stay within 400 KB). It is checked
//! against serde_json (a dev-dependency) on generated documents and their mutations. The tree
//! keeps what serde_json's `Value` had and `fields.rs` relies on: objects sorted by key (the
//! first error reported is serde's), the last of duplicate keys winning, and numbers told
//! apart as u64, i64 or f64 the way serde_json's parser did. Errors say what and where
//! (`Expected ',' or '}' at line 3 column 5`).

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

/// serde_json's nesting limit. Also bounds the reader's recursion and the tree's drop.
const MAX_DEPTH: usize = 128;

/// Parses one JSON document; the error says what is wrong and where (`... at line 3 column 5`).
pub(super) fn parse(json: &[u8]) -> Result<Value, String> {
    let mut r = Reader {
        text: json,
        at: 0,
        depth: 0,
    };
    r.skip_space();
    let root = r.value()?;
    r.skip_space();
    if r.at < json.len() {
        return Err(r.error("Unexpected characters after the document"));
    }
    Ok(root)
}

struct Reader<'t> {
    text: &'t [u8],
    at: usize,
    depth: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// `what` at the current position (the end of the text: "Unexpected end of file").
    #[inline(never)]
    fn error(&self, what: &str) -> String {
        self.error_at(self.at, what)
    }

    #[inline(never)]
    fn error_at(&self, at: usize, what: &str) -> String {
        let what = if at >= self.text.len() {
            "Unexpected end of file"
        } else {
            what
        };
        let before = &self.text[..at.min(self.text.len())];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        // Columns count characters: continuation bytes of UTF-8 are not ones.
        let column = 1 + before[line_start..]
            .iter()
            .filter(|&&b| b & 0xc0 != 0x80)
            .count();
        format!("{what} at line {line} column {column}")
    }

    /// Consumes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += found as usize;
        found
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            _ => Err(self.error("Expected a value")),
        }
    }

    fn nested(&mut self, read: fn(&mut Self) -> Result<Value, String>) -> Result<Value, String> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error("Nested too deep"));
        }
        self.depth += 1;
        self.at += 1;
        self.skip_space();
        let v = read(self);
        self.depth -= 1;
        v
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, String> {
        if !self.text[self.at..].starts_with(word.as_bytes()) {
            return Err(self.error("Expected a value"));
        }
        self.at += word.len();
        Ok(v)
    }

    /// After `{` and spaces.
    fn object(&mut self) -> Result<Value, String> {
        let mut o = Object::default();
        if self.eat(b'}') {
            return Ok(Value::Object(o));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("Expected a string key"));
            }
            let key = self.string()?;
            self.skip_space();
            if !self.eat(b':') {
                return Err(self.error("Expected ':'"));
            }
            self.skip_space();
            let v = self.value()?;
            o.insert(key, v);
            self.skip_space();
            if self.eat(b'}') {
                return Ok(Value::Object(o));
            }
            if !self.eat(b',') {
                return Err(self.error("Expected ',' or '}'"));
            }
            self.skip_space();
        }
    }

    /// After `[` and spaces.
    fn array(&mut self) -> Result<Value, String> {
        let mut a = Vec::new();
        if self.eat(b']') {
            return Ok(Value::Array(a));
        }
        loop {
            a.push(self.value()?);
            self.skip_space();
            if self.eat(b']') {
                return Ok(Value::Array(a));
            }
            if !self.eat(b',') {
                return Err(self.error("Expected ',' or ']'"));
            }
            self.skip_space();
        }
    }

    /// At `"`: the string, unescaped; it must be UTF-8 without raw control characters.
    fn string(&mut self) -> Result<String, String> {
        let start = self.at;
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("")),
                Some(b'"') => break,
                Some(b'\\') => {
                    self.at += 1;
                    let c = match self.peek() {
                        Some(b'u') => self.unicode_escape()?,
                        Some(e) => {
                            let c = match e {
                                b'"' => '"',
                                b'\\' => '\\',
                                b'/' => '/',
                                b'b' => '\u{8}',
                                b'f' => '\u{c}',
                                b'n' => '\n',
                                b'r' => '\r',
                                b't' => '\t',
                                _ => return Err(self.error("Invalid escape")),
                            };
                            self.at += 1;
                            c
                        }
                        None => return Err(self.error("")),
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                Some(b) if b < 0x20 => {
                    return Err(self.error("Control characters must be escaped in strings"));
                }
                Some(b) => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
        self.at += 1;
        String::from_utf8(out).map_err(|_| self.error_at(start, "Invalid UTF-8 in a string"))
    }

    /// At the `u` of `\uXXXX` (and a low surrogate's `\uXXXX` after a high one).
    fn unicode_escape(&mut self) -> Result<char, String> {
        let start = self.at;
        let high = self.hex4()?;
        let code = match high {
            0xd800..=0xdbff => {
                if !self.text[self.at..].starts_with(b"\\u") {
                    return Err(self.error_at(start, "Lone surrogate in a \\u escape"));
                }
                self.at += 1;
                match self.hex4()? {
                    low @ 0xdc00..=0xdfff => 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00),
                    _ => return Err(self.error_at(start, "Lone surrogate in a \\u escape")),
                }
            }
            0xdc00..=0xdfff => return Err(self.error_at(start, "Lone surrogate in a \\u escape")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.error_at(start, "Invalid \\u escape"))
    }

    /// At a `u`: the four hex digits after it.
    fn hex4(&mut self) -> Result<u32, String> {
        self.at += 1;
        let digits = self.text.get(self.at..self.at + 4);
        let code = digits
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("Invalid \\u escape"))?;
        self.at += 4;
        Ok(code)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Number, String> {
        let start = self.at;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.error("Leading zeros are not allowed"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("Invalid number")),
        }
        if self.eat(b'.') {
            self.required_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.required_digits()?;
        }
        // All ASCII: the slice is text.
        let text = std::str::from_utf8(&self.text[start..self.at]).unwrap_or_default();
        Ok(number(text))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), String> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error("Invalid number"));
        }
        self.digits();
        Ok(())
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

    /// A small deterministic generator (xorshift), so the cases are the same on every run.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }

        fn string(&mut self) -> String {
            let parts = [
                "a",
                "key",
                "é",
                "\\n",
                "\\\"",
                "\\\\",
                "\\/",
                "\\u00e9",
                "\\ud83d\\ude00",
                " ",
                "\\t",
                "日本",
                "\\u0000",
                "x-y_z",
            ];
            let n = self.below(4);
            let body: String = (0..n).map(|_| self.pick(&parts)).collect();
            format!("\"{body}\"")
        }

        fn value(&mut self, depth: u32) -> String {
            let space = |g: &mut Gen| g.pick(&["", " ", "\n", "\t", "\r\n "]).to_string();
            match self.below(if depth > 4 { 6 } else { 8 }) {
                0 => self.pick(&["true", "false", "null"]).to_string(),
                1 | 2 => self
                    .pick(&[
                        "0",
                        "-0",
                        "7",
                        "-12",
                        "3.25",
                        "-0.5",
                        "1e3",
                        "2E-2",
                        "1.5e+7",
                        "18446744073709551615",
                        "18446744073709551616",
                        "-9223372036854775808",
                        "-9223372036854775809",
                        "123456789012",
                    ])
                    .to_string(),
                3..=5 => self.string(),
                6 => {
                    let n = self.below(4);
                    let items: Vec<String> = (0..n)
                        .map(|_| format!("{}{}{}", space(self), self.value(depth + 1), space(self)))
                        .collect();
                    format!("[{}]", items.join(","))
                }
                _ => {
                    let n = self.below(4);
                    let items: Vec<String> = (0..n)
                        .map(|_| {
                            let k = self.string();
                            let v = self.value(depth + 1);
                            format!("{}{k}{}:{}{v}", space(self), space(self), space(self))
                        })
                        .collect();
                    format!("{{{}}}", items.join(","))
                }
            }
        }
    }

    /// Our tree as serde_json's `Value`, to compare.
    fn to_serde(v: &Value) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(Number::U64(n)) => serde_json::Value::from(*n),
            Value::Number(Number::I64(n)) => serde_json::Value::from(*n),
            Value::Number(Number::F64(t)) => serde_json::from_str(t).unwrap(),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(to_serde).collect()),
            Value::Object(o) => {
                serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_serde(v))).collect())
            }
        }
    }

    /// The same verdict as serde_json on `text`, and the same tree when both accept it.
    fn agrees(text: &[u8]) {
        let ours = parse(text);
        let theirs = serde_json::from_slice::<serde_json::Value>(text);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(&to_serde(a), b, "{:?}", String::from_utf8_lossy(text)),
            (Err(_), Err(_)) => {}
            // serde_json refuses floats beyond f64; we keep them as text, and no field takes one.
            (Ok(_), Err(e)) if e.to_string().contains("out of range") => {}
            _ => panic!(
                "{:?}: ours {:?}, serde_json {:?}",
                String::from_utf8_lossy(text),
                ours.as_ref().err(),
                theirs.as_ref().err()
            ),
        }
    }

    #[test]
    fn reads_what_serde_json_reads_and_refuses_what_it_refuses() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let noise = [
            b'{', b'}', b'[', b']', b',', b':', b'"', b'\\', b'0', b'-', b'.', b'e', b' ', b'\n',
            b'u', b't', 0x01, 0xc3, 0xff,
        ];
        for _ in 0..20_000 {
            let doc = g.value(0).into_bytes();
            agrees(&doc);
            // A mutation: a byte removed, replaced or added.
            let mut m = doc.clone();
            let at = g.below(m.len() as u64 + 1) as usize;
            let byte = noise[g.below(noise.len() as u64) as usize];
            match g.below(3) {
                0 if at < m.len() => {
                    m.remove(at);
                }
                1 if at < m.len() => m[at] = byte,
                _ => m.insert(at, byte),
            }
            agrees(&m);
        }
    }
}
