//! A small, bounded MessagePack reader: just what the engines' KV-event payloads use.
//!
//! It reads in place from one payload and never trusts a declared length: an array or map header
//! is checked against the bytes left (every element takes at least one byte) before anything is
//! sized from it, strings and binaries must be wholly present, and nesting is limited, so a
//! hostile payload costs at most its own length in work and a few times it in memory.
//! (A general crate such as `rmpv` builds a value tree first, whose size is the declared shape;
//! reading straight into the event types avoids that tree and keeps these bounds visible here.)

use std::fmt;

/// Deepest nesting [`Reader::skip`] follows (events are at most four levels deep).
pub const MAX_DEPTH: usize = 32;

/// What was wrong with a payload, and where (the byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {problem}")]
pub struct DecodeError {
    /// Offset into the payload where the problem starts.
    pub offset: usize,
    /// What is wrong.
    pub problem: String,
}

/// The kind of the next value, enough to choose how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `nil`.
    Nil,
    /// `true` or `false`.
    Bool,
    /// An integer, signed or not.
    Int,
    /// A float (32 or 64 bit).
    Float,
    /// A UTF-8 string.
    Str,
    /// A byte string.
    Bin,
    /// An array.
    Array,
    /// A map.
    Map,
    /// An extension value.
    Ext,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Nil => "nil",
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::Float => "a float",
            Kind::Str => "a string",
            Kind::Bin => "bytes",
            Kind::Array => "an array",
            Kind::Map => "a map",
            Kind::Ext => "an extension value",
        })
    }
}

/// An integer as MessagePack carries it: msgpack has unsigned 64-bit and signed 64-bit forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    /// Zero or more.
    U(u64),
    /// Below zero.
    I(i64),
}

/// Reads values one after the other from a payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The current offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// An error at the current offset.
    pub fn error(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.pos,
            problem: problem.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "needs {n} more bytes, the payload has {}",
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// The kind of the next value, without reading it.
    pub fn peek(&self) -> Result<Kind, DecodeError> {
        let Some(&b) = self.buf.get(self.pos) else {
            return Err(self.error("ends where a value should be"));
        };
        Ok(match b {
            0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => Kind::Int,
            0x80..=0x8f | 0xde | 0xdf => Kind::Map,
            0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
            0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
            0xc0 => Kind::Nil,
            0xc2 | 0xc3 => Kind::Bool,
            0xc4..=0xc6 => Kind::Bin,
            0xca | 0xcb => Kind::Float,
            0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
            0xc1 => return Err(self.error("byte 0xc1 is never used in MessagePack")),
        })
    }

    fn wrong(&self, wanted: &str) -> DecodeError {
        match self.peek() {
            Ok(kind) => self.error(format!("expected {wanted}, found {kind}")),
            Err(e) => e,
        }
    }

    /// Reads `nil` if it is next; `true` when it was.
    pub fn nil(&mut self) -> Result<bool, DecodeError> {
        if self.peek()? == Kind::Nil {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// An array header: its element count, checked against the bytes left.
    pub fn array(&mut self) -> Result<usize, DecodeError> {
        self.header(0x90, 0xdc, "an array", 1, "array")
    }

    /// A map header: its entry count, checked against the bytes left.
    pub fn map(&mut self) -> Result<usize, DecodeError> {
        self.header(0x80, 0xde, "a map", 2, "map")
    }

    /// A container header: `fix` is its fix-size marker (count in the low nibble), `wide` its
    /// 16-bit count marker (the 32-bit one follows it); `per` values make an element.
    fn header(
        &mut self,
        fix: u8,
        wide: u8,
        what: &str,
        per: usize,
        name: &str,
    ) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = match self.byte()? {
            b if b & 0xf0 == fix => usize::from(b & 0x0f),
            b if b == wide => self.be(2)? as usize,
            b if b == wide + 1 => self.be(4)? as usize,
            _ => {
                self.pos = start;
                return Err(self.wrong(what));
            }
        };
        self.check_count(start, n, per, name)
    }

    fn check_count(
        &mut self,
        start: usize,
        n: usize,
        min_bytes: usize,
        what: &str,
    ) -> Result<usize, DecodeError> {
        if n.saturating_mul(min_bytes) > self.remaining() {
            let left = self.remaining();
            self.pos = start;
            return Err(self.error(format!(
                "{what} declares {n} elements but only {left} bytes follow"
            )));
        }
        Ok(n)
    }

    /// An integer of any width.
    pub fn int(&mut self) -> Result<Int, DecodeError> {
        let start = self.pos;
        let v = match self.byte()? {
            b @ 0x00..=0x7f => Int::U(u64::from(b)),
            b @ 0xe0..=0xff => Int::I(i64::from(b as i8)),
            0xcc => Int::U(self.be(1)?),
            0xcd => Int::U(self.be(2)?),
            0xce => Int::U(self.be(4)?),
            0xcf => Int::U(self.be(8)?),
            0xd0 => signed(self.be(1)? as u8 as i8 as i64),
            0xd1 => signed(self.be(2)? as u16 as i16 as i64),
            0xd2 => signed(self.be(4)? as u32 as i32 as i64),
            0xd3 => signed(self.be(8)? as i64),
            _ => {
                self.pos = start;
                return Err(self.wrong("an integer"));
            }
        };
        Ok(v)
    }

    /// An integer that must fit `0..=max`; `what` names it in the error.
    pub fn uint(&mut self, what: &str, max: u64) -> Result<u64, DecodeError> {
        let start = self.pos;
        match self.int()? {
            Int::U(v) if v <= max => Ok(v),
            other => {
                self.pos = start;
                Err(self.error(format!("{what} is {other:?}, must be 0 to {max}")))
            }
        }
    }

    /// A float; integers are accepted too (a timestamp may be either).
    pub fn float(&mut self) -> Result<f64, DecodeError> {
        match self.peek()? {
            Kind::Int => Ok(match self.int()? {
                Int::U(v) => v as f64,
                Int::I(v) => v as f64,
            }),
            Kind::Float => {
                let b = self.byte()?;
                Ok(if b == 0xca {
                    f64::from(f32::from_bits(self.be(4)? as u32))
                } else {
                    f64::from_bits(self.be(8)?)
                })
            }
            _ => Err(self.wrong("a number")),
        }
    }

    /// A string, borrowed from the payload.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => {
                self.pos = start;
                return Err(self.wrong("a string"));
            }
        };
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map_err(|e| DecodeError {
            offset: start,
            problem: format!("string is not UTF-8: {e}"),
        })
    }

    /// A byte string, borrowed from the payload.
    pub fn bin(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let n = match self.byte()? {
            0xc4 => self.be(1)? as usize,
            0xc5 => self.be(2)? as usize,
            0xc6 => self.be(4)? as usize,
            _ => {
                self.pos = start;
                return Err(self.wrong("bytes"));
            }
        };
        self.take(n)
    }

    /// Steps over the next value whatever it is, following at most [`MAX_DEPTH`] levels.
    pub fn skip(&mut self) -> Result<(), DecodeError> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self.peek()? {
            Kind::Nil => {
                self.pos += 1;
            }
            Kind::Bool => {
                self.pos += 1;
            }
            Kind::Int => {
                self.int()?;
            }
            Kind::Float => {
                self.float()?;
            }
            Kind::Str => {
                self.str()?;
            }
            Kind::Bin => {
                self.bin()?;
            }
            Kind::Array => {
                for _ in 0..self.array()? {
                    self.skip_at(depth + 1)?;
                }
            }
            Kind::Map => {
                for _ in 0..self.map()? {
                    self.skip_at(depth + 1)?;
                    self.skip_at(depth + 1)?;
                }
            }
            Kind::Ext => {
                let n = match self.byte()? {
                    0xd4 => 1,
                    0xd5 => 2,
                    0xd6 => 4,
                    0xd7 => 8,
                    0xd8 => 16,
                    0xc7 => self.be(1)? as usize,
                    0xc8 => self.be(2)? as usize,
                    _ => self.be(4)? as usize,
                };
                self.take(n + 1)?;
            }
        }
        Ok(())
    }
}

/// Unsigned when it is not negative: msgpack encoders may pick a signed form for any value.
fn signed(v: i64) -> Int {
    if v >= 0 { Int::U(v as u64) } else { Int::I(v) }
}

/// Writes MessagePack, for tests and fixtures (the agent itself only reads it).
pub mod write {
    /// Appends an array header.
    pub fn array(out: &mut Vec<u8>, n: usize) {
        if n < 16 {
            out.push(0x90 | n as u8);
        } else if n <= 0xffff {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdd);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    /// Appends a map header.
    pub fn map(out: &mut Vec<u8>, n: usize) {
        if n < 16 {
            out.push(0x80 | n as u8);
        } else {
            out.push(0xde);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }

    /// Appends an unsigned integer in its shortest form.
    pub fn uint(out: &mut Vec<u8>, v: u64) {
        if v < 128 {
            out.push(v as u8);
        } else if v <= 0xff {
            out.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Appends a signed integer (int64 form when negative).
    pub fn int(out: &mut Vec<u8>, v: i64) {
        if v >= 0 {
            uint(out, v as u64);
        } else if v >= -32 {
            out.push(v as i8 as u8);
        } else {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Appends a float64.
    pub fn float(out: &mut Vec<u8>, v: f64) {
        out.push(0xcb);
        out.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    /// Appends a string.
    pub fn str(out: &mut Vec<u8>, s: &str) {
        if s.len() < 32 {
            out.push(0xa0 | s.len() as u8);
        } else {
            out.push(0xd9);
            out.push(s.len() as u8);
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// Appends a byte string.
    pub fn bin(out: &mut Vec<u8>, b: &[u8]) {
        out.push(0xc4);
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }

    /// Appends `nil`.
    pub fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_integer_width() {
        let mut b = Vec::new();
        for v in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ] {
            write::uint(&mut b, v);
        }
        write::int(&mut b, -1);
        write::int(&mut b, -33);
        b.extend_from_slice(&[0xd1, 0x00, 0x05]); // int16 holding 5
        let mut r = Reader::new(&b);
        for v in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ] {
            assert_eq!(r.int().unwrap(), Int::U(v));
        }
        assert_eq!(r.int().unwrap(), Int::I(-1));
        assert_eq!(r.int().unwrap(), Int::I(-33));
        assert_eq!(r.int().unwrap(), Int::U(5));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn a_declared_length_beyond_the_payload_is_refused_before_anything_is_sized() {
        // An array32 header declaring 100 million elements, in a 5-byte payload.
        let b = [0xdd, 0x05, 0xf5, 0xe1, 0x00];
        let err = Reader::new(&b).array().unwrap_err();
        assert!(err.problem.contains("declares 100000000 elements"), "{err}");
        let b = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(Reader::new(&b).str().unwrap_err().problem.contains("needs"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let b = vec![0x91; 10_000];
        let err = Reader::new(&b).skip().unwrap_err();
        assert!(err.problem.contains("nested deeper"), "{err}");
    }

    #[test]
    fn wrong_kinds_name_what_was_expected() {
        let b = [0xa1, b'x'];
        let err = Reader::new(&b).array().unwrap_err();
        assert_eq!(err.problem, "expected an array, found a string");
        assert!(Reader::new(&[0xc1]).skip().is_err());
        assert!(Reader::new(&[]).skip().is_err());
    }

    #[test]
    fn skips_every_kind() {
        let mut b = Vec::new();
        write::array(&mut b, 6);
        write::nil(&mut b);
        write::float(&mut b, 1.5);
        write::bin(&mut b, &[1, 2, 3]);
        write::map(&mut b, 1);
        write::str(&mut b, "k");
        b.extend_from_slice(&[0xd4, 0x01, 0x02]); // fixext1
        b.push(0xc3);
        b.extend_from_slice(&[0xca, 0x3f, 0x80, 0x00, 0x00]); // float32 1.0
        let mut r = Reader::new(&b);
        r.skip().unwrap();
        assert_eq!(r.remaining(), 0);
        let mut r = Reader::new(&b[b.len() - 5..]);
        assert_eq!(r.float().unwrap(), 1.0);
    }
}
