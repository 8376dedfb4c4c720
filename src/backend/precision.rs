//! Convolution precision: `f32` (the default, CPU-exact), `tf32` or `bf16` tensor-core inputs
//! with f32 accumulation. `--precision` selects it for the convolutions of a run (forward,
//! backward-data, backward-filter); every other op stays f32.
//!
//! Contract, the same on both backends: the two inputs of each convolution GEMM (x and w
//! forward, dy and w backward-data, x and dy backward-filter) are rounded to the precision's
//! grid, then multiplied and summed in f32. The bias and all outputs are f32. On CUDA the
//! tensor-core kernels (kernels/conv.cu `_tf32_v1`, `_bf16_v1`) round on the way into shared
//! memory; the CPU backend emulates that by rounding a copy of its inputs with the functions
//! below (the device twins are `adv_f32_to_tf32` / `adv_f32_to_bf16` in kernels/common.cuh) and
//! running the f32 oracle, so the two differ only in the order of the f32 additions.
//!
//! Error against the exact f32 result: each product a'b' = ab (1 + d1)(1 + d2) with
//! |d| <= u, u = 2^-11 (tf32: 10 explicit mantissa bits) or 2^-8 (bf16: 7), so
//! |y' - y| <= (2u + u^2) sum |a||b| plus the f32 summation error of both sides.
use std::borrow::Cow;

/// Input precision of the convolution GEMMs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Plain f32 (CUDA: the SIMT kernels; CPU: the oracle). The default.
    #[default]
    F32,
    /// Inputs rounded to TF32 (`cvt.rna.tf32.f32`: 10 mantissa bits, ties away from zero).
    Tf32,
    /// Inputs rounded to bfloat16 (7 mantissa bits, round to nearest even).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    /// For `skip_serializing_if`: f32 is left out of configs and stage keys, so those written
    /// before `--precision` existed still match.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Unit roundoff of one rounded input: 0 for f32 (inputs are used as they are).
    pub fn input_unit_roundoff(self) -> f64 {
        match self {
            Precision::F32 => 0.0,
            Precision::Tf32 => (2.0f64).powi(-11),
            Precision::Bf16 => (2.0f64).powi(-8),
        }
    }

    /// Round one value to this precision's grid (identity for f32).
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::Tf32 => round_tf32(v),
            Precision::Bf16 => round_bf16(v),
        }
    }

    /// The values rounded to this precision: borrowed unchanged for f32, a rounded copy else.
    pub fn round_slice(self, v: &[f32]) -> Cow<'_, [f32]> {
        match self {
            Precision::F32 => Cow::Borrowed(v),
            p => Cow::Owned(v.iter().map(|&x| p.round(x)).collect()),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!(
                "unknown precision '{s}': expected f32, tf32 or bf16"
            )),
        }
    }
}

/// f32 -> tf32 as `cvt.rna.tf32.f32` (round to nearest, ties away from zero; the low 13 bits of
/// the result are zero); Inf and NaN unchanged. Twin of kernels/common.cuh adv_f32_to_tf32.
pub fn round_tf32(v: f32) -> f32 {
    let u = v.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return v;
    }
    // Sign-magnitude: adding half an ulp of the 10-bit grid and truncating rounds ties away
    // from zero; a carry into the exponent is the correct rounding up (to Inf at the top).
    f32::from_bits(u.wrapping_add(0x1000) & 0xffff_e000)
}

/// f32 -> bf16 -> f32, round to nearest even (the `half` crate; NaN stays NaN). Twin of
/// kernels/common.cuh adv_f32_to_bf16.
pub fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_nearest_ties_away() {
        let ulp = (2.0f32).powi(-10); // tf32 spacing in [1, 2)
        assert_eq!(round_tf32(1.0 + ulp / 2.0), 1.0 + ulp, "tie rounds away");
        assert_eq!(
            round_tf32(-(1.0 + ulp / 2.0)),
            -(1.0 + ulp),
            "tie away, negative"
        );
        assert_eq!(
            round_tf32(1.0 + ulp * 1.5),
            1.0 + 2.0 * ulp,
            "tie away (odd below)"
        );
        assert_eq!(round_tf32(1.0 + ulp * 0.49), 1.0);
        assert_eq!(round_tf32(1.0 + ulp * 0.51), 1.0 + ulp);
        assert_eq!(
            round_tf32(f32::MAX),
            f32::INFINITY,
            "carry out of the largest binade"
        );
        assert!(round_tf32(f32::NAN).is_nan());
        assert_eq!(round_tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(round_tf32(3.0).to_bits() & 0x1fff, 0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let ulp = (2.0f32).powi(-7);
        assert_eq!(round_bf16(1.0 + ulp / 2.0), 1.0, "tie to even (down)");
        assert_eq!(
            round_bf16(1.0 + ulp * 1.5),
            1.0 + 2.0 * ulp,
            "tie to even (up)"
        );
        assert_eq!(round_bf16(1.0 + ulp * 0.51), 1.0 + ulp);
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn relative_error_within_the_unit_roundoff() {
        let mut x = 0.123_456_79f32;
        for _ in 0..1000 {
            x = (x * 1.618_034 + 0.377) % 7.0 - 3.5;
            for p in Precision::ALL {
                let r = p.round(x);
                let rel = ((r as f64 - x as f64) / x as f64).abs();
                assert!(rel <= p.input_unit_roundoff(), "{p} {x} -> {r}: {rel}");
            }
        }
    }

    #[test]
    fn parses_and_prints() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("fp16".parse::<Precision>().is_err());
    }
}
