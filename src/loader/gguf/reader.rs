//! The GGUF reader: every count and length checked against the bytes left in the file (and a
//! cap) before anything is allocated, every tensor inside the file at an aligned offset.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensor::DType;

use super::types::{dtype_from_ggml, ggml_type_name, supported_types};
use super::MetaValue;
use crate::loader::{map_bytes, map_file};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Longest metadata key or tensor name accepted.
const MAX_NAME_LEN: u64 = 1 << 16;
/// Longest metadata string (chat templates are tens of KiB).
const MAX_STRING_LEN: u64 = 1 << 28;
/// Most elements in one metadata array (the largest vocabularies are ~256k tokens).
const MAX_ARRAY_LEN: u64 = 1 << 22;
/// Most metadata values in a file, arrays' elements included (bounds the parsed metadata to
/// a few hundred MiB whatever the file claims).
const MAX_META_VALUES: u64 = 1 << 23;
/// Arrays of arrays deeper than this are refused.
const MAX_NESTING: usize = 4;
/// Largest accepted `general.alignment`.
const MAX_ALIGNMENT: u64 = 1 << 16;

/// One tensor as described in the file (GGUF name, ggml type, `ne` innermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// ggml type id (see [`ggml_type`](super::ggml_type)).
    pub ggml_type: u32,
    /// The same type as a Fado dtype.
    pub dtype: DType,
    /// Dimensions, innermost first (`ne[0]` = columns = in-features).
    pub ne: Vec<u64>,
    /// Absolute byte offset of the data in the file.
    pub file_offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (Hugging Face orientation).
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// True if the file starts with the GGUF magic.
pub fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == MAGIC
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// What is being read, for messages.
    what: String,
    /// Metadata values left before MAX_META_VALUES.
    values_left: u64,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::model(self.path, msg.to_string())
    }

    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(format!(
                "file is truncated: reading {} needs {n} bytes at offset {} but the file has {} bytes; \
                 re-download or re-convert it",
                self.what,
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn string(&mut self, cap: u64) -> Result<String> {
        let len = self.u64()?;
        if len > cap {
            return Err(self.err(format!(
                "{}: string length {len} is over the limit of {cap} bytes; the file is corrupt; re-download or re-convert it",
                self.what
            )));
        }
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.err(format!(
                "{}: string at offset {} is not valid UTF-8",
                self.what,
                self.pos - len as usize
            ))),
        }
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        if self.values_left == 0 {
            return Err(self.err(format!(
                "{}: more than {MAX_META_VALUES} metadata values; the file is corrupt; re-download or re-convert it",
                self.what
            )));
        }
        self.values_left -= 1;
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>()?[0]),
            1 => MetaValue::I8(self.arr::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("{}: bool byte is {b}, not 0 or 1", self.what))),
            },
            8 => MetaValue::String(self.string(MAX_STRING_LEN)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.err(format!(
                        "{}: arrays nested deeper than {MAX_NESTING} levels; the file is corrupt; re-download or re-convert it",
                        self.what
                    )));
                }
                let ety = self.u32()?;
                let Some(min) = MetaValue::min_size(ety) else {
                    return Err(self.err(format!(
                        "{}: array element type {ety} is not a GGUF value type (0..=12)",
                        self.what
                    )));
                };
                let n = self.u64()?;
                if n > MAX_ARRAY_LEN {
                    return Err(self.err(format!(
                        "{}: array length {n} is over the limit of {MAX_ARRAY_LEN}; the file is corrupt; re-download or re-convert it",
                        self.what
                    )));
                }
                if n.saturating_mul(min) > self.left() {
                    return Err(self.err(format!(
                        "{}: array of {n} elements needs at least {} bytes but only {} are left in the file; \
                         the file is truncated or corrupt; re-download or re-convert it",
                        self.what,
                        n.saturating_mul(min),
                        self.left()
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr()?)),
            t => {
                return Err(self.err(format!(
                    "{}: unknown metadata value type {t} (GGUF types are 0..=12)",
                    self.what
                )))
            }
        })
    }
}

impl GgufFile {
    /// Parse and memory-map a GGUF file. Checks the whole structure; tensor data is not read.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        Self::from_map(path, map_file(path)?)
    }

    /// Parse GGUF bytes already in memory (copied into an anonymous map); `label` stands for the
    /// file name in messages. Same checks as [`open`](Self::open).
    pub fn from_bytes(label: impl AsRef<Path>, bytes: &[u8]) -> Result<GgufFile> {
        let label = label.as_ref();
        Self::from_map(label, map_bytes(label, bytes)?)
    }

    fn from_map(path: &Path, mmap: memmap2::Mmap) -> Result<GgufFile> {
        let parsed = parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Alignment of the tensor data.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// All metadata key/values (`general.*`, `llama.*`, `tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }
    /// One metadata value by key.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
    /// Tensor descriptions in file order, GGUF names.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    /// One tensor's description by GGUF name.
    pub fn tensor_info(&self, gguf_name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == gguf_name)
    }
    /// The raw bytes of a tensor as stored (no permutation undone).
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> &[u8] {
        // Bounds were checked at open.
        &self.mmap[info.file_offset as usize..(info.file_offset + info.size) as usize]
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
}

fn parse(path: &Path, buf: &[u8]) -> Result<Parsed> {
    let mut r = Reader {
        buf,
        pos: 0,
        path,
        what: "the GGUF magic".into(),
        values_left: MAX_META_VALUES,
    };
    let (version, n_tensors, n_kv) = read_header(&mut r)?;
    let metadata = read_metadata(&mut r, n_kv)?;
    let alignment = alignment(&r, &metadata)?;
    let raws = read_tensor_infos(&mut r, n_tensors)?;
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    let tensors = raws
        .into_iter()
        .map(|t| place_tensor(&r, t, data_offset, alignment))
        .collect::<Result<_>>()?;
    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

/// Magic, version, tensor count and metadata count; the counts checked against the file size.
fn read_header(r: &mut Reader<'_>) -> Result<(u32, u64, u64)> {
    let magic = r.arr::<4>()?;
    if &magic != MAGIC {
        return Err(r.err(format!(
            "not a GGUF file: it starts with {magic:02x?}, expected \"GGUF\""
        )));
    }
    r.what = "the GGUF version".into();
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(r.err(
                "GGUF version 1 is not supported (only 2 and 3); re-convert the model with a current llama.cpp",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(r.err(
                "big-endian GGUF files are not supported; use the little-endian file of this model",
            ))
        }
        v => {
            return Err(r.err(format!(
                "unsupported GGUF version {v} (supported: 2, 3)"
            )))
        }
    }
    r.what = "the tensor count".into();
    let n_tensors = r.u64()?;
    r.what = "the metadata count".into();
    let n_kv = r.u64()?;
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at
    // least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset) bytes.
    if n_kv.saturating_mul(13) > r.left() {
        return Err(r.err(format!(
            "header claims {n_kv} metadata entries but the file has only {} bytes; the file is corrupt or truncated; re-download or re-convert it",
            r.buf.len()
        )));
    }
    if n_tensors.saturating_mul(32) > r.left() {
        return Err(r.err(format!(
            "header claims {n_tensors} tensors but the file has only {} bytes; the file is corrupt or truncated; re-download or re-convert it",
            r.buf.len()
        )));
    }
    Ok((version, n_tensors, n_kv))
}

fn read_metadata(r: &mut Reader<'_>, n_kv: u64) -> Result<BTreeMap<String, MetaValue>> {
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        r.what = format!("metadata entry #{i}'s key");
        let key = r.string(MAX_NAME_LEN)?;
        r.what = format!("metadata '{key}'");
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(r.err(format!("metadata key '{key}' appears twice")));
        }
    }
    Ok(metadata)
}

/// `general.alignment`, or the default.
fn alignment(r: &Reader<'_>, metadata: &BTreeMap<String, MetaValue>) -> Result<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
            _ => Err(r.err(format!(
                "general.alignment is {v:?}; it must be a power of two up to {MAX_ALIGNMENT}"
            ))),
        },
    }
}

/// A tensor info as read, before its size and place are checked.
struct RawInfo {
    name: String,
    ggml_type: u32,
    dtype: DType,
    ne: Vec<u64>,
    offset: u64,
}

fn read_tensor_infos(r: &mut Reader<'_>, n_tensors: u64) -> Result<Vec<RawInfo>> {
    let mut raws = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        r.what = format!("tensor info #{i}'s name");
        let name = r.string(MAX_NAME_LEN)?;
        r.what = format!("tensor '{name}' info");
        let n_dims = r.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "tensor '{name}' has {n_dims} dimensions (GGUF allows 1..={MAX_DIMS})"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(r.u64()?);
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        let Some(dtype) = dtype_from_ggml(ggml_type) else {
            return Err(r.err(format!(
                "tensor '{name}' has type {}, which Fado does not support (supported: {}); \
                 re-quantize the model to one of those",
                ggml_type_name(ggml_type),
                supported_types()
            )));
        };
        if !names.insert(name.clone()) {
            return Err(r.err(format!("tensor '{name}' appears twice")));
        }
        raws.push(RawInfo {
            name,
            ggml_type,
            dtype,
            ne,
            offset,
        });
    }
    Ok(raws)
}

/// A tensor's byte size (whole blocks, no overflow) and absolute place, inside the file.
fn place_tensor(
    r: &Reader<'_>,
    t: RawInfo,
    data_offset: u64,
    alignment: u64,
) -> Result<GgufTensorInfo> {
    let name = &t.name;
    let file_len = r.buf.len() as u64;
    let mut numel: u64 = 1;
    for &d in &t.ne {
        if d == 0 {
            return Err(r.err(format!(
                "tensor '{name}' has a zero dimension: ne = {:?}",
                t.ne
            )));
        }
        numel = numel.checked_mul(d).ok_or_else(|| {
            r.err(format!(
                "tensor '{name}': element count of ne = {:?} overflows 64 bits; the file is corrupt; re-download or re-convert it",
                t.ne
            ))
        })?;
    }
    let block = t.dtype.block_len() as u64;
    if !t.ne[0].is_multiple_of(block) {
        return Err(r.err(format!(
            "tensor '{name}' ({}) has rows of {} elements, not a multiple of the {block}-element block",
            t.dtype, t.ne[0]
        )));
    }
    let size = (numel / block)
        .checked_mul(t.dtype.block_bytes() as u64)
        .ok_or_else(|| {
            r.err(format!(
                "tensor '{name}': byte size of ne = {:?} overflows 64 bits; the file is corrupt; re-download or re-convert it",
                t.ne
            ))
        })?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(r.err(format!(
            "tensor '{name}' data offset {} is not a multiple of the alignment {alignment}",
            t.offset
        )));
    }
    let start = data_offset.checked_add(t.offset);
    let end = start.and_then(|s| s.checked_add(size));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok(GgufTensorInfo {
            name: t.name,
            ggml_type: t.ggml_type,
            dtype: t.dtype,
            ne: t.ne,
            file_offset: start,
            size,
        }),
        _ => Err(r.err(format!(
            "tensor '{name}' ({} ne = {:?}, {size} bytes) at data offset {} lies beyond the end of the \
             file ({file_len} bytes); the file is truncated or corrupt; re-download or re-convert it",
            t.dtype, t.ne, t.offset
        ))),
    }
}
