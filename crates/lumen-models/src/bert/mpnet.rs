//! What MPNet adds to the BERT encoder: position ids counted from the padding id, and a
//! learned relative-position bias on the attention scores.
//!
//! Everything else (embeddings LayerNorm, post-LN layers, GELU feed-forward, pooling) is
//! BERT's and runs through the same code; only the tensor names of the attention block
//! differ, which [`super::layer`] handles.
//!
//! **Positions.** MPNet follows fairseq: a token's position is `padding_idx + ` the number of
//! non-padding tokens up to and including it, and a padding token sits at `padding_idx`.
//! transformers hard-codes `padding_idx = 1` for MPNet (whatever `pad_token_id` says), and so
//! does this module. Inputs carry no padding here (batches are ragged), but a caller may still
//! pass the pad id among token ids, and it gets the same position transformers would give it.
//!
//! **Relative bias.** One table of `32 buckets × heads` is shared by every layer. The bias of
//! query `i` and key `j` depends only on `j - i` and the head, so it is expanded once at load
//! into a per-head row over every distance the model can meet ([`RelativeBias`]), and
//! attention adds a contiguous slice of it to each query's scores: no per-step work.

use super::weights::WeightFile;
use crate::error::ModelError;

/// MPNet's padding id, as transformers fixes it.
pub(crate) const PADDING_IDX: usize = 1;
/// Buckets of the relative-position table.
pub(crate) const NUM_BUCKETS: usize = 32;
/// Distance beyond which every relative position shares the last bucket.
const MAX_DISTANCE: i64 = 128;

/// The bucket of relative position `rel` (key minus query), as transformers'
/// `MPNetEncoder.relative_position_bucket`: half the buckets for keys before the query, half
/// for keys after; exact buckets for distances under 8, logarithmic ones up to 128.
///
/// The logarithm is taken in f32, as PyTorch does on a float tensor, since a bucket edge can
/// sit on a rounding boundary; a test checks every distance against transformers' own output.
pub(crate) fn relative_bucket(rel: i64) -> usize {
    let half = (NUM_BUCKETS / 2) as i64;
    let n = -rel;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let scaled = (n as f32 / max_exact as f32).ln()
            / (MAX_DISTANCE as f32 / max_exact as f32).ln()
            * (half - max_exact) as f32;
        (max_exact + scaled as i64).min(half - 1)
    };
    bucket as usize
}

/// Position ids of one sequence (fairseq's rule), written to `out` (`out.len() == ids.len()`).
pub(crate) fn position_ids(ids: &[u32], out: &mut [usize]) {
    let mut count = 0;
    for (o, &id) in out.iter_mut().zip(ids) {
        if id as usize == PADDING_IDX {
            *o = PADDING_IDX;
        } else {
            count += 1;
            *o = PADDING_IDX + count;
        }
    }
}

/// The relative-position bias of every head at every distance, expanded from the bucket table.
pub(crate) struct RelativeBias {
    /// Longest sequence covered.
    max_len: usize,
    /// `heads × (2 max_len - 1)`: row `h`, column `rel + max_len - 1`.
    table: Vec<f32>,
}

impl RelativeBias {
    /// Loads `encoder.relative_attention_bias.weight` (`buckets × heads`) and expands it for
    /// sequences of up to `max_len` tokens.
    pub(crate) fn load(
        file: &WeightFile,
        buckets: usize,
        n_heads: usize,
        max_len: usize,
    ) -> Result<RelativeBias, ModelError> {
        let raw = file.table("encoder.relative_attention_bias.weight", buckets, n_heads)?;
        Ok(RelativeBias::expand(&raw, n_heads, max_len))
    }

    fn expand(raw: &[f32], n_heads: usize, max_len: usize) -> RelativeBias {
        let width = 2 * max_len - 1;
        let mut table = vec![0.0; n_heads * width];
        for (h, row) in table.chunks_exact_mut(width).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                let rel = c as i64 - (max_len as i64 - 1);
                *v = raw[relative_bucket(rel) * n_heads + h];
            }
        }
        RelativeBias { max_len, table }
    }

    /// The biases of head `h` for query `i` against keys `0..n` of its sequence
    /// (`i < n <= max_len`).
    pub(crate) fn row(&self, h: usize, i: usize, n: usize) -> &[f32] {
        let width = 2 * self.max_len - 1;
        let start = h * width + (self.max_len - 1 - i);
        &self.table[start..start + n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers_at_every_distance() {
        // Written by scripts/make_embedding_fixtures.py from transformers' own function.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mpnet_reference.json"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let rb = &doc["relative_position_buckets"];
        let from = rb["from"].as_i64().unwrap();
        let want: Vec<u64> = rb["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(want.len(), 1023);
        for (k, &w) in want.iter().enumerate() {
            let rel = from + k as i64;
            assert_eq!(relative_bucket(rel) as u64, w, "relative position {rel}");
        }
    }

    #[test]
    fn positions_skip_padding_and_bias_rows_follow_distance() {
        let mut pos = [0; 5];
        position_ids(&[0, 7, 1, 9, 2], &mut pos);
        assert_eq!(pos, [2, 3, 1, 4, 5]);

        let (heads, buckets) = (2, NUM_BUCKETS);
        let raw: Vec<f32> = (0..buckets * heads).map(|x| x as f32).collect();
        let bias = RelativeBias::expand(&raw, heads, 6);
        for h in 0..heads {
            for i in 0..4 {
                let row = bias.row(h, i, 4);
                for (j, &b) in row.iter().enumerate() {
                    let want = raw[relative_bucket(j as i64 - i as i64) * heads + h];
                    assert_eq!(b, want, "head {h} query {i} key {j}");
                }
            }
        }
    }
}
