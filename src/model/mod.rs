//! Model description and builders.

pub mod config;
