//! Storage for the paged KV cache: the memory only. Which block belongs to which sequence is
//! the engine's business (its block manager hands the forward pass a block table per sequence).

use half::f16;
use lumen_kernels::attention::KvGeometry;

/// Keys and values for every layer, `n_blocks` blocks each.
#[derive(Clone)]
pub struct KvStorage {
    geo: KvGeometry,
    n_blocks: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvStorage {
    /// Allocates `n_blocks` blocks per layer for `n_layers` layers.
    pub fn new(geo: KvGeometry, n_layers: usize, n_blocks: usize) -> Self {
        let per_layer = n_blocks * geo.block_elems();
        KvStorage {
            geo,
            n_blocks,
            k: vec![vec![f16::ZERO; per_layer]; n_layers],
            v: vec![vec![f16::ZERO; per_layer]; n_layers],
        }
    }

    /// Bytes one block takes across all layers (keys and values).
    pub fn bytes_per_block(geo: KvGeometry, n_layers: usize) -> usize {
        2 * n_layers * geo.block_elems() * std::mem::size_of::<f16>()
    }

    /// The cache geometry.
    pub fn geometry(&self) -> KvGeometry {
        self.geo
    }

    /// Blocks per layer.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// One layer's keys and values, for reading.
    pub fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        (&self.k[layer], &self.v[layer])
    }

    /// One layer's keys and values, for writing (see `lumen_kernels::attention::store_step`).
    pub fn layer_mut(&mut self, layer: usize) -> (&mut [f16], &mut [f16]) {
        (&mut self.k[layer], &mut self.v[layer])
    }

    /// Copies one block's contents (all layers) to another: copy-on-write for shared blocks.
    pub fn copy_block(&mut self, from: u32, to: u32) {
        let n = self.geo.block_elems();
        let (f, t) = (from as usize * n, to as usize * n);
        for layer in 0..self.k.len() {
            self.k[layer].copy_within(f..f + n, t);
            self.v[layer].copy_within(f..f + n, t);
        }
    }

    /// Copies the first `n` blocks (all layers) of `other`, a cache of the same geometry and
    /// depth: a later pass starting from an earlier one's rows.
    pub fn copy_blocks_from(&mut self, other: &KvStorage, n: usize) {
        let len = n * self.geo.block_elems();
        for (dst, src) in self.k.iter_mut().zip(&other.k) {
            dst[..len].copy_from_slice(&src[..len]);
        }
        for (dst, src) in self.v.iter_mut().zip(&other.v) {
            dst[..len].copy_from_slice(&src[..len]);
        }
    }
}
