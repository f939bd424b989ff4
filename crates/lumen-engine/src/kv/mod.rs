//! KV block management: the block pool with its prefix cache, and the chain hashes that key it.
mod hash;
mod pool;

pub use hash::{block_hash, chain, root_hash, BlockHash};
pub use pool::{BlockPool, PoolStats};
