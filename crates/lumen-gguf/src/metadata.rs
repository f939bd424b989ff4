//! The metadata table: file order, an index by key, and typed getters.

use std::collections::HashMap;

use crate::error::GgufError;
use crate::value::Value;

/// The key-value metadata of a GGUF file, in file order with an index by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty table with room for `n` entries (`n` must already be bounded).
    pub(crate) fn with_capacity(n: usize) -> Self {
        Metadata {
            entries: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
        }
    }

    /// Appends an entry, rejecting a key that is already present.
    pub(crate) fn insert(&mut self, key: String, value: Value) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.index.get(key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    /// All entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value under `key`, or `MissingKey`.
    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    /// The string under `key`.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong_type(key, "string", v))
    }

    /// The integer under `key` as a `u32`; any integer type whose value fits is accepted.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.get_u64(key)?;
        u32::try_from(v).map_err(|_| out_of_range(key, "u32"))
    }

    /// The integer under `key` as a `u64`; any non-negative integer is accepted.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        if v.as_i64().is_some_and(|i| i < 0) {
            return Err(out_of_range(key, "u64"));
        }
        v.as_u64()
            .ok_or_else(|| wrong_type(key, "unsigned integer", v))
    }

    /// The number under `key` as an `f32`; floats of either width and integers are accepted.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| wrong_type(key, "number", v))
    }

    /// The bool under `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| wrong_type(key, "bool", v))
    }

    /// The array under `key`.
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong_type(key, "array", v))
    }

    /// The array of strings under `key`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.map_items(key, "string", |v| v.as_str().ok_or(ItemError::Type))
    }

    /// The array of integers under `key`, each converted to `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.map_items(key, "i32", |v| {
            let i = v.as_i64().ok_or(ItemError::Type)?;
            i32::try_from(i).map_err(|_| ItemError::Range)
        })
    }

    /// The array of numbers under `key`, each converted to `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.map_items(key, "f32", |v| {
            v.as_f64().map(|f| f as f32).ok_or(ItemError::Type)
        })
    }

    /// Converts every item of the array under `key`, naming the first bad item as
    /// `key[i]` in the error.
    fn map_items<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl Fn(&'a Value) -> Result<T, ItemError>,
    ) -> Result<Vec<T>, GgufError> {
        let items = self.get_array(key)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match f(item) {
                Ok(x) => out.push(x),
                Err(ItemError::Type) => {
                    return Err(wrong_type(&format!("{key}[{i}]"), expected, item))
                }
                Err(ItemError::Range) => {
                    return Err(out_of_range(&format!("{key}[{i}]"), expected))
                }
            }
        }
        Ok(out)
    }
}

/// Why one array item could not be converted.
enum ItemError {
    /// The item's type is unusable.
    Type,
    /// The item's value does not fit.
    Range,
}

/// A `WrongType` error for `key`.
fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.type_name(),
    }
}

/// An `OutOfRange` error for `key`.
fn out_of_range(key: &str, expected: &'static str) -> GgufError {
    GgufError::OutOfRange {
        key: key.to_owned(),
        expected,
    }
}
