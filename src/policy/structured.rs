//! A strict Structured Field parser (RFC 9651 §4.2): it says whether a field value parses,
//! and what type each member has. It keeps no values but integers, which is all a targeted
//! cache-control field needs (`targeted.rs`); the `sfv` crate cost 15 KB of .wasm, this 5.5 KB.
//! Checked against the public test vectors (`sf_vectors.rs`).

/// A value that is not a valid Structured Field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

type Parsed<T> = Result<T, Invalid>;

/// The type of a bare item (RFC 9651 §3.3); only integers keep their value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    Integer(i64),
    Decimal,
    String,
    Token,
    Bytes,
    Boolean(bool),
    Date,
    DisplayString,
}

/// A member of a Dictionary or List: an Item, or an Inner List (RFC 9651 §3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Item(Bare),
    InnerList,
}

/// Parses a Dictionary (RFC 9651 §4.2.2), calling `each` with every member in order; a later
/// member with the same key replaces an earlier one, which is the caller's to apply. On
/// `Err`, whatever `each` saw must be discarded.
pub fn dictionary<'a>(input: &'a str, mut each: impl FnMut(&'a str, Member)) -> Parsed<()> {
    let mut p = Parser::new(input)?;
    p.skip_sp();
    while !p.at_end() {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            p.member()?
        } else {
            p.parameters()?;
            Member::Item(Bare::Boolean(true))
        };
        each(key, member);
        if p.list_separator()? {
            break;
        }
    }
    Ok(())
}

/// Parses a List (RFC 9651 §4.2.1): for the test vectors, a dictionary without keys.
#[cfg(test)]
pub fn list(input: &str) -> Parsed<()> {
    let mut p = Parser::new(input)?;
    p.skip_sp();
    while !p.at_end() {
        p.member()?;
        if p.list_separator()? {
            break;
        }
    }
    Ok(())
}

/// Parses a top-level Item (RFC 9651 §4.2.3), for the test vectors.
#[cfg(test)]
pub fn item(input: &str) -> Parsed<Bare> {
    let mut p = Parser::new(input)?;
    p.skip_sp();
    let bare = p.item()?;
    p.skip_sp();
    if p.at_end() { Ok(bare) } else { Err(Invalid) }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    /// RFC 9651 §4.2: a field value that is not ASCII fails.
    fn new(input: &'a str) -> Parsed<Self> {
        if !input.is_ascii() {
            return Err(Invalid);
        }
        Ok(Parser {
            s: input.as_bytes(),
            i: 0,
        })
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Parsed<u8> {
        let c = self.peek().ok_or(Invalid)?;
        self.i += 1;
        Ok(c)
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    fn skip_ows(&mut self) {
        while self.eat(b' ') || self.eat(b'\t') {}
    }

    /// After a List or Dictionary member: `Ok(true)` at the end of the field, `Ok(false)` after
    /// a comma with another member to come. A trailing comma fails.
    fn list_separator(&mut self) -> Parsed<bool> {
        self.skip_ows();
        if self.at_end() {
            return Ok(true);
        }
        if !self.eat(b',') {
            return Err(Invalid);
        }
        self.skip_ows();
        if self.at_end() {
            return Err(Invalid);
        }
        Ok(false)
    }

    /// An Item or an Inner List (RFC 9651 §4.2.1.1).
    fn member(&mut self) -> Parsed<Member> {
        if self.peek() == Some(b'(') {
            self.inner_list()?;
            Ok(Member::InnerList)
        } else {
            self.item().map(Member::Item)
        }
    }

    /// RFC 9651 §4.2.1.2.
    fn inner_list(&mut self) -> Parsed<()> {
        self.i += 1;
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return self.parameters();
            }
            self.item()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(Invalid);
            }
        }
    }

    /// A bare item and its parameters (RFC 9651 §4.2.3).
    fn item(&mut self) -> Parsed<Bare> {
        let bare = self.bare_item()?;
        self.parameters()?;
        Ok(bare)
    }

    /// RFC 9651 §4.2.3.2; parameters are checked and dropped.
    fn parameters(&mut self) -> Parsed<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    /// RFC 9651 §4.2.3.3: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
    fn key(&mut self) -> Parsed<&'a str> {
        let start = self.i;
        if !matches!(self.peek(), Some(b'a'..=b'z' | b'*')) {
            return Err(Invalid);
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.i += 1;
        }
        // ASCII was checked in `new`, so any slice is UTF-8.
        std::str::from_utf8(&self.s[start..self.i]).map_err(|_| Invalid)
    }

    /// RFC 9651 §4.2.3.1.
    fn bare_item(&mut self) -> Parsed<Bare> {
        match self.peek().ok_or(Invalid)? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => self.token(),
            b':' => self.byte_sequence(),
            b'?' => self.boolean(),
            b'@' => self.date(),
            b'%' => self.display_string(),
            _ => Err(Invalid),
        }
    }

    /// RFC 9651 §4.2.4: at most 15 integer digits; a decimal has at most 12 before the point
    /// and 1 to 3 after it.
    fn number(&mut self) -> Parsed<Bare> {
        let negative = self.eat(b'-');
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(Invalid);
        }
        let mut value: i64 = 0;
        let mut digits = 0;
        let mut point: Option<usize> = None;
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' => {
                    value = value * 10 + i64::from(c - b'0');
                    digits += 1;
                }
                b'.' if point.is_none() => {
                    if digits > 12 {
                        return Err(Invalid);
                    }
                    point = Some(digits);
                }
                _ => break,
            }
            self.i += 1;
            // An integer has at most 15 characters, a decimal 16 with its point.
            if digits > 15 {
                return Err(Invalid);
            }
        }
        match point {
            None => Ok(Bare::Integer(if negative { -value } else { value })),
            Some(at) if (1..=3).contains(&(digits - at)) => Ok(Bare::Decimal),
            Some(_) => Err(Invalid),
        }
    }

    /// RFC 9651 §4.2.5: printable ASCII, with only `\"` and `\\` escaped.
    fn string(&mut self) -> Parsed<Bare> {
        self.i += 1;
        loop {
            match self.next()? {
                b'\\' => {
                    if !matches!(self.next()?, b'"' | b'\\') {
                        return Err(Invalid);
                    }
                }
                b'"' => return Ok(Bare::String),
                0x20..=0x7e => {}
                _ => return Err(Invalid),
            }
        }
    }

    /// RFC 9651 §4.2.6: `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
    fn token(&mut self) -> Parsed<Bare> {
        self.i += 1;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        Ok(Bare::Token)
    }

    /// RFC 9651 §4.2.7: base64 between colons. Missing padding and non-zero pad bits are
    /// accepted, as the RFC advises; what base64 can't decode fails.
    fn byte_sequence(&mut self) -> Parsed<Bare> {
        self.i += 1;
        let start = self.i;
        loop {
            match self.next()? {
                b':' => break,
                c if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') => {}
                _ => return Err(Invalid),
            }
        }
        let content = &self.s[start..self.i - 1];
        let data = content.iter().take_while(|&&c| c != b'=').count();
        let padding = content.len() - data;
        let only_padding_after = content[data..].iter().all(|&c| c == b'=');
        // Padding, whole or partial, only where a last group of 2 or 3 characters needs it.
        let room = (4 - data % 4) % 4;
        if !only_padding_after || data % 4 == 1 || padding > room {
            return Err(Invalid);
        }
        Ok(Bare::Bytes)
    }

    /// RFC 9651 §4.2.8.
    fn boolean(&mut self) -> Parsed<Bare> {
        self.i += 1;
        match self.next()? {
            b'1' => Ok(Bare::Boolean(true)),
            b'0' => Ok(Bare::Boolean(false)),
            _ => Err(Invalid),
        }
    }

    /// RFC 9651 §4.2.9: `@` and an Integer.
    fn date(&mut self) -> Parsed<Bare> {
        self.i += 1;
        match self.number()? {
            Bare::Integer(_) => Ok(Bare::Date),
            _ => Err(Invalid),
        }
    }

    /// RFC 9651 §4.2.10: `%"`, printable ASCII but `%` and `"`, `%` with two lower-case hex
    /// digits for other bytes, and the bytes must be UTF-8.
    fn display_string(&mut self) -> Parsed<Bare> {
        self.i += 1;
        if !self.eat(b'"') {
            return Err(Invalid);
        }
        let mut bytes = Vec::new();
        loop {
            match self.next()? {
                b'%' => {
                    let hi = lower_hex(self.next()?)?;
                    let lo = lower_hex(self.next()?)?;
                    bytes.push(hi << 4 | lo);
                }
                b'"' => {
                    return match std::str::from_utf8(&bytes) {
                        Ok(_) => Ok(Bare::DisplayString),
                        Err(_) => Err(Invalid),
                    };
                }
                c @ 0x20..=0x7e => bytes.push(c),
                _ => return Err(Invalid),
            }
        }
    }
}

fn lower_hex(c: u8) -> Parsed<u8> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfv::visitor::{DictionaryVisitor, EntryVisitor, Ignored, InnerListVisitor, ItemVisitor};
    use sfv::{BareItemFromInput, KeyRef, visitor::ParameterVisitor};
    use std::convert::Infallible;

    fn ours(input: &str) -> Option<Vec<(String, Member)>> {
        let mut out = Vec::new();
        dictionary(input, |k, m| out.push((k.to_string(), m))).ok()?;
        Some(out)
    }

    /// The `sfv` crate's reading of the same input: the second opinion.
    fn theirs(input: &str) -> Option<Vec<(String, Member)>> {
        let mut out = Vec::new();
        sfv::Parser::new(input)
            .parse_dictionary_with_visitor(Record(&mut out))
            .ok()?;
        Some(out)
    }

    struct Record<'r>(&'r mut Vec<(String, Member)>);

    struct Entry<'r> {
        out: &'r mut Vec<(String, Member)>,
        key: String,
    }

    impl<'de> DictionaryVisitor<'de> for Record<'_> {
        type Out = ();
        type Error = Infallible;
        fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Infallible> {
            Ok(Entry {
                out: self.0,
                key: key.as_str().to_string(),
            })
        }
        fn finish(self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    impl<'de> EntryVisitor<'de> for Entry<'_> {
        type Error = Infallible;
        fn item(self) -> Result<impl ItemVisitor<'de>, Infallible> {
            Ok(self)
        }
        fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Infallible> {
            self.out.push((self.key, Member::InnerList));
            Ok(Ignored)
        }
    }

    impl<'de> ItemVisitor<'de> for Entry<'_> {
        type Out = ();
        type Error = Infallible;
        fn bare_item(
            self,
            v: BareItemFromInput<'de>,
        ) -> Result<impl ParameterVisitor<'de, Out = ()>, Infallible> {
            let bare = match v {
                BareItemFromInput::Integer(i) => Bare::Integer(i64::from(i)),
                BareItemFromInput::Decimal(_) => Bare::Decimal,
                BareItemFromInput::String(_) => Bare::String,
                BareItemFromInput::ByteSequence(_) => Bare::Bytes,
                BareItemFromInput::Boolean(b) => Bare::Boolean(b),
                BareItemFromInput::Token(_) => Bare::Token,
                BareItemFromInput::Date(_) => Bare::Date,
                BareItemFromInput::DisplayString(_) => Bare::DisplayString,
            };
            self.out.push((self.key, Member::Item(bare)));
            Ok(Ignored)
        }
    }

    #[test]
    fn rfc9651_public_test_vectors() {
        use crate::policy::sf_vectors::{Kind, Outcome, VECTORS};
        let mut checked = 0;
        for (name, kind, lines, outcome) in VECTORS {
            let input = lines.join(", ");
            let parses = match kind {
                Kind::Dictionary => dictionary(&input, |_, _| {}).is_ok(),
                Kind::List => list(&input).is_ok(),
                Kind::Item => item(&input).is_ok(),
            };
            match outcome {
                Outcome::Parses => assert!(parses, "{name}: {input:?} must parse"),
                Outcome::MustFail => assert!(!parses, "{name}: {input:?} must fail"),
                Outcome::MayFail => continue,
            }
            checked += 1;
        }
        assert!(checked > 800, "{checked}");
    }

    /// Pieces of valid and invalid syntax, glued at random below.
    const PIECES: &[&str] = &[
        "a",
        "max-age",
        "*k",
        "k_1.-*",
        "A",
        "1a",
        "=",
        "=",
        "=",
        ",",
        ", ",
        " ,",
        "\t",
        " ",
        ";",
        ";p",
        ";p=1",
        "; q=?0",
        "(",
        ")",
        "( ",
        " )",
        "1",
        "-1",
        "0",
        "-",
        "1.5",
        "1.",
        ".5",
        "123456789012345",
        "1234567890123456",
        "123456789012.123",
        "1234567890123.1",
        "1.1234",
        "\"s\"",
        "\"",
        "\"a\\\"b\"",
        "\"a\\x\"",
        "\"\\\\\"",
        "\u{7f}",
        "tok",
        "t:/x",
        "*",
        "?1",
        "?0",
        "?2",
        "?",
        ":aGk=:",
        ":aGk:",
        ":a=b:",
        ":a:",
        ":ab==:",
        ":abc=:",
        ":!:",
        "::",
        ":",
        "@1",
        "@-1",
        "@1.5",
        "@",
        "%\"a\"",
        "%\"%c3%a9\"",
        "%\"%C3%A9\"",
        "%\"%ff\"",
        "%\"%c3\"",
        "%a",
        "%\"",
        "é",
        "x=y",
        "no-cache=\"a, b\"",
    ];

    /// What may follow a key: `=` and an item or inner list, or nothing (boolean true).
    const VALUES: &[&str] = &[
        "",
        "=1",
        "=-0",
        "=999999999999999",
        "=1.25",
        "=1.2345",
        "=\"x y\"",
        "=tok/en:1",
        "=?1",
        "=?0",
        "=:cGxlYXN1cmUu:",
        "=:cGxlYXN1cmU=:",
        "=@1659578233",
        "=%\"caf%c3%a9\"",
        "=(1 2)",
        "=( a \"b\" )",
        "=()",
        "=(1;p 2)",
        "=(1,2)",
        "=(1  2);q",
        "=",
        "= 1",
        "=\"",
    ];

    #[test]
    fn rfc9651_dictionaries_parse_as_the_sfv_crate_parses_them() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure reproduces.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut valid = 0;
        let pick = |from: &[&'static str], next: &mut dyn FnMut() -> u64| {
            from[(next() % from.len() as u64) as usize]
        };
        for round in 0..200_000 {
            let n = 1 + next() % 7;
            let input: String = if round % 2 == 0 {
                (0..n).map(|_| pick(PIECES, &mut next)).collect()
            } else {
                // Members shaped like a dictionary's, so that most of them parse.
                (0..n.min(4))
                    .map(|i| {
                        let sep = if i == 0 {
                            ""
                        } else {
                            pick(&[", ", ",", " , ", ",\t"], &mut next)
                        };
                        let key = pick(&["a", "max-age", "no-store", "*x", "b.c"], &mut next);
                        let value = pick(VALUES, &mut next);
                        let param = pick(&["", ";p", ";p=1.5", "; q=\"s\"", ";P"], &mut next);
                        format!("{sep}{key}{value}{param}")
                    })
                    .collect()
            };
            let (a, b) = (ours(&input), theirs(&input));
            assert_eq!(a, b, "{input:?}");
            valid += usize::from(a.is_some());
        }
        assert!(
            valid > 25_000,
            "the generator makes enough valid fields: {valid}"
        );
    }
}
