//! Storage for the paged KV cache: the memory only. Which block belongs to which sequence is
//! the engine's business (its block manager hands the forward pass a block table per sequence).

use half::f16;
use half::slice::HalfFloatSliceExt;
use lumen_kernels::attention::{KeyLayout, KvGeometry};

/// Keys and values for every layer, `n_blocks` blocks each.
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
        KvStorage { geo, n_blocks, k: vec![vec![f16::ZERO; per_layer]; n_layers], v: vec![vec![f16::ZERO; per_layer]; n_layers] }
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

    /// Writes one token's key and value rows (`kv_dim` each) at `pos` of a sequence.
    pub fn write(&mut self, layer: usize, block_table: &[u32], pos: usize, key: &[f32], value: &[f32]) {
        let hd = self.geo.head_dim;
        assert!(key.len() == self.geo.kv_dim() && value.len() == key.len(), "KvStorage::write: rows of {} values", self.geo.kv_dim());
        // Each KV head's values sit in their own part of the block (see KvGeometry).
        for (h, (k, v)) in key.chunks_exact(hd).zip(value.chunks_exact(hd)).enumerate() {
            let off = self.geo.head_offset(block_table, pos, h);
            // The slice conversion uses F16C when the CPU has it (the scalar one is software);
            // both round to nearest even, like ggml's f32 -> f16.
            self.v[layer][off..off + hd].convert_from_f32_slice(v);
            match self.geo.keys {
                KeyLayout::Rows => self.k[layer][off..off + hd].convert_from_f32_slice(k),
                KeyLayout::Columns => {
                    // One value per dimension row of the head's piece, `block_size` apart.
                    let (first, bs) = (self.geo.key_offset(block_table, pos, h, 0), self.geo.block_size);
                    let mut row = [f16::ZERO; 16];
                    for (c, chunk) in k.chunks(16).enumerate() {
                        let row = &mut row[..chunk.len()];
                        row.convert_from_f32_slice(chunk);
                        for (i, &x) in row.iter().enumerate() {
                            self.k[layer][first + (16 * c + i) * bs] = x;
                        }
                    }
                }
            }
        }
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
}
