//! Weight-format tags: a [`WeightFormat`] as the const generic parameter of the tile kernels.
//!
//! Each tile is monomorphized per weight format so that every format test (`F == tag::Q4_1`)
//! is resolved at compile time. Stable Rust takes no enum as a const generic parameter, so a
//! kernel takes a [`Tag`]: the format's `WeightFormat` discriminant, one constant per format
//! here, shared by every kernel module (a tag means the same format wherever it appears).

use crate::WeightFormat;

/// A weight format as a const generic parameter: `WeightFormat as u8`.
pub(crate) type Tag = u8;

/// [`WeightFormat::F32`].
pub(crate) const F32: Tag = WeightFormat::F32 as Tag;
/// [`WeightFormat::F16`].
pub(crate) const F16: Tag = WeightFormat::F16 as Tag;
/// [`WeightFormat::BF16`].
pub(crate) const BF16: Tag = WeightFormat::BF16 as Tag;
/// [`WeightFormat::Q4_0`].
pub(crate) const Q4_0: Tag = WeightFormat::Q4_0 as Tag;
/// [`WeightFormat::Q4_1`].
pub(crate) const Q4_1: Tag = WeightFormat::Q4_1 as Tag;
/// [`WeightFormat::Q8_0`].
pub(crate) const Q8_0: Tag = WeightFormat::Q8_0 as Tag;
/// [`WeightFormat::Q4_K`].
pub(crate) const Q4_K: Tag = WeightFormat::Q4_K as Tag;
/// [`WeightFormat::Q5_K`].
pub(crate) const Q5_K: Tag = WeightFormat::Q5_K as Tag;
/// [`WeightFormat::Q6_K`].
pub(crate) const Q6_K: Tag = WeightFormat::Q6_K as Tag;

/// [`WeightFormat::Q5_0`].
pub(crate) const Q5_0: Tag = WeightFormat::Q5_0 as Tag;
/// [`WeightFormat::Q5_1`].
pub(crate) const Q5_1: Tag = WeightFormat::Q5_1 as Tag;
/// [`WeightFormat::Q2_K`].
pub(crate) const Q2_K: Tag = WeightFormat::Q2_K as Tag;
/// [`WeightFormat::Q3_K`].
pub(crate) const Q3_K: Tag = WeightFormat::Q3_K as Tag;
/// [`WeightFormat::IQ4_NL`].
pub(crate) const IQ4_NL: Tag = WeightFormat::IQ4_NL as Tag;
/// [`WeightFormat::IQ4_XS`].
pub(crate) const IQ4_XS: Tag = WeightFormat::IQ4_XS as Tag;

/// The weight format a tag stands for (a compile-time constant inside a kernel).
pub(crate) const fn format(t: Tag) -> WeightFormat {
    match t {
        F32 => WeightFormat::F32,
        F16 => WeightFormat::F16,
        BF16 => WeightFormat::BF16,
        Q4_0 => WeightFormat::Q4_0,
        Q4_1 => WeightFormat::Q4_1,
        Q8_0 => WeightFormat::Q8_0,
        Q4_K => WeightFormat::Q4_K,
        Q5_K => WeightFormat::Q5_K,
        Q5_0 => WeightFormat::Q5_0,
        Q5_1 => WeightFormat::Q5_1,
        Q2_K => WeightFormat::Q2_K,
        Q3_K => WeightFormat::Q3_K,
        IQ4_NL => WeightFormat::IQ4_NL,
        IQ4_XS => WeightFormat::IQ4_XS,
        _ => WeightFormat::Q6_K,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for f in crate::ALL_FORMATS {
            assert_eq!(format(f as Tag), f);
        }
    }
}
