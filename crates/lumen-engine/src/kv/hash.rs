//! Chain hashes that name full KV blocks for prefix reuse.
//!
//! A block's key is SHA-256 over (parent key, token ids), and the chain's root is SHA-256 over
//! (model key, optional tenant salt). A cryptographic hash matters here: with a predictable
//! hash (Rust's `DefaultHasher`, FNV…) one tenant could craft prompts that collide with
//! another's blocks and read their cached state, or probe which prompts others sent.

use sha2::{Digest, Sha256};

/// The key of one full block (or of a chain's root).
pub type BlockHash = [u8; 32];

/// The root of every chain for one model and tenant salt.
pub fn root_hash(model_key: &str, salt: Option<&[u8]>) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"lumen-kv-root\0");
    h.update((model_key.len() as u64).to_le_bytes());
    h.update(model_key.as_bytes());
    match salt {
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_le_bytes());
            h.update(s);
        }
        None => h.update([0u8]),
    }
    h.finalize().into()
}

/// The key of a block holding `tokens`, following the block keyed `parent`.
pub fn block_hash(parent: &BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(parent);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// Keys of every full block of `tokens` (`block_size` each), chained from `root`.
pub fn chain(root: &BlockHash, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut out = Vec::with_capacity(tokens.len() / block_size);
    let mut parent = *root;
    for block in tokens.chunks_exact(block_size) {
        parent = block_hash(&parent, block);
        out.push(parent);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_prefix_model_and_salt() {
        let r = root_hash("m", None);
        let a = chain(&r, &[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let b = chain(&r, &[9, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], b[0]);
        assert_ne!(
            a[1], b[1],
            "same block after a different prefix must differ"
        );
        assert_ne!(
            chain(&root_hash("m", Some(b"t1")), &[1, 2, 3, 4], 4)[0],
            a[0]
        );
        assert_ne!(chain(&root_hash("other", None), &[1, 2, 3, 4], 4)[0], a[0]);
        assert_eq!(chain(&r, &[1, 2, 3, 4, 5], 4), a[..1].to_vec());
    }
}
