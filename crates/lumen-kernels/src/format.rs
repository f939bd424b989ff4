//! Weight formats: the block layouts of GGUF tensors that the matmul reads in place.

/// How a weight matrix's rows are stored (ggml block layouts, byte for byte).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: f16 scale, 16 bytes of 4-bit quants; value = (q - 8) * d.
    Q4_0,
    /// 32 values: f16 scale and min, 16 bytes of 4-bit quants; value = q * d + m.
    Q4_1,
    /// 32 values: f16 scale, 32 signed bytes; value = q * d.
    Q8_0,
    /// 256 values: f16 d and dmin, 12 bytes of 6-bit sub-block scales/mins, 4-bit quants.
    Q4_K,
    /// 256 values: like Q4_K plus one high bit per value.
    Q5_K,
    /// 256 values: 6-bit quants, 16 signed 8-bit sub-block scales, f16 d.
    Q6_K,
    /// 32 values: f16 scale, 4 bytes of high bits, 16 bytes of low nibbles; value = (q - 16) * d.
    Q5_0,
    /// 32 values: f16 scale and min, 4 bytes of high bits, 16 bytes of low nibbles; q * d + m.
    Q5_1,
    /// 256 values: 4-bit sub-block scales and mins, 2-bit quants, f16 d and dmin.
    Q2_K,
    /// 256 values: 6-bit signed sub-block scales, 2-bit quants plus a high-bit mask, f16 d.
    Q3_K,
    /// 32 values: f16 scale, 16 bytes of 4-bit indices into the non-linear `kvalues_iq4nl`.
    IQ4_NL,
    /// 256 values: IQ4_NL's table with 6-bit sub-block scales (split low/high), f16 d.
    IQ4_XS,
}

/// Every format, for iteration in tests and tools.
pub const ALL_FORMATS: [WeightFormat; 15] = [
    WeightFormat::F32,
    WeightFormat::F16,
    WeightFormat::BF16,
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q8_0,
    WeightFormat::Q4_K,
    WeightFormat::Q5_K,
    WeightFormat::Q6_K,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
    WeightFormat::Q2_K,
    WeightFormat::Q3_K,
    WeightFormat::IQ4_NL,
    WeightFormat::IQ4_XS,
];

impl WeightFormat {
    /// Values per block (1 for the float formats).
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 | Self::Q5_0 | Self::Q5_1 | Self::IQ4_NL => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q2_K | Self::Q3_K | Self::IQ4_XS => 256,
        }
    }

    /// Whether a 32-value format's blocks carry a min `m` (an f16 after `d`) that is dotted
    /// with Q8_1's `s` (Q4_1, Q5_1).
    pub(crate) const fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::IQ4_NL => 18,
            Self::IQ4_XS => 136,
        }
    }

    /// Bytes of one row of `cols` values; `None` unless `cols` is a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let be = self.block_elems();
        let blocks = cols / be;
        if blocks * be != cols {
            return None;
        }
        blocks.checked_mul(self.block_bytes())
    }

    /// Bytes of a `rows x cols` matrix in ggml's layout, or why it has none.
    pub(crate) fn matrix_bytes(
        self,
        rows: usize,
        cols: usize,
    ) -> Result<usize, crate::KernelError> {
        let rb = self
            .row_bytes(cols)
            .ok_or(crate::KernelError::RowNotBlockAligned {
                format: self.name(),
                cols,
                block: self.block_elems(),
            })?;
        rb.checked_mul(rows).ok_or(crate::KernelError::TooLarge {
            format: self.name(),
            rows,
            cols,
        })
    }

    /// Name as llama.cpp prints it ("q4_0", "f16", ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
            Self::Q4_K => "q4_K",
            Self::Q5_K => "q5_K",
            Self::Q6_K => "q6_K",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q2_K => "q2_K",
            Self::Q3_K => "q3_K",
            Self::IQ4_NL => "iq4_nl",
            Self::IQ4_XS => "iq4_xs",
        }
    }

    /// The format for a ggml type id, if the kernels support it.
    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            20 => Self::IQ4_NL,
            23 => Self::IQ4_XS,
            _ => return None,
        })
    }

    /// The ggml type id of this format.
    pub fn ggml_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::IQ4_NL => 20,
            Self::IQ4_XS => 23,
        }
    }

    /// Whether the format is block-quantized (not a plain float type).
    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Name of the activation format `matmul` quantizes x into for this weight format.
    pub fn activation_format(self) -> &'static str {
        self.act_kind().name()
    }

    pub(crate) fn act_kind(self) -> crate::act::ActKind {
        use crate::act::ActKind;
        match self {
            Self::F32 | Self::F16 | Self::BF16 => ActKind::F32,
            Self::Q4_0 | Self::Q8_0 | Self::Q5_0 | Self::IQ4_NL => ActKind::Q8_0,
            Self::Q4_1 | Self::Q5_1 => ActKind::Q8_1,
            Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q2_K | Self::Q3_K | Self::IQ4_XS => {
                ActKind::Q8K
            }
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
