//! Hugging Face safetensors models: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json` (`weight_map`: tensor name → shard file), memory-mapped.
//!
//! Header parsing is the `safetensors` crate's; before it runs, the header length is checked
//! against the file, and when it rejects a file the header is re-read here to name the tensor
//! at fault (offsets beyond the file, size not matching shape × dtype). Only F32, F16 and BF16
//! tensors are accepted. Shard names must be plain file names in the model folder.

#![warn(missing_docs)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ::safetensors::tensor::{Dtype, SafeTensors};
use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::tensor::DType;

use super::{hf_config, map_file, TensorEntry, TensorIndex, WeightSource};

/// The safetensors crate's own limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;
/// Most shards accepted in an index.
const MAX_SHARDS: usize = 10_000;

struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

/// Where a tensor's bytes are.
struct Slot {
    shard: usize,
    range: Range<usize>,
}

/// A Hugging Face model folder (or single file) of safetensors weights plus its config.
pub struct SafetensorsModel {
    path: PathBuf,
    dir: PathBuf,
    config: LlamaConfig,
    shards: Vec<Shard>,
    tensors: TensorIndex<Slot>,
}

impl SafetensorsModel {
    /// A folder with `config.json` and `model.safetensors.index.json` (sharded) or
    /// `model.safetensors`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<SafetensorsModel> {
        let dir = dir.as_ref();
        let config = hf_config::load_dir(dir)?;
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_files = if index.is_file() {
            read_index(&index)?
        } else if single.is_file() {
            vec![(single, None)]
        } else {
            return Err(Error::model(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model folder",
            ));
        };
        Self::build(dir, dir, config, shard_files)
    }

    /// A single `.safetensors` file with `config.json` (and optionally
    /// `generation_config.json`) in the same folder.
    pub fn open_file(file: impl AsRef<Path>) -> Result<SafetensorsModel> {
        let file = file.as_ref();
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.join("config.json").is_file() {
            return Err(Error::model(
                file,
                format!(
                    "no config.json next to the safetensors file (looked in {}); \
                     put the model's config.json there or pass the model folder",
                    dir.display()
                ),
            ));
        }
        let config = hf_config::load_dir(dir)?;
        Self::build(file, dir, config, vec![(file.to_path_buf(), None)])
    }

    fn build(
        path: &Path,
        dir: &Path,
        config: LlamaConfig,
        shard_files: Vec<(PathBuf, Option<Vec<String>>)>,
    ) -> Result<SafetensorsModel> {
        let mut shards = Vec::with_capacity(shard_files.len());
        let mut index = TensorIndex::with_capacity(0);
        for (si, (shard_path, expected)) in shard_files.into_iter().enumerate() {
            let mmap = map_file(&shard_path)?;
            let tensors = read_header(&shard_path, &mmap)?;
            for (entry, range) in tensors {
                if let Err((prev, at)) = index.insert(entry, Slot { shard: si, range }) {
                    return Err(Error::model(
                        &shard_path,
                        format!(
                            "tensor '{}' is also in {}",
                            prev.name,
                            shards
                                .get(at.shard)
                                .map(|s: &Shard| s.path.display().to_string())
                                .unwrap_or_else(|| shard_path.display().to_string())
                        ),
                    ));
                }
            }
            if let Some(names) = expected {
                for n in names {
                    if index.find(&n).is_none_or(|(_, at)| at.shard != si) {
                        return Err(Error::model(
                            &shard_path,
                            format!(
                                "model.safetensors.index.json places tensor '{n}' in this shard but it is not there; \
                                 the download is incomplete or mixed up"
                            ),
                        ));
                    }
                }
            }
            shards.push(Shard {
                path: shard_path,
                mmap,
            });
        }
        Ok(SafetensorsModel {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors: index,
        })
    }

    fn slot(&self, name: &str) -> Result<&(TensorEntry, Slot)> {
        self.tensors
            .find(name)
            .ok_or_else(|| Error::model(&self.path, format!("tensor '{name}' is not in the model")))
    }
}

impl WeightSource for SafetensorsModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "safetensors"
    }
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn tensors(&self) -> Vec<TensorEntry> {
        self.tensors.entries()
    }
    fn get(&self, name: &str) -> Result<TensorEntry> {
        Ok(self.slot(name)?.0.clone())
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let (_, at) = self.slot(name)?;
        Ok(Cow::Borrowed(&self.shards[at.shard].mmap[at.range.clone()]))
    }
    fn hf_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// `model.safetensors.index.json` → shard paths with the tensor names each should hold, in
/// order of first appearance.
fn read_index(index: &Path) -> Result<Vec<(PathBuf, Option<Vec<String>>)>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(index, format!("invalid JSON: {e}")))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(Error::model(
            index,
            "field 'weight_map' (tensor name → shard file) is missing or not an object",
        ));
    };
    let mut order: Vec<String> = Vec::new();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(Error::model(
                index,
                format!("weight_map entry for '{tensor}' is {file}, not a file name"),
            ));
        };
        let plain = Path::new(file)
            .file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(file));
        if !plain || file == ".." || file == "." {
            return Err(Error::model(
                index,
                format!(
                    "weight_map places '{tensor}' in '{file}', which is not a plain file name in the model folder"
                ),
            ));
        }
        if !names.contains_key(file) {
            if order.len() >= MAX_SHARDS {
                return Err(Error::model(
                    index,
                    format!("more than {MAX_SHARDS} shard files"),
                ));
            }
            order.push(file.to_string());
        }
        names
            .entry(file.to_string())
            .or_default()
            .push(tensor.clone());
    }
    if order.is_empty() {
        return Err(Error::model(index, "weight_map is empty"));
    }
    order.sort();
    let mut out = Vec::with_capacity(order.len());
    for file in order {
        let p = dir.join(&file);
        if !p.is_file() {
            return Err(Error::model(
                &p,
                format!(
                    "shard file '{file}' listed in {} is missing; download all shards of the model",
                    index.display()
                ),
            ));
        }
        let n = names.remove(&file);
        out.push((p, n));
    }
    Ok(out)
}

/// The safetensors names of the dtypes Fado loads ([`DType::FLOATS`]), for messages.
fn supported() -> String {
    let names: Vec<String> = DType::FLOATS
        .iter()
        .map(|d| d.name().to_ascii_uppercase())
        .collect();
    names.join(", ")
}

fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Parse a safetensors header (through the crate) and return the tensors with their absolute
/// byte ranges in the file, in file order.
fn read_header(path: &Path, buf: &[u8]) -> Result<Vec<(TensorEntry, Range<usize>)>> {
    let file_len = buf.len() as u64;
    if file_len < 8 {
        return Err(Error::model(
            path,
            format!("file is truncated: {file_len} bytes, too short for the 8-byte header length; re-download it"),
        ));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&buf[..8]);
    let n = u64::from_le_bytes(n8);
    if n > file_len - 8 {
        return Err(Error::model(
            path,
            format!(
                "header length {n} goes beyond the end of the file ({file_len} bytes); the file is truncated or not safetensors; re-download it"
            ),
        ));
    }
    if n > MAX_HEADER {
        return Err(Error::model(
            path,
            format!("header length {n} is over the limit of {MAX_HEADER} bytes"),
        ));
    }
    let (n, meta) = match SafeTensors::read_metadata(buf) {
        Ok(x) => x,
        Err(e) => return Err(diagnose(path, buf, n as usize, &e.to_string())),
    };
    let data_start = 8 + n;
    let mut out = Vec::new();
    let mut infos: Vec<(String, &::safetensors::tensor::TensorInfo)> =
        meta.tensors().into_iter().collect();
    infos.sort_by_key(|(_, i)| i.data_offsets);
    for (name, info) in infos {
        let Some(dtype) = dtype_of(info.dtype) else {
            return Err(Error::model(
                path,
                format!(
                    "tensor '{name}' has dtype {}, which Fado does not load (supported: {}); \
                     convert the checkpoint to bf16 or f16",
                    info.dtype,
                    supported()
                ),
            ));
        };
        let (s, e) = info.data_offsets;
        let start = data_start.checked_add(s);
        let end = data_start.checked_add(e);
        let (Some(start), Some(end)) = (start, end) else {
            return Err(Error::model(
                path,
                format!("tensor '{name}': data offsets overflow"),
            ));
        };
        let entry = TensorEntry {
            name,
            dtype,
            shape: info.shape.clone(),
        };
        // The crate has checked these; keep the invariants local anyway.
        if end > buf.len() || end - start != entry.nbytes() {
            return Err(Error::model(
                path,
                format!(
                    "tensor '{}' ({} {:?}) needs {} bytes but its data range {s}..{e} holds {} and the file has {}; \
                     the file is corrupt, re-download it",
                    entry.name,
                    entry.dtype,
                    entry.shape,
                    entry.nbytes(),
                    e.saturating_sub(s),
                    buf.len()
                ),
            ));
        }
        out.push((entry, start..end));
    }
    Ok(out)
}

/// The crate rejected the header: find the tensor at fault for a useful message.
fn diagnose(path: &Path, buf: &[u8], n: usize, crate_msg: &str) -> Error {
    let fallback = || Error::model(path, format!("invalid safetensors header: {crate_msg}"));
    let Ok(text) = std::str::from_utf8(&buf[8..8 + n]) else {
        return Error::model(
            path,
            "safetensors header is not valid UTF-8; the file is corrupt, re-download it",
        );
    };
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return Error::model(
            path,
            format!("safetensors header is not a JSON object ({crate_msg}); the file is corrupt, re-download it"),
        );
    };
    let data_len = (buf.len() - 8 - n) as u64;
    for (name, t) in &map {
        if name == "__metadata__" {
            continue;
        }
        if let Some(e) = diagnose_tensor(path, name, t, data_len, crate_msg) {
            return e;
        }
    }
    if crate_msg.contains("MetadataIncompleteBuffer")
        || crate_msg.to_lowercase().contains("incomplete")
    {
        return Error::model(
            path,
            format!(
                "tensor data does not end where the file ends ({data_len} data bytes); the file is truncated or has trailing bytes; re-download it"
            ),
        );
    }
    fallback()
}

/// What is wrong with one tensor of a header the crate rejected, if anything is.
fn diagnose_tensor(
    path: &Path,
    name: &str,
    t: &Value,
    data_len: u64,
    crate_msg: &str,
) -> Option<Error> {
    let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
    let shape: Option<Vec<u64>> = t
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
    let offs: Option<Vec<u64>> = t
        .get("data_offsets")
        .and_then(|s| s.as_array())
        .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
    let (Some(shape), Some(offs)) = (shape, offs) else {
        return Some(Error::model(
            path,
            format!("tensor '{name}': shape or data_offsets missing or malformed ({crate_msg})"),
        ));
    };
    let [s, e] = offs[..] else {
        return Some(Error::model(
            path,
            format!("tensor '{name}': data_offsets is not [begin, end]"),
        ));
    };
    if e > data_len || s > e {
        return Some(Error::model(
            path,
            format!(
                "tensor '{name}' data offsets {s}..{e} lie beyond the data section ({data_len} bytes); \
                 the file is truncated or corrupt, re-download it"
            ),
        ));
    }
    let bytes_per = match dtype {
        "F64" | "I64" | "U64" | "C64" => Some(8u64),
        "F32" | "I32" | "U32" => Some(4),
        "F16" | "BF16" | "I16" | "U16" => Some(2),
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => Some(1),
        _ => None,
    };
    if bytes_per.is_none() {
        // Not a dtype the crate knows (it would have parsed the header otherwise).
        return Some(Error::model(
            path,
            format!(
                "tensor '{name}' has dtype {dtype}, which is not a safetensors dtype Fado loads \
                 (supported: {}); convert the checkpoint to bf16 or f16",
                supported()
            ),
        ));
    }
    let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if let (Some(b), Some(numel)) = (bytes_per, numel) {
        match numel.checked_mul(b) {
            Some(want) if want == e - s => {}
            want => {
                return Some(Error::model(
                    path,
                    format!(
                        "tensor '{name}' ({dtype} {shape:?}) needs {} bytes but its data range {s}..{e} holds {}; \
                         the file is corrupt, re-download it",
                        want.map(|w| w.to_string()).unwrap_or_else(|| "more than 2^64".into()),
                        e - s
                    ),
                ))
            }
        }
    } else if numel.is_none() {
        return Some(Error::model(
            path,
            format!("tensor '{name}': element count of shape {shape:?} overflows"),
        ));
    }
    None
}
