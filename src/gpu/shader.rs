//! WGSL sources and the tiny preprocessor that expands one source per family into its variants.
//!
//! Directives (each on its own line):
//! - `#include "file.wgsl"` pastes another file of `shaders/`;
//! - `#if NAME`, `#if !NAME`, `#else`, `#endif` keep or drop lines (NAME is true when defined and not `0`/`false`);
//! - `{{NAME}}` anywhere is replaced by the define's value (an undefined name is an error).

#![warn(missing_docs)]

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Every shader file, embedded at build time by `build.rs`.
pub const SOURCES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// The text of shader file `name` (e.g. `"rmsnorm.wgsl"`), if it exists.
pub fn source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

fn truthy(defines: &BTreeMap<String, String>, name: &str) -> bool {
    defines.get(name).is_some_and(|v| v != "0" && v != "false")
}

/// Expand `name` with `defines`.
pub fn preprocess(name: &str, defines: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    expand(name, defines, &mut out, 0)?;
    Ok(out)
}

fn expand(
    name: &str,
    defines: &BTreeMap<String, String>,
    out: &mut String,
    depth: usize,
) -> Result<()> {
    let err = |msg: String| Error::gpu(format!("preprocessing shader `{name}`"), msg);
    if depth > 8 {
        return Err(err("includes nested too deeply".into()));
    }
    let src = source(name).ok_or_else(|| err(format!("no shader file `{name}`")))?;
    // Stack of (this branch active, some branch already taken, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
    for (lineno, line) in src.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#if ") {
            let cond = rest.trim();
            let v = match cond.strip_prefix('!') {
                Some(n) => !truthy(defines, n.trim()),
                None => truthy(defines, cond),
            };
            stack.push((v, v));
            continue;
        }
        if t.starts_with("#else") {
            let top = stack
                .last_mut()
                .ok_or_else(|| err(format!("line {}: #else without #if", lineno + 1)))?;
            top.0 = !top.1;
            top.1 = true;
            continue;
        }
        if t.starts_with("#endif") {
            stack
                .pop()
                .ok_or_else(|| err(format!("line {}: #endif without #if", lineno + 1)))?;
            continue;
        }
        if !active(&stack) {
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include ") {
            let inc = rest.trim().trim_matches('"');
            expand(inc, defines, out, depth + 1)?;
            continue;
        }
        // {{NAME}} substitution.
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| err(format!("line {}: unclosed {{{{", lineno + 1)))?;
            let key = rest[start + 2..start + end].trim();
            let val = defines
                .get(key)
                .ok_or_else(|| err(format!("line {}: `{key}` is not defined", lineno + 1)))?;
            out.push_str(val);
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err(err("#if without #endif".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shader_expands_with_common_defines() {
        let mut d = BTreeMap::new();
        d.insert("X".to_string(), "1".to_string());
        // Files that need specific defines are checked by their op tests; here only the syntax.
        assert!(preprocess("common.wgsl", &d).is_ok());
    }
}
