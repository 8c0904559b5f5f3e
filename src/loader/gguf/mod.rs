//! GGUF v2/v3, one concept per file: `reader` (memory-mapped parsing, limits), `value`
//! ([`MetaValue`]), `types` (ggml type ids ↔ [`DType`](crate::tensor::DType)), `names` (GGUF ↔
//! Hugging Face tensor names), `config` (`llama.*` metadata ↔
//! [`LlamaConfig`](crate::config::LlamaConfig)), `model` ([`GgufModel`], the
//! [`WeightSource`](super::WeightSource)), `writer`, and [`vocab`] (tokenizer metadata → the
//! tokenizer's neutral [`Vocab`](crate::tokenizer::Vocab)).
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64,
//! metadata key/values (key: u64 length + UTF-8; value: u32 type + payload; arrays: u32 element
//! type + u64 count + elements), tensor infos (name, u32 n_dims, n_dims × u64 `ne` innermost
//! first, u32 ggml type, u64 offset into the data section), padding to `general.alignment`
//! (default 32), data section. Version 1 (32-bit counts) and big-endian files are refused.
//!
//! Hostile files: every count and length is checked against the bytes left in the file (and a
//! cap) before anything is allocated; element counts and byte sizes use checked arithmetic;
//! every tensor must lie inside the file at an aligned offset.
//!
//! Q/K permutation: llama.cpp's converter permutes the rows of `attn_q` / `attn_k` for its
//! interleaved RoPE. [`GgufModel`] undoes it when serving bytes, so the rest of Fado always sees
//! Hugging Face's layout and uses rotate-half RoPE; [`write()`] re-applies it.

mod config;
mod model;
mod names;
mod reader;
mod types;
mod value;
pub mod vocab;
mod writer;

pub use config::{config_metadata, llama3_rope_factors, llama_config, rope_freqs_tensor};
pub use model::GgufModel;
pub use names::{gguf_to_hf_name, hf_to_gguf_name};
pub use reader::{has_gguf_magic, GgufFile, GgufTensorInfo, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
pub use types::{dtype_from_ggml, ggml_from_dtype, ggml_type, ggml_type_name};
pub use value::MetaValue;
pub use writer::{write, write_raw, write_streamed, RawTensor};
