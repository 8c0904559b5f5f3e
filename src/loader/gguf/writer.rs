//! The GGUF writer: [`write_raw`] writes exactly what it is given; [`write()`] maps Hugging Face
//! names and layout to llama.cpp's.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::loader::{check_permutable, permute_rows, TensorEntry};

use super::names::{hf_to_gguf_name, qk_heads};
use super::reader::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use super::types::ggml_from_dtype;
use super::MetaValue;

/// A tensor for [`write_raw`]: GGUF name, ggml type id, `ne` innermost first, bytes as stored.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    /// GGUF name.
    pub name: String,
    /// ggml type id.
    pub ggml_type: u32,
    /// Dimensions, innermost first.
    pub ne: Vec<u64>,
    /// The bytes as they go into the file.
    pub data: &'a [u8],
}

/// Write a GGUF file exactly as given: `version` (2 or 3), metadata in the given order, tensors
/// with their names and types untouched (no name mapping, no permutation, no size checks —
/// tests use it to build malformed files). Alignment is `general.alignment` if present, else 32;
/// the data section and each tensor start aligned, and each tensor is padded to the alignment.
pub fn write_raw(
    path: impl AsRef<Path>,
    version: u32,
    metadata: &[(String, MetaValue)],
    tensors: &[RawTensor<'_>],
) -> Result<()> {
    let infos: Vec<(&str, u32, &[u64], u64)> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.ggml_type, &t.ne[..], t.data.len() as u64))
        .collect();
    write_raw_streamed(path.as_ref(), version, metadata, &infos, &mut |i| {
        Ok(Cow::Borrowed(tensors[i].data))
    })
}

/// [`write_raw`] with each tensor's bytes produced on demand, in order, by `data(i)` (which must
/// return exactly the size announced in `infos`: name, ggml type, `ne`, bytes), so memory stays
/// near one tensor. The file is written to `PATH.part` and renamed when complete.
fn write_raw_streamed<'d>(
    path: &Path,
    version: u32,
    metadata: &[(String, MetaValue)],
    infos: &[(&str, u32, &[u64], u64)],
    data: &mut dyn FnMut(usize) -> Result<Cow<'d, [u8]>>,
) -> Result<()> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .filter(|a| a.is_power_of_two())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut head = Vec::new();
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&version.to_le_bytes());
    head.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(path, &mut head, k, v)?;
    }
    let mut offset = 0u64;
    for (name, ggml_type, ne, size) in infos {
        put_str(&mut head, name);
        head.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne.iter() {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&ggml_type.to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset += size.div_ceil(alignment) * alignment;
    }
    let pad = |n: u64| ((n.div_ceil(alignment) * alignment) - n) as usize;
    head.resize(head.len() + pad(head.len() as u64), 0);

    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let result = (|| {
        let file = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
        let mut w = std::io::BufWriter::new(file);
        let io = |e| Error::io(&part, e);
        w.write_all(&head).map_err(io)?;
        for (i, (name, _, _, size)) in infos.iter().enumerate() {
            let d = data(i)?;
            if d.len() as u64 != *size {
                return Err(Error::model(
                    path,
                    format!(
                        "tensor '{name}': {} bytes produced, {size} announced in the header",
                        d.len()
                    ),
                ));
            }
            w.write_all(&d).map_err(io)?;
            w.write_all(&vec![0u8; pad(*size)]).map_err(io)?;
        }
        w.flush().map_err(io)
    })();
    match result {
        Ok(()) => std::fs::rename(&part, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            std::fs::remove_file(&part).ok();
            Err(e)
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(path: &Path, out: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(a) => {
            // GGUF arrays are homogeneous; an empty one is written as an array of u32.
            let ety = a.first().map(|e| e.type_id()).unwrap_or(4);
            if let Some(bad) = a.iter().find(|e| e.type_id() != ety) {
                return Err(Error::model(
                    path,
                    format!(
                        "cannot write metadata '{key}': array mixes {} and {}",
                        a[0].type_name(),
                        bad.type_name()
                    ),
                ));
            }
            out.extend_from_slice(&ety.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for e in a {
                put_value(path, out, key, e)?;
            }
        }
    }
    Ok(())
}

/// Write a Llama model as GGUF v3 that llama.cpp reads: tensors given under Hugging Face names
/// and shapes (`[out, in]`) and in Fado's byte layout, written under GGUF names with `ne`
/// innermost first and llama.cpp's Q/K row permutation re-applied (head counts from
/// `llama.attention.head_count(_kv)` in `metadata`). Names with no GGUF counterpart are written
/// as they are. `general.alignment` in `metadata` sets the alignment (default 32).
pub fn write(
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, MetaValue>,
    tensors: &[(TensorEntry, &[u8])],
) -> Result<()> {
    let entries: Vec<TensorEntry> = tensors.iter().map(|(e, _)| e.clone()).collect();
    write_streamed(path, metadata, &entries, &mut |i| {
        Ok(Cow::Borrowed(tensors[i].1))
    })
}

/// [`write()`] with tensor `i`'s bytes (Fado's layout, Hugging Face row order) produced on demand
/// by `data(i)`, in order, so memory stays near one tensor while a model is converted.
pub fn write_streamed<'d>(
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, MetaValue>,
    entries: &[TensorEntry],
    data: &mut dyn FnMut(usize) -> Result<Cow<'d, [u8]>>,
) -> Result<()> {
    let path = path.as_ref();
    let heads = |k: &str| metadata.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    let n_head = heads("llama.attention.head_count");
    let n_head_kv = heads("llama.attention.head_count_kv").or(n_head);

    // Validate every tensor before anything is written.
    let mut infos = Vec::with_capacity(entries.len());
    let mut perms = Vec::with_capacity(entries.len());
    for e in entries {
        let ggml_type = ggml_from_dtype(e.dtype).ok_or_else(|| {
            Error::model(
                path,
                format!(
                    "cannot write tensor '{}': dtype {} has no GGUF type",
                    e.name, e.dtype
                ),
            )
        })?;
        if e.shape.is_empty() || e.shape.len() > MAX_DIMS {
            return Err(Error::model(
                path,
                format!(
                    "cannot write tensor '{}': shape {:?} is not 1..=4-D",
                    e.name, e.shape
                ),
            ));
        }
        let gname = hf_to_gguf_name(&e.name).unwrap_or_else(|| e.name.clone());
        let perm = match qk_heads(&gname, n_head.unwrap_or(0), n_head_kv.unwrap_or(0)) {
            Some((h, key)) => {
                if e.shape.len() != 2 {
                    return Err(Error::model(
                        path,
                        format!(
                            "cannot write tensor '{}': shape {:?} is not 2-D",
                            e.name, e.shape
                        ),
                    ));
                }
                check_permutable(path, &e.name, e.shape[0], h, &format!("llama.{key}"))?;
                Some(h)
            }
            None => None,
        };
        perms.push(perm);
        let ne: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
        infos.push((gname, ggml_type, ne, e.nbytes() as u64));
    }
    let info_refs: Vec<(&str, u32, &[u64], u64)> = infos
        .iter()
        .map(|(n, t, ne, s)| (n.as_str(), *t, &ne[..], *s))
        .collect();
    let md: Vec<(String, MetaValue)> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_raw_streamed(path, 3, &md, &info_refs, &mut |i| {
        let e = &entries[i];
        let d = data(i)?;
        let want = e.nbytes();
        if d.len() != want {
            return Err(Error::model(
                path,
                format!(
                    "cannot write tensor '{}' ({} {:?}): {} bytes given, {want} expected",
                    e.name,
                    e.dtype,
                    e.shape,
                    d.len()
                ),
            ));
        }
        Ok(match perms[i] {
            Some(h) => Cow::Owned(permute_rows(&d, h, d.len() / e.shape[0].max(1))),
            None => d,
        })
    })
}
