//! Key secrets: `sk-lumen-` and 192 bits from the operating system's RNG, stored only as a
//! SHA-256 digest plus a short display prefix.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "sk-lumen-";

/// Random bytes in a secret (192 bits; the issue asks for at least 128).
const SECRET_BYTES: usize = 24;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `n` random bytes from the OS RNG, as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    hex(&buf)
}

/// A fresh secret `sk-lumen-<48 hex digits>`.
pub fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", random_hex(SECRET_BYTES))
}

/// The hex SHA-256 of `secret`, the only form a secret is stored or looked up in.
pub fn digest_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// What lists show of a secret: `sk-lumen-` and its first four random digits.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX.len() + 4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_distinct() {
        let a = new_secret();
        let b = new_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 48);
        assert_ne!(a, b);
        assert_eq!(digest_hex(&a).len(), 64);
        assert_ne!(digest_hex(&a), digest_hex(&b));
        assert_eq!(display_prefix(&a), a[..13]);
    }
}
