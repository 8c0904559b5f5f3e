//! ggml tensor types: their ids, their names for messages, and the one table that maps them to
//! Fado's [`DType`] and back.

use crate::tensor::DType;

/// ggml tensor type ids (`enum ggml_type`).
pub mod ggml_type {
    /// f32.
    pub const F32: u32 = 0;
    /// IEEE f16.
    pub const F16: u32 = 1;
    /// Q4_0 blocks.
    pub const Q4_0: u32 = 2;
    /// Q4_1 blocks.
    pub const Q4_1: u32 = 3;
    /// Q5_0 blocks (not loaded by Fado).
    pub const Q5_0: u32 = 6;
    /// Q5_1 blocks (not loaded by Fado).
    pub const Q5_1: u32 = 7;
    /// Q8_0 blocks.
    pub const Q8_0: u32 = 8;
    /// Q8_1 blocks (not loaded by Fado).
    pub const Q8_1: u32 = 9;
    /// Q2_K blocks (not loaded by Fado).
    pub const Q2_K: u32 = 10;
    /// Q3_K blocks (not loaded by Fado).
    pub const Q3_K: u32 = 11;
    /// Q4_K blocks.
    pub const Q4_K: u32 = 12;
    /// Q5_K blocks.
    pub const Q5_K: u32 = 13;
    /// Q6_K blocks.
    pub const Q6_K: u32 = 14;
    /// Q8_K blocks (not loaded by Fado).
    pub const Q8_K: u32 = 15;
    /// bf16.
    pub const BF16: u32 = 30;
}

/// ggml's type names, indexed by type id (`ggml_type_name` in ggml.c).
const NAMES: [&str; 40] = [
    "F32",
    "F16",
    "Q4_0",
    "Q4_1",
    "Q4_2",
    "Q4_3",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q8_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q8_K",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ3_XXS",
    "IQ1_S",
    "IQ4_NL",
    "IQ3_S",
    "IQ2_S",
    "IQ4_XS",
    "I8",
    "I16",
    "I32",
    "I64",
    "F64",
    "IQ1_M",
    "BF16",
    "Q4_0_4_4",
    "Q4_0_4_8",
    "Q4_0_8_8",
    "TQ1_0",
    "TQ2_0",
    "IQ4_NL_4_4",
    "IQ4_NL_4_8",
    "IQ4_NL_8_8",
    "MXFP4",
];

/// Name of a ggml type id, for messages.
pub fn ggml_type_name(t: u32) -> String {
    match NAMES.get(t as usize) {
        Some(n) => format!("{n} ({t})"),
        None => format!("{t} (no ggml type has this id)"),
    }
}

/// The ggml type of every [`DType::WEIGHT_TYPES`] entry: the one table, read both ways.
const GGML_DTYPES: [(u32, DType); 9] = {
    use ggml_type as g;
    [
        (g::F32, DType::F32),
        (g::F16, DType::F16),
        (g::BF16, DType::BF16),
        (g::Q8_0, DType::Q8_0),
        (g::Q4_0, DType::Q4_0),
        (g::Q4_1, DType::Q4_1),
        (g::Q4_K, DType::Q4K),
        (g::Q5_K, DType::Q5K),
        (g::Q6_K, DType::Q6K),
    ]
};

/// The ggml type id → Fado dtype, for the types Fado runs.
pub fn dtype_from_ggml(t: u32) -> Option<DType> {
    GGML_DTYPES.iter().find(|(g, _)| *g == t).map(|&(_, d)| d)
}

/// Fado dtype → ggml type id (`None` for U32, which GGUF model files do not carry).
pub fn ggml_from_dtype(d: DType) -> Option<u32> {
    GGML_DTYPES.iter().find(|(_, x)| *x == d).map(|&(g, _)| g)
}

/// The ggml names of the types Fado loads, in [`DType::WEIGHT_TYPES`] order, for messages
/// (`F32, F16, BF16, Q8_0, …`).
pub(super) fn supported_types() -> String {
    let names: Vec<&str> = DType::WEIGHT_TYPES
        .iter()
        .filter_map(|&d| ggml_from_dtype(d))
        .filter_map(|g| NAMES.get(g as usize).copied())
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_type_has_a_ggml_type_and_back() {
        for d in DType::WEIGHT_TYPES {
            let g = ggml_from_dtype(d).unwrap_or_else(|| panic!("{d} has no ggml type"));
            assert_eq!(dtype_from_ggml(g), Some(d));
        }
        assert_eq!(
            supported_types(),
            "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"
        );
    }
}
