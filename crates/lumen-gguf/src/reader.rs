//! A bounds-checked little-endian cursor over the file's bytes.

use crate::error::GgufError;

/// Reads little-endian fields from a byte slice; every read is bounds-checked and
/// every length is checked against the bytes left before anything is allocated.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Current byte offset from the start of the file.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, advancing past them.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let Some(end) = self.pos.checked_add(n) else {
            return Err(self.truncated(what));
        };
        let Some(bytes) = self.buf.get(self.pos..end) else {
            return Err(self.truncated(what));
        };
        self.pos = end;
        Ok(bytes)
    }

    /// A `Truncated` error for a read of `what` starting at the cursor.
    fn truncated(&self, what: &'static str) -> GgufError {
        GgufError::Truncated {
            what,
            offset: self.pos as u64,
        }
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a `u8`.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    /// Reads an `i8`.
    pub(crate) fn i8(&mut self, what: &'static str) -> Result<i8, GgufError> {
        Ok(i8::from_le_bytes(self.array(what)?))
    }

    /// Reads a `u16`.
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// Reads an `i16`.
    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, GgufError> {
        Ok(i16::from_le_bytes(self.array(what)?))
    }

    /// Reads a `u32`.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Reads an `i32`.
    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, GgufError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    /// Reads a `u64`.
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads an `i64`.
    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, GgufError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// Reads an `f32`.
    pub(crate) fn f32(&mut self, what: &'static str) -> Result<f32, GgufError> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    /// Reads an `f64`.
    pub(crate) fn f64(&mut self, what: &'static str) -> Result<f64, GgufError> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the bytes
    /// left, and returns the count as a `usize` that is then safe to allocate for.
    pub(crate) fn bounded_count(
        &self,
        count: u64,
        min_size: u64,
        what: &'static str,
    ) -> Result<usize, GgufError> {
        let remaining = self.remaining() as u64;
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= remaining);
        if !fits {
            return Err(GgufError::CountTooLarge {
                what,
                count,
                remaining,
            });
        }
        // `count <= remaining <= usize::MAX` (min_size >= 1), so this cannot fail.
        usize::try_from(count).map_err(|_| GgufError::CountTooLarge {
            what,
            count,
            remaining,
        })
    }

    /// Reads a GGUF string (u64 byte length, then UTF-8 bytes).
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let len = self.bounded_count(len, 1, what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 { what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_the_end() {
        let bytes = [1, 0, 0, 0, 0xff];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32("a").unwrap(), 1);
        assert_eq!(r.remaining(), 1);
        assert!(matches!(
            r.u16("b"),
            Err(GgufError::Truncated {
                what: "b",
                offset: 4
            })
        ));
        assert_eq!(r.i8("c").unwrap(), -1);
        assert!(r.u8("d").is_err());
    }

    #[test]
    fn counts_are_bounded_by_remaining_bytes() {
        let bytes = [0u8; 16];
        let r = Reader::new(&bytes);
        assert_eq!(r.bounded_count(2, 8, "x").unwrap(), 2);
        assert!(r.bounded_count(3, 8, "x").is_err());
        assert!(r.bounded_count(u64::MAX, 2, "x").is_err());
        assert!(r.bounded_count(u64::MAX, 1, "x").is_err());
    }

    #[test]
    fn string_length_is_checked_before_allocation() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            r.string("s"),
            Err(GgufError::CountTooLarge {
                count: u64::MAX,
                remaining: 3,
                ..
            })
        ));
    }
}
