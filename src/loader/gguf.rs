//! GGUF v2/v3: reader (memory-mapped), `llama.*` hyperparameters → [`LlamaConfig`], GGUF →
//! Hugging Face tensor names, and a writer.
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::tensor::DType;

use super::{
    check_permutable, map_bytes, map_file, permute_rows, unpermute_rows, TensorEntry, WeightSource,
};

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

/// Name of a ggml type id, for messages.
pub fn ggml_type_name(t: u32) -> String {
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
    match NAMES.get(t as usize) {
        Some(n) => format!("{n} ({t})"),
        None => format!("{t} (no ggml type has this id)"),
    }
}

/// The ggml type id → Fado dtype, for the types Fado runs.
pub fn dtype_from_ggml(t: u32) -> Option<DType> {
    use ggml_type as g;
    Some(match t {
        g::F32 => DType::F32,
        g::F16 => DType::F16,
        g::BF16 => DType::BF16,
        g::Q8_0 => DType::Q8_0,
        g::Q4_0 => DType::Q4_0,
        g::Q4_1 => DType::Q4_1,
        g::Q4_K => DType::Q4K,
        g::Q5_K => DType::Q5K,
        g::Q6_K => DType::Q6K,
        _ => return None,
    })
}

/// Fado dtype → ggml type id (`None` for U32, which GGUF model files do not carry).
pub fn ggml_from_dtype(d: DType) -> Option<u32> {
    use ggml_type as g;
    Some(match d {
        DType::F32 => g::F32,
        DType::F16 => g::F16,
        DType::BF16 => g::BF16,
        DType::Q8_0 => g::Q8_0,
        DType::Q4_0 => g::Q4_0,
        DType::Q4_1 => g::Q4_1,
        DType::Q4K => g::Q4_K,
        DType::Q5K => g::Q5_K,
        DType::Q6K => g::Q6_K,
        DType::U32 => return None,
    })
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K";

// ---------------------------------------------------------------------------------------------
// Metadata values

/// One GGUF metadata value. Type ids: U8 0, I8 1, U16 2, I16 3, U32 4, I32 5, F32 6, Bool 7,
/// String 8, Array 9, U64 10, I64 11, F64 12.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8 (UTF-8).
    String(String),
    /// Type 9: element type, count, elements.
    Array(Vec<MetaValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl MetaValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// The type's name as in GGUF docs (`u32`, `string`, `array`, …), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }

    /// Any integer type as i128 (so every GGUF integer fits).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v as i128,
            MetaValue::I8(v) => v as i128,
            MetaValue::U16(v) => v as i128,
            MetaValue::I16(v) => v as i128,
            MetaValue::U32(v) => v as i128,
            MetaValue::I32(v) => v as i128,
            MetaValue::U64(v) => v as i128,
            MetaValue::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// Any non-negative integer, whatever its width.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer, whatever its width, if it fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// Floats, and integers converted.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The value if it is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value if it is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if it is an `Array`.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Size in bytes of a fixed-size value type, or the least bytes a variable one takes.
    fn min_size(type_id: u32) -> Option<u64> {
        Some(match type_id {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => 8,     // u64 length
            9 => 4 + 8, // element type + count
            _ => return None,
        })
    }
}

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.to_string())
    }
}
impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        MetaValue::String(s)
    }
}
impl From<u32> for MetaValue {
    fn from(v: u32) -> Self {
        MetaValue::U32(v)
    }
}
impl From<f32> for MetaValue {
    fn from(v: f32) -> Self {
        MetaValue::F32(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

/// One tensor as described in the file (GGUF name, ggml type, `ne` innermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// ggml type id (see [`ggml_type`]).
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
            buf.len()
        )));
    }
    if n_tensors.saturating_mul(32) > r.left() {
        return Err(r.err(format!(
            "header claims {n_tensors} tensors but the file has only {} bytes; the file is corrupt or truncated; re-download or re-convert it",
            buf.len()
        )));
    }

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

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
            _ => {
                return Err(r.err(format!(
                    "general.alignment is {v:?}; it must be a power of two up to {MAX_ALIGNMENT}"
                )))
            }
        },
    };

    struct Raw {
        name: String,
        ggml_type: u32,
        dtype: DType,
        ne: Vec<u64>,
        offset: u64,
    }
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
                "tensor '{name}' has type {}, which Fado does not support (supported: {SUPPORTED_TYPES}); \
                 re-quantize the model to one of those",
                ggml_type_name(ggml_type)
            )));
        };
        if !names.insert(name.clone()) {
            return Err(r.err(format!("tensor '{name}' appears twice")));
        }
        raws.push(Raw {
            name,
            ggml_type,
            dtype,
            ne,
            offset,
        });
    }

    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raws.len());
    for t in raws {
        let name = &t.name;
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
        if t.ne[0] % block != 0 {
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
        if t.offset % alignment != 0 {
            return Err(r.err(format!(
                "tensor '{name}' data offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => tensors.push(GgufTensorInfo {
                name: t.name,
                ggml_type: t.ggml_type,
                dtype: t.dtype,
                ne: t.ne,
                file_offset: start,
                size,
            }),
            _ => {
                return Err(r.err(format!(
                    "tensor '{name}' ({} ne = {:?}, {size} bytes) at data offset {} lies beyond the end of the \
                     file ({file_len} bytes); the file is truncated or corrupt; re-download or re-convert it",
                    t.dtype, t.ne, t.offset
                )))
            }
        }
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

// ---------------------------------------------------------------------------------------------
// Names

/// GGUF tensor name → Hugging Face name (`None` for names with no Llama counterpart, which
/// are kept as they are).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let part = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Some(format!("{hf}.{suffix}"))
}

/// Hugging Face tensor name → GGUF name (`None` for names with no GGUF counterpart).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let g = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let part = match part {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => return None,
            };
            format!("blk.{layer}.{part}")
        }
    };
    Some(format!("{g}.{suffix}"))
}

/// Which Q/K permutation a tensor carries in GGUF: the head count used by llama.cpp.
fn qk_heads(gguf_name: &str, n_head: usize, n_head_kv: usize) -> Option<(usize, &'static str)> {
    let stem = gguf_name.strip_suffix(".weight")?;
    if !stem.starts_with("blk.") {
        return None;
    }
    if stem.ends_with(".attn_q") {
        Some((n_head, "attention.head_count"))
    } else if stem.ends_with(".attn_k") {
        Some((n_head_kv, "attention.head_count_kv"))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Hyperparameters

/// Architectures whose GGUF files Fado loads (llama.cpp writes Mistral 7B and friends as `llama`).
const SUPPORTED_ARCHS: &[&str] = &["llama"];

/// `llama.*` metadata (+ tokenizer ids, + the presence of `output.weight` and `rope_freqs.weight`)
/// → [`LlamaConfig`].
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig> {
    let path = file.path();
    let md = file.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            Error::model(
                path,
                "metadata 'general.architecture' is missing or not a string",
            )
        })?;
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(Error::model(
            path,
            format!(
                "architecture '{arch}' is not supported (supported: {})",
                SUPPORTED_ARCHS.join(", ")
            ),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let get = |k: &str| md.get(&key(k));
    let uint = |k: &str| -> Result<Option<usize>> {
        match get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as usize)),
                _ => Err(Error::model(
                    path,
                    format!(
                        "metadata '{}' is {v:?}; expected a non-negative integer",
                        key(k)
                    ),
                )),
            },
        }
    };
    let req = |k: &str| -> Result<usize> {
        uint(k)?.ok_or_else(|| {
            Error::model(
                path,
                format!(
                    "metadata '{}' is missing; the file is not a complete model",
                    key(k)
                ),
            )
        })
    };
    let float = |k: &str| -> Result<Option<f32>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                Error::model(
                    path,
                    format!("metadata '{}' is {v:?}; expected a number", key(k)),
                )
            }),
        }
    };

    let hidden_size = req("embedding_length")?;
    let num_hidden_layers = req("block_count")?;
    let num_attention_heads = req("attention.head_count")?;
    let num_key_value_heads = uint("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let intermediate_size = match get("feed_forward_length") {
        // Some converters write one value per layer.
        Some(MetaValue::Array(a)) => {
            let vals: Vec<Option<u64>> = a.iter().map(|v| v.as_u64()).collect();
            match vals.first() {
                Some(Some(first)) if vals.iter().all(|v| *v == Some(*first)) => *first as usize,
                _ => {
                    return Err(Error::model(
                        path,
                        format!(
                            "metadata '{}' varies per layer; Fado needs one feed-forward size",
                            key("feed_forward_length")
                        ),
                    ))
                }
            }
        }
        _ => req("feed_forward_length")?,
    };
    if num_attention_heads == 0 || num_key_value_heads == 0 || hidden_size == 0 {
        return Err(Error::model(
            path,
            "embedding_length, attention.head_count and attention.head_count_kv must be non-zero",
        ));
    }
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(Error::model(
            path,
            format!(
                "attention.head_count {num_attention_heads} is not a multiple of attention.head_count_kv {num_key_value_heads}"
            ),
        ));
    }
    let head_dim = match uint("attention.key_length")? {
        Some(d) => d,
        None => {
            if hidden_size % num_attention_heads != 0 {
                return Err(Error::model(
                    path,
                    format!(
                        "embedding_length {hidden_size} is not a multiple of attention.head_count {num_attention_heads} \
                         and attention.key_length is missing"
                    ),
                ));
            }
            hidden_size / num_attention_heads
        }
    };
    let rms_norm_eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
    let rope_theta = float("rope.freq_base")?.unwrap_or(10000.0);
    let max_position_embeddings = uint("context_length")?.unwrap_or(2048);

    let mut rope_scaling = RopeScaling::None;
    let scaling_type = get("rope.scaling.type").and_then(|v| v.as_str());
    let factor = float("rope.scaling.factor")?;
    match scaling_type {
        None | Some("none") => {
            // Older files carry only `rope.scale_linear`.
            if let Some(f) = float("rope.scale_linear")? {
                if f != 1.0 {
                    rope_scaling = RopeScaling::Linear { factor: f };
                }
            }
        }
        Some("linear") => {
            let f = factor.ok_or_else(|| {
                Error::model(
                    path,
                    format!(
                        "rope.scaling.type is linear but '{}' is missing",
                        key("rope.scaling.factor")
                    ),
                )
            })?;
            rope_scaling = RopeScaling::Linear { factor: f };
        }
        Some(other) => {
            return Err(Error::model(
                path,
                format!("unsupported rope scaling type {other} (supported: linear, llama3)"),
            ))
        }
    }
    if let Some(info) = file.tensor_info("rope_freqs.weight") {
        if rope_scaling != RopeScaling::None {
            return Err(Error::model(
                path,
                "file has both rope.scaling metadata and a rope_freqs.weight tensor",
            ));
        }
        rope_scaling = llama3_from_rope_freqs(file, info, rope_theta, head_dim)?;
    }

    let vocab_size = match md.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(t) => t.len(),
        None => match uint("vocab_size")? {
            Some(v) => v,
            None => file
                .tensor_info("token_embd.weight")
                .map(|t| t.ne.get(1).copied().unwrap_or(0) as usize)
                .ok_or_else(|| {
                    Error::model(
                        path,
                        "vocabulary size unknown: no tokenizer.ggml.tokens, llama.vocab_size or token_embd.weight",
                    )
                })?,
        },
    };

    let tok_id = |k: &str| -> Result<Option<u32>> {
        match md.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as u32)),
                _ => Err(Error::model(
                    path,
                    format!("metadata '{k}' is {v:?}; expected a token id"),
                )),
            },
        }
    };
    let bos_token_id = tok_id("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = tok_id(k)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        bos_token_id,
        eos_token_ids,
    })
}

/// The per-frequency divisors llama.cpp stores in `rope_freqs.weight` for Llama 3 scaling.
pub fn llama3_rope_factors(
    theta: f32,
    head_dim: usize,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_position_embeddings: usize,
) -> Vec<f32> {
    let base = LlamaConfig {
        head_dim,
        rope_theta: theta,
        rope_scaling: RopeScaling::None,
        ..dummy_config()
    };
    let scaled = LlamaConfig {
        rope_scaling: RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        },
        ..base.clone()
    };
    base.rope_inv_freq()
        .iter()
        .zip(scaled.rope_inv_freq())
        .map(|(b, s)| b / s)
        .collect()
}

fn dummy_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_hidden_layers: 0,
        num_attention_heads: 0,
        num_key_value_heads: 0,
        head_dim: 0,
        rms_norm_eps: 0.0,
        rope_theta: 0.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 0,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// llama.cpp bakes Llama 3's RoPE scaling into a `rope_freqs.weight` tensor of per-frequency
/// divisors instead of metadata. Recover the parameters by matching the tensor against the
/// Llama 3 formula for the usual parameter values (only the two wavelength thresholds
/// `original / low_freq_factor` and `original / high_freq_factor` matter).
fn llama3_from_rope_freqs(
    file: &GgufFile,
    info: &GgufTensorInfo,
    theta: f32,
    head_dim: usize,
) -> Result<RopeScaling> {
    let path = file.path();
    if info.dtype != DType::F32 || info.ne.len() != 1 || info.ne[0] as usize != head_dim / 2 {
        return Err(Error::model(
            path,
            format!(
                "rope_freqs.weight is {} ne = {:?}; expected f32 [{}] (head_dim / 2)",
                info.dtype,
                info.ne,
                head_dim / 2
            ),
        ));
    }
    let got: Vec<f32> = file
        .tensor_data(info)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if got.iter().all(|&f| (f - 1.0).abs() < 1e-6) {
        return Ok(RopeScaling::None);
    }
    let factor = got.iter().fold(0f32, |m, &v| m.max(v));
    let matches = |want: &[f32]| {
        want.iter()
            .zip(&got)
            .all(|(w, g)| (w - g).abs() <= 1e-4 * w.abs().max(1.0))
    };
    for orig in [8192usize, 4096, 2048, 16384, 32768, 65536, 131072] {
        for (lff, hff) in [(1.0f32, 4.0f32), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)] {
            let want = llama3_rope_factors(theta, head_dim, factor, lff, hff, orig);
            if matches(&want) {
                return Ok(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: lff,
                    high_freq_factor: hff,
                    original_max_position_embeddings: orig,
                });
            }
        }
    }
    Err(Error::model(
        path,
        "rope_freqs.weight does not match Llama 3 RoPE scaling with the usual parameters; \
         unsupported rope scaling (supported: linear, llama3)",
    ))
}

/// [`LlamaConfig`] → `llama.*` and tokenizer-id metadata, as llama.cpp writes it. Llama 3 RoPE
/// scaling is not metadata in GGUF: pass the tensor from [`rope_freqs_tensor`] to the writer.
pub fn config_metadata(cfg: &LlamaConfig) -> BTreeMap<String, MetaValue> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: MetaValue| {
        m.insert(k.to_string(), v);
    };
    put("general.architecture", "llama".into());
    put(
        "llama.context_length",
        MetaValue::U32(cfg.max_position_embeddings as u32),
    );
    put(
        "llama.embedding_length",
        MetaValue::U32(cfg.hidden_size as u32),
    );
    put(
        "llama.block_count",
        MetaValue::U32(cfg.num_hidden_layers as u32),
    );
    put(
        "llama.feed_forward_length",
        MetaValue::U32(cfg.intermediate_size as u32),
    );
    put(
        "llama.attention.head_count",
        MetaValue::U32(cfg.num_attention_heads as u32),
    );
    put(
        "llama.attention.head_count_kv",
        MetaValue::U32(cfg.num_key_value_heads as u32),
    );
    put(
        "llama.attention.key_length",
        MetaValue::U32(cfg.head_dim as u32),
    );
    put(
        "llama.attention.value_length",
        MetaValue::U32(cfg.head_dim as u32),
    );
    put(
        "llama.rope.dimension_count",
        MetaValue::U32(cfg.head_dim as u32),
    );
    put(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(cfg.rms_norm_eps),
    );
    put("llama.rope.freq_base", MetaValue::F32(cfg.rope_theta));
    put("llama.vocab_size", MetaValue::U32(cfg.vocab_size as u32));
    if let RopeScaling::Linear { factor } = cfg.rope_scaling {
        put("llama.rope.scaling.type", "linear".into());
        put("llama.rope.scaling.factor", MetaValue::F32(factor));
    }
    if let Some(b) = cfg.bos_token_id {
        put("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(&e) = cfg.eos_token_ids.first() {
        put("tokenizer.ggml.eos_token_id", MetaValue::U32(e));
    }
    if let Some(&e) = cfg.eos_token_ids.get(1) {
        put("tokenizer.ggml.eot_token_id", MetaValue::U32(e));
    }
    m
}

/// The `rope_freqs.weight` tensor llama.cpp writes for Llama 3 RoPE scaling (f32 bytes), if the
/// config uses it.
pub fn rope_freqs_tensor(cfg: &LlamaConfig) -> Option<(TensorEntry, Vec<u8>)> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = cfg.rope_scaling
    else {
        return None;
    };
    let f = llama3_rope_factors(
        cfg.rope_theta,
        cfg.head_dim,
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    );
    let entry = TensorEntry {
        name: "rope_freqs.weight".into(),
        dtype: DType::F32,
        shape: vec![f.len()],
    };
    Some((entry, f.iter().flat_map(|v| v.to_le_bytes()).collect()))
}

// ---------------------------------------------------------------------------------------------
// Model (WeightSource)

struct Slot {
    entry: TensorEntry,
    /// Index into the file's tensor infos.
    index: usize,
    /// Heads of llama.cpp's Q/K permutation to undo, if any.
    unpermute: Option<usize>,
}

/// A GGUF Llama model: the file, its config, and its tensors under Hugging Face names.
pub struct GgufModel {
    file: GgufFile,
    config: LlamaConfig,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
}

impl GgufModel {
    /// Open a GGUF file as a model: metadata → config, tensors under Hugging Face names.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        Self::from_file(GgufFile::open(path)?)
    }

    /// A model over an already parsed file.
    pub fn from_file(file: GgufFile) -> Result<GgufModel> {
        let config = llama_config(&file)?;
        let path = file.path().to_path_buf();
        let mut slots = Vec::with_capacity(file.tensor_infos().len());
        let mut by_name = HashMap::new();
        for (index, info) in file.tensor_infos().iter().enumerate() {
            let name = gguf_to_hf_name(&info.name).unwrap_or_else(|| info.name.clone());
            let shape = info.shape();
            let unpermute = match qk_heads(
                &info.name,
                config.num_attention_heads,
                config.num_key_value_heads,
            ) {
                Some((heads, key)) => {
                    if shape.len() != 2 {
                        return Err(Error::model(
                            &path,
                            format!("tensor '{}' has shape {shape:?}; expected 2-D", info.name),
                        ));
                    }
                    check_permutable(&path, &info.name, shape[0], heads, key)?;
                    Some(heads)
                }
                None => None,
            };
            if by_name.insert(name.clone(), slots.len()).is_some() {
                return Err(Error::model(
                    &path,
                    format!("two tensors map to the Hugging Face name '{name}'"),
                ));
            }
            slots.push(Slot {
                entry: TensorEntry {
                    name,
                    dtype: info.dtype,
                    shape,
                },
                index,
                unpermute,
            });
        }
        Ok(GgufModel {
            file,
            config,
            slots,
            by_name,
        })
    }

    /// The parsed file underneath.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Its metadata.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        self.file.metadata()
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        self.by_name
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| {
                let gguf = hf_to_gguf_name(name)
                    .map(|g| format!(" (GGUF name '{g}')"))
                    .unwrap_or_default();
                Error::model(
                    self.file.path(),
                    format!("tensor '{name}'{gguf} is not in the file"),
                )
            })
    }
}

impl WeightSource for GgufModel {
    fn path(&self) -> &Path {
        self.file.path()
    }
    fn format(&self) -> &'static str {
        "gguf"
    }
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn tensors(&self) -> Vec<TensorEntry> {
        self.slots.iter().map(|s| s.entry.clone()).collect()
    }
    fn get(&self, name: &str) -> Result<TensorEntry> {
        Ok(self.slot(name)?.entry.clone())
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let slot = self.slot(name)?;
        let data = self.file.tensor_data(&self.file.tensor_infos()[slot.index]);
        Ok(match slot.unpermute {
            None => Cow::Borrowed(data),
            Some(heads) => {
                let rows = slot.entry.shape[0];
                Cow::Owned(unpermute_rows(data, heads, data.len() / rows))
            }
        })
    }
    fn gguf_metadata(&self) -> Option<&BTreeMap<String, MetaValue>> {
        Some(self.file.metadata())
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

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
