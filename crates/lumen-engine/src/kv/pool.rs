//! The KV block pool: reference counts, the free list and the prefix cache.
//!
//! A block is in exactly one of three states: in use (ref count > 0), free and cached (ref
//! count 0 but still registered under its chain hash, so a later request can revive it), or
//! free and blank. Allocation takes blank blocks first and then evicts the least recently
//! released cached block, so popular prefixes survive as long as memory allows.

use std::collections::{BTreeSet, HashMap};

use super::hash::BlockHash;

#[derive(Clone, Debug, Default)]
struct BlockMeta {
    refs: u32,
    hash: Option<BlockHash>,
    /// When the block last became free (for LRU eviction).
    released_at: u64,
}

/// Counters for the prefix cache and pool, read by metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Prompt tokens looked up in the prefix cache.
    pub query_tokens: u64,
    /// Prompt tokens found in the prefix cache.
    pub hit_tokens: u64,
    /// Blocks currently referenced by a sequence.
    pub blocks_in_use: usize,
    /// Blocks in the pool.
    pub total_blocks: usize,
}

/// Owns the bookkeeping of every KV block of one model.
pub struct BlockPool {
    block_size: usize,
    meta: Vec<BlockMeta>,
    blank: Vec<u32>,
    evictable: BTreeSet<(u64, u32)>,
    cached: HashMap<BlockHash, u32>,
    clock: u64,
    in_use: usize,
    query_tokens: u64,
    hit_tokens: u64,
}

impl BlockPool {
    /// A pool of `n_blocks` blocks of `block_size` tokens, all blank.
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        BlockPool {
            block_size,
            meta: vec![BlockMeta::default(); n_blocks],
            // Reversed so blocks are handed out from 0 upwards (easier to read in logs).
            blank: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeSet::new(),
            cached: HashMap::new(),
            clock: 0,
            in_use: 0,
            query_tokens: 0,
            hit_tokens: 0,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks that can be allocated now (blank or evictable).
    pub fn available(&self) -> usize {
        self.blank.len() + self.evictable.len()
    }

    /// Counters for metrics and tests.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            query_tokens: self.query_tokens,
            hit_tokens: self.hit_tokens,
            blocks_in_use: self.in_use,
            total_blocks: self.meta.len(),
        }
    }

    /// Takes a block for writing, evicting the least recently used cached block if needed.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = match self.blank.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                if let Some(h) = self.meta[id as usize].hash.take() {
                    self.cached.remove(&h);
                }
                id
            }
        };
        self.acquire(id);
        Some(id)
    }

    fn acquire(&mut self, id: u32) {
        let m = &mut self.meta[id as usize];
        if m.refs == 0 {
            self.in_use += 1;
        }
        m.refs += 1;
    }

    /// Adds a reference to a block that is already in use (sharing between sequences).
    pub fn share(&mut self, id: u32) {
        debug_assert!(self.meta[id as usize].refs > 0, "share of a free block");
        self.acquire(id);
    }

    /// Drops one reference; a block with no references becomes free (cached if it has a hash).
    pub fn release(&mut self, id: u32) {
        let m = &mut self.meta[id as usize];
        debug_assert!(m.refs > 0, "double release of block {id}");
        m.refs = m.refs.saturating_sub(1);
        if m.refs > 0 {
            return;
        }
        self.in_use -= 1;
        self.clock += 1;
        m.released_at = self.clock;
        if m.hash.is_some() {
            self.evictable.insert((m.released_at, id));
        } else {
            self.blank.push(id);
        }
    }

    /// Drops one reference to each block of a table.
    pub fn release_all(&mut self, table: &[u32]) {
        for &id in table {
            self.release(id);
        }
    }

    /// Publishes a full, computed block under its chain hash so later requests can reuse it.
    /// If another block already holds that hash the cache keeps the existing one.
    pub fn register(&mut self, id: u32, hash: BlockHash) {
        if self.meta[id as usize].hash.is_some() || self.cached.contains_key(&hash) {
            return;
        }
        self.meta[id as usize].hash = Some(hash);
        self.cached.insert(hash, id);
    }

    /// Finds the longest run of cached blocks matching `hashes` and takes a reference to each.
    /// `tokens_queried` is what this lookup counts towards the hit-rate denominator.
    pub fn lookup(&mut self, hashes: &[BlockHash], tokens_queried: usize) -> Vec<u32> {
        let mut found = Vec::new();
        for h in hashes {
            let Some(&id) = self.cached.get(h) else { break };
            let m = &self.meta[id as usize];
            if m.refs == 0 {
                self.evictable.remove(&(m.released_at, id));
            }
            self.acquire(id);
            found.push(id);
        }
        self.query_tokens += tokens_queried as u64;
        self.hit_tokens += (found.len() * self.block_size) as u64;
        found
    }

    /// Whether a block is shared by more than one sequence (copy before writing into it).
    pub fn is_shared(&self, id: u32) -> bool {
        self.meta[id as usize].refs > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::hash::{chain, root_hash};

    #[test]
    fn allocate_release_and_reuse_by_hash() {
        let mut pool = BlockPool::new(3, 4);
        let hashes = chain(&root_hash("m", None), &[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, hashes[0]);
        pool.register(b, hashes[1]);
        pool.release_all(&[a, b]);
        assert_eq!(pool.stats().blocks_in_use, 0);
        assert_eq!(pool.available(), 3);
        let hit = pool.lookup(&hashes, 8);
        assert_eq!(hit, vec![a, b]);
        assert_eq!(pool.stats().hit_tokens, 8);
        pool.release_all(&hit);
    }

    #[test]
    fn evicts_least_recently_released_first() {
        let mut pool = BlockPool::new(2, 4);
        let h = chain(&root_hash("m", None), &[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, h[0]);
        pool.register(b, h[1]);
        pool.release(b);
        pool.release(a);
        // b was released first, so it is evicted first; a stays findable.
        let c = pool.allocate().unwrap();
        assert_eq!(c, b);
        assert_eq!(pool.lookup(&h[..1], 4), vec![a]);
        assert!(pool.allocate().is_none());
    }

    #[test]
    fn shared_blocks_need_every_release() {
        let mut pool = BlockPool::new(1, 4);
        let a = pool.allocate().unwrap();
        pool.share(a);
        assert!(pool.is_shared(a));
        pool.release(a);
        assert_eq!(pool.available(), 0);
        pool.release(a);
        assert_eq!(pool.available(), 1);
    }
}
