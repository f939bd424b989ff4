//! What an explain pass may see of, and change in, the ordinary forward pass.
//!
//! Interpretability must measure the model the server runs, not a re-implementation that
//! rounds differently, so the explain pass is [`LlamaModel::forward`] itself with an
//! [`Observer`]: a hook handed each layer's intermediate rows as they are computed, and
//! optional RoPE positions that let a sequence skip tokens while later tokens keep their
//! places (how occlusion's `mask` mode blocks attention to a span: the span's keys are never
//! written, so no query can attend to them). The ordinary step passes no observer; what that
//! costs is one untaken branch per layer and per token.
//!
//! [`LlamaModel::forward`]: super::LlamaModel::forward

/// Receives a forward pass's intermediate rows, all batch rows at once (row-major, in batch
/// order). Every method defaults to doing nothing.
pub trait ForwardHook {
    /// The residual stream entering block `layer` (`layer == 0`: the token embeddings), or
    /// leaving the last block (`layer == n_layers`), `d_model` per row.
    fn residual(&mut self, _layer: usize, _x: &[f32]) {}
    /// Block `layer`'s attention: queries and keys after RoPE (`q_dim`, `kv_dim` per row),
    /// values (`kv_dim`), and the heads' outputs before the output projection (`q_dim`).
    fn attention(&mut self, _layer: usize, _q: &[f32], _k: &[f32], _v: &[f32], _heads: &[f32]) {}
    /// Block `layer`'s attention output after the output projection (what joins the residual).
    fn attn_out(&mut self, _layer: usize, _o: &[f32]) {}
    /// Block `layer`'s MLP output (what joins the residual).
    fn mlp_out(&mut self, _layer: usize, _o: &[f32]) {}
}

/// An explain pass's view into a forward pass.
pub struct Observer<'a> {
    /// The RoPE position of every batch row; `None`: each row's cache position. A row's cache
    /// slot (and what it attends to) is still its sequence's `start_pos` plus its index.
    pub rope_positions: Option<&'a [usize]>,
    /// Where the intermediate rows go.
    pub hook: &'a mut dyn ForwardHook,
}
