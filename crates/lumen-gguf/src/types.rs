//! ggml tensor element types: ids, block geometry and names.

use std::fmt;

use crate::error::GgufError;

/// A ggml tensor element type, with the numeric id ggml writes to GGUF files.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 4-bit, 32-element blocks with an f16 scale.
    Q4_0,
    /// 4-bit, 32-element blocks with an f16 scale and min.
    Q4_1,
    /// 5-bit, 32-element blocks with an f16 scale.
    Q5_0,
    /// 5-bit, 32-element blocks with an f16 scale and min.
    Q5_1,
    /// 8-bit, 32-element blocks with an f16 scale.
    Q8_0,
    /// 8-bit, 32-element blocks with an f16 scale and sum.
    Q8_1,
    /// 2-bit k-quant super-blocks of 256.
    Q2_K,
    /// 3-bit k-quant super-blocks of 256.
    Q3_K,
    /// 4-bit k-quant super-blocks of 256.
    Q4_K,
    /// 5-bit k-quant super-blocks of 256.
    Q5_K,
    /// 6-bit k-quant super-blocks of 256.
    Q6_K,
    /// 8-bit k-quant super-blocks of 256 (activations).
    Q8_K,
    /// 2.06-bit i-quant.
    IQ2_XXS,
    /// 2.31-bit i-quant.
    IQ2_XS,
    /// 3.06-bit i-quant.
    IQ3_XXS,
    /// 1.56-bit i-quant.
    IQ1_S,
    /// 4-bit non-linear, 32-element blocks.
    IQ4_NL,
    /// 3.44-bit i-quant.
    IQ3_S,
    /// 2.5-bit i-quant.
    IQ2_S,
    /// 4.25-bit non-linear i-quant.
    IQ4_XS,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 64-bit float.
    F64,
    /// 1.75-bit i-quant.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary, 1.69 bits per weight.
    TQ1_0,
    /// Ternary, 2.06 bits per weight.
    TQ2_0,
    /// Microscaling FP4, 32-element blocks with an e8m0 scale.
    MXFP4,
}

/// (type, ggml id, elements per block, bytes per block, name), one row per type.
const TABLE: [(GgmlType, u32, u64, u64, &str); 32] = [
    (GgmlType::F32, 0, 1, 4, "F32"),
    (GgmlType::F16, 1, 1, 2, "F16"),
    (GgmlType::Q4_0, 2, 32, 18, "Q4_0"),
    (GgmlType::Q4_1, 3, 32, 20, "Q4_1"),
    (GgmlType::Q5_0, 6, 32, 22, "Q5_0"),
    (GgmlType::Q5_1, 7, 32, 24, "Q5_1"),
    (GgmlType::Q8_0, 8, 32, 34, "Q8_0"),
    (GgmlType::Q8_1, 9, 32, 36, "Q8_1"),
    (GgmlType::Q2_K, 10, 256, 84, "Q2_K"),
    (GgmlType::Q3_K, 11, 256, 110, "Q3_K"),
    (GgmlType::Q4_K, 12, 256, 144, "Q4_K"),
    (GgmlType::Q5_K, 13, 256, 176, "Q5_K"),
    (GgmlType::Q6_K, 14, 256, 210, "Q6_K"),
    (GgmlType::Q8_K, 15, 256, 292, "Q8_K"),
    (GgmlType::IQ2_XXS, 16, 256, 66, "IQ2_XXS"),
    (GgmlType::IQ2_XS, 17, 256, 74, "IQ2_XS"),
    (GgmlType::IQ3_XXS, 18, 256, 98, "IQ3_XXS"),
    (GgmlType::IQ1_S, 19, 256, 50, "IQ1_S"),
    (GgmlType::IQ4_NL, 20, 32, 18, "IQ4_NL"),
    (GgmlType::IQ3_S, 21, 256, 110, "IQ3_S"),
    (GgmlType::IQ2_S, 22, 256, 82, "IQ2_S"),
    (GgmlType::IQ4_XS, 23, 256, 136, "IQ4_XS"),
    (GgmlType::I8, 24, 1, 1, "I8"),
    (GgmlType::I16, 25, 1, 2, "I16"),
    (GgmlType::I32, 26, 1, 4, "I32"),
    (GgmlType::I64, 27, 1, 8, "I64"),
    (GgmlType::F64, 28, 1, 8, "F64"),
    (GgmlType::IQ1_M, 29, 256, 56, "IQ1_M"),
    (GgmlType::BF16, 30, 1, 2, "BF16"),
    (GgmlType::TQ1_0, 34, 256, 54, "TQ1_0"),
    (GgmlType::TQ2_0, 35, 256, 66, "TQ2_0"),
    (GgmlType::MXFP4, 39, 32, 17, "MXFP4"),
];

impl GgmlType {
    /// Every type this reader knows, in id order.
    #[allow(clippy::indexing_slicing)] // `i` is bounded by the loop condition.
    pub const ALL: [GgmlType; 32] = {
        let mut all = [GgmlType::F32; 32];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    /// The type with ggml id `id`; ids ggml has retired or not yet assigned are errors.
    pub fn from_id(id: u32) -> Result<Self, GgufError> {
        TABLE
            .iter()
            .find(|row| row.1 == id)
            .map(|row| row.0)
            .ok_or(GgufError::UnknownTensorType {
                tensor: String::new(),
                id,
            })
    }

    /// This type's row in the table. The table lists every variant in declaration
    /// order, so the discriminant is the row index (a unit test pins this).
    #[allow(clippy::indexing_slicing)]
    fn row(self) -> &'static (GgmlType, u32, u64, u64, &'static str) {
        &TABLE[self as usize]
    }

    /// The ggml numeric id.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// Elements per block (1 for plain scalar types).
    pub fn block_size(self) -> u64 {
        self.row().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.row().3
    }

    /// Upper-case name, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        self.row().4
    }

    /// Whether values are stored in blocks of more than one element.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n_elements` values, or `None` if that is not a whole number of
    /// blocks or overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size();
        if n_elements.checked_rem(bs)? != 0 {
            return None;
        }
        n_elements.checked_div(bs)?.checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_match_discriminants_and_round_trip() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.0 as usize, i, "{} out of order", row.4);
            assert_eq!(GgmlType::from_id(row.1).unwrap(), row.0);
            assert_eq!(row.0.id(), row.1);
            assert_eq!(format!("{:?}", row.0), row.4);
        }
        assert_eq!(GgmlType::ALL.len(), TABLE.len());
    }

    #[test]
    fn retired_and_unknown_ids_are_errors() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, u32::MAX] {
            match GgmlType::from_id(id) {
                Err(GgufError::UnknownTensorType { id: got, .. }) => assert_eq!(got, id),
                other => panic!("id {id}: {other:?}"),
            }
        }
    }

    #[test]
    fn bytes_for_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(256), Some(144));
    }
}
