//! Fado: a portable GPU inference runtime for Llama-family language models (AMALIA, EuroLLM,
//! Llama 2/3, Mistral, SmolLM2, TinyLlama) on WGSL compute kernels through wgpu.
//!
//! Layers, bottom up: [`gpu`] (device, pipelines), [`tensor`], [`ops`] (one module per op:
//! dispatch + CPU reference), [`graph`] (IR, memory planner, executor).

#![warn(missing_docs)]

pub mod chat_template;
pub mod config;
pub mod constrain;
pub mod convert;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod graph;
pub mod loader;
pub mod model;
pub mod ops;
pub mod quant;
pub mod rng;
pub mod sampling;
pub mod server;
pub mod session;
pub mod tensor;
pub mod tokenizer;
pub mod tools;

pub use error::{Error, Result};
