//! Metadata values: the typed [`Value`] and how it is read from the file.

use crate::error::GgufError;
use crate::reader::Reader;

/// Deepest nesting of metadata arrays accepted (an array of arrays is depth 2).
pub const MAX_NESTING: usize = 8;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (any non-zero byte reads as `true`).
    Bool(bool),
    /// GGUF type 8.
    String(String),
    /// GGUF type 9; items all share one type and may themselves be arrays.
    Array(Vec<Value>),
}

impl Value {
    /// The value as a `u64` if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `i64` if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(i64::from(v)),
            Value::I16(v) => Some(i64::from(v)),
            Value::I32(v) => Some(i64::from(v)),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(i64::from(v)),
            Value::U16(v) => Some(i64::from(v)),
            Value::U32(v) => Some(i64::from(v)),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `f64` if it is a float or an integer (large integers round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string slice if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a `bool` if it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The items if the value is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Short lower-case name of the value's type, e.g. `"u32"` or `"array"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The GGUF type id this value is written with.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// Fewest bytes one value of GGUF type `ty` can occupy, or an error for an unknown type.
fn min_encoded_size(ty: u32) -> Result<u64, GgufError> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8, // a string is at least its u64 length
        9 => 12,          // u32 item type + u64 count
        _ => return Err(GgufError::UnknownValueType(ty)),
    })
}

/// Reads one value of GGUF type `ty`; `depth` is the number of arrays it sits inside.
pub(crate) fn read_value(r: &mut Reader<'_>, ty: u32, depth: usize) -> Result<Value, GgufError> {
    Ok(match ty {
        0 => Value::U8(r.u8("u8 value")?),
        1 => Value::I8(r.i8("i8 value")?),
        2 => Value::U16(r.u16("u16 value")?),
        3 => Value::I16(r.i16("i16 value")?),
        4 => Value::U32(r.u32("u32 value")?),
        5 => Value::I32(r.i32("i32 value")?),
        6 => Value::F32(r.f32("f32 value")?),
        7 => Value::Bool(r.u8("bool value")? != 0),
        8 => Value::String(r.string("string value")?),
        9 => read_array(r, depth)?,
        10 => Value::U64(r.u64("u64 value")?),
        11 => Value::I64(r.i64("i64 value")?),
        12 => Value::F64(r.f64("f64 value")?),
        _ => return Err(GgufError::UnknownValueType(ty)),
    })
}

/// Reads an array's item type, count and items. Recursion is bounded by
/// [`MAX_NESTING`], and the count by the bytes left, before the item vector is sized.
fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<Value, GgufError> {
    let depth = depth.saturating_add(1);
    if depth > MAX_NESTING {
        return Err(GgufError::NestingTooDeep);
    }
    let item_ty = r.u32("array item type")?;
    let min_size = min_encoded_size(item_ty)?;
    let count = r.u64("array length")?;
    let count = r.bounded_count(count, min_size, "array length")?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(read_value(r, item_ty, depth)?);
    }
    Ok(Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_views_respect_sign_and_range() {
        assert_eq!(Value::I8(-1).as_u64(), None);
        assert_eq!(Value::I32(7).as_u64(), Some(7));
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(Value::U16(3).as_f64(), Some(3.0));
        assert_eq!(Value::Bool(true).as_u64(), None);
        assert_eq!(Value::String("x".into()).as_f64(), None);
    }

    #[test]
    fn type_ids_agree_with_the_reader() {
        for ty in 0..=12u32 {
            if ty == 9 {
                continue;
            }
            let bytes = [0u8; 8];
            let v = read_value(&mut Reader::new(&bytes), ty, 0).unwrap();
            assert_eq!(v.type_id(), ty);
        }
        assert!(matches!(
            read_value(&mut Reader::new(&[0u8; 8]), 13, 0),
            Err(GgufError::UnknownValueType(13))
        ));
    }
}
