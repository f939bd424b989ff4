//! Byte sizes as people write them in flags and environment variables (`512MiB`, `20GB`).
//! It lives here, the lowest crate that reads such settings (`LUMEN_PACKED_CACHE_MAX`), so the
//! command line (`--max-memory`) parses sizes the same way.

/// A byte size: a plain count or a number with a unit (`kB`, `MB`, `GB`, `KiB`, `MiB`,
/// `GiB`, `TB`, `TiB`), at least one byte.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a size: '{s}'"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    let v = n * scale;
    if !v.is_finite() || !(1.0..=1e18).contains(&v) {
        return Err(format!("size out of range: '{s}'"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse_byte_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_byte_size(" 1.5 GiB "), Ok(3 << 29));
        assert_eq!(parse_byte_size("1000"), Ok(1000));
        for bad in ["", "x", "5 parsecs", "0", "-1GiB", "1e30"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }
}
