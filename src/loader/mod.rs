//! Model file loaders. Whatever the format, a model is a [`LlamaConfig`] plus a set of named
//! tensors with Hugging Face names (`model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, …, `model.norm.weight`, `lm_head.weight`) in
//! Hugging Face orientation (`[out, in]`, row-major). Format details — GGUF tensor names,
//! GGUF's innermost-first dimensions, llama.cpp's Q/K row permutation — stay in this module.
//!
//! - [`gguf`]: GGUF v2/v3 reader and writer (memory-mapped).
//! - [`safetensors`]: one `.safetensors` file or a sharded set with `model.safetensors.index.json`.
//! - [`hf_config`]: `config.json` + `generation_config.json` → [`LlamaConfig`].
//!
//! Every size read from a file is checked against the file length and sane caps before
//! anything is allocated; errors are [`Error::Model`] naming the file, the tensor or field, and
//! what to do.

#![warn(missing_docs)]

pub mod gguf;
pub mod hf_config;
pub mod safetensors;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::tensor::{DType, TensorDesc};

pub use gguf::{GgufFile, GgufModel, MetaValue};
pub use safetensors::SafetensorsModel;

/// One tensor of a model: its Hugging Face name, element type and shape (`[out, in]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorEntry {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Element type as stored.
    pub dtype: DType,
    /// Shape, outermost first (`[out, in]` for linear weights).
    pub shape: Vec<usize>,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the tensor's data as stored in the file (and as returned by
    /// [`WeightSource::bytes`]), without any padding.
    pub fn nbytes(&self) -> usize {
        self.dtype.bytes_for(self.numel())
    }

    /// The tensor's [`TensorDesc`].
    pub fn desc(&self) -> TensorDesc {
        TensorDesc::new(self.dtype, self.shape.clone())
    }
}

/// A progress hook: called with (bytes done, bytes total) as tensors are visited.
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// A loaded model file (or folder): its hyperparameters and its tensors under Hugging Face names.
pub trait WeightSource: Send + Sync {
    /// The file or folder this was opened from.
    fn path(&self) -> &Path;

    /// "gguf" or "safetensors".
    fn format(&self) -> &'static str;

    /// The model's hyperparameters.
    fn config(&self) -> &LlamaConfig;

    /// All tensors, in file order (so visiting them in order reads the files sequentially).
    fn tensors(&self) -> Vec<TensorEntry>;

    /// One tensor's description; an error naming the tensor and the file if it is absent.
    fn get(&self, name: &str) -> Result<TensorEntry>;

    /// The tensor's raw bytes in Fado's GPU layout for its dtype: f32/f16/bf16 little-endian,
    /// block-quantized types as their GGUF blocks (byte-exact), rows in Hugging Face order.
    /// Borrowed from the memory map when no conversion is needed.
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>>;

    /// GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`, …) when the source is a
    /// GGUF file.
    fn gguf_metadata(&self) -> Option<&BTreeMap<String, MetaValue>> {
        None
    }

    /// The folder holding `tokenizer.json` and friends for Hugging Face models.
    fn hf_dir(&self) -> Option<&Path> {
        None
    }

    /// Total bytes of all tensors.
    fn total_bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.nbytes() as u64).sum()
    }

    /// Visit every tensor in file order with its bytes, reporting progress after each one.
    fn for_each_tensor(
        &self,
        progress: Option<Progress<'_>>,
        f: &mut dyn FnMut(&TensorEntry, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let entries = self.tensors();
        let total: u64 = entries.iter().map(|t| t.nbytes() as u64).sum();
        let mut done = 0u64;
        if let Some(p) = progress {
            p(0, total);
        }
        for e in &entries {
            let b = self.bytes(&e.name)?;
            f(e, &b)?;
            done += e.nbytes() as u64;
            if let Some(p) = progress {
                p(done, total);
            }
        }
        Ok(())
    }
}

/// Open a model, picking the format from the path:
/// - a `.gguf` file;
/// - a folder with `config.json` and `model.safetensors` or `model.safetensors.index.json`
///   (or a folder holding exactly one `.gguf` file);
/// - a single `.safetensors` file with a `config.json` next to it.
pub fn open(path: impl AsRef<Path>) -> Result<Box<dyn WeightSource>> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::model(
            path,
            "no such file or folder; check the path given to --model",
        ),
        _ => Error::io(path, e),
    })?;
    if meta.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(Box::new(SafetensorsModel::open_dir(path)?));
        }
        let ggufs = gguf_files_in(path)?;
        return match ggufs.as_slice() {
            [one] => Ok(Box::new(GgufModel::open(one)?)),
            [] => Err(Error::model(
                path,
                "not a model folder: no config.json (Hugging Face safetensors model) and no .gguf file",
            )),
            many => Err(Error::model(
                path,
                format!(
                    "folder holds {} .gguf files and no config.json; pass the .gguf file to load",
                    many.len()
                ),
            )),
        };
    }
    match extension(path).as_deref() {
        Some("gguf") => Ok(Box::new(GgufModel::open(path)?)),
        Some("safetensors") => Ok(Box::new(SafetensorsModel::open_file(path)?)),
        Some("json") if path.file_name().is_some_and(|n| n == "config.json") => {
            let dir = path.parent().unwrap_or(Path::new("."));
            Ok(Box::new(SafetensorsModel::open_dir(dir)?))
        }
        _ => {
            // Not named like a model file: sniff the GGUF magic.
            if gguf::has_gguf_magic(path) {
                Ok(Box::new(GgufModel::open(path)?))
            } else {
                Err(Error::model(
                    path,
                    "unknown model format: expected a .gguf file, a .safetensors file, or a folder with config.json",
                ))
            }
        }
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

fn gguf_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.is_file() && extension(&p).as_deref() == Some("gguf") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Map a file into memory.
///
/// Safety: the map is valid as long as nobody truncates or rewrites the file while it is open;
/// that is the usual contract of memory-mapped model loaders (llama.cpp, safetensors).
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::model(
            path,
            "file is empty (0 bytes); re-download it",
        ));
    }
    // SAFETY: see above; the file is opened read-only and the map is never written.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Copy bytes into an anonymous read-only memory map, so parsers written against a file map can
/// also take bytes already in memory (tests, fuzzing, downloads). Empty input is refused like an
/// empty file.
pub(crate) fn map_bytes(label: &Path, bytes: &[u8]) -> Result<memmap2::Mmap> {
    if bytes.is_empty() {
        return Err(Error::model(
            label,
            "file is empty (0 bytes); re-download it",
        ));
    }
    let mut m = memmap2::MmapMut::map_anon(bytes.len()).map_err(|e| Error::io(label, e))?;
    m.copy_from_slice(bytes);
    m.make_read_only().map_err(|e| Error::io(label, e))
}

/// llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of
/// the Q and K projections so that each head's rotary pairs are interleaved (GPT-J style
/// `(x0, x1), (x2, x3), …`) instead of Hugging Face's rotate-half halves. It reshapes the rows
/// to `(n_head, 2, head_dim/2)`, swaps the last two axes and flattens:
/// GGUF row `h·hd + 2j + t` holds Hugging Face row `h·hd + t·hd/2 + j`.
///
/// [`unpermute_rows`] undoes it (GGUF → HF); [`permute_rows`] applies it (HF → GGUF). Both move
/// whole rows of `row_bytes` bytes, so they work for quantized blocks too (blocks never
/// straddle rows). `data.len()` must be `rows · row_bytes` with `rows` divisible by
/// `2·n_head`; callers check.
pub fn unpermute_rows(data: &[u8], n_head: usize, row_bytes: usize) -> Vec<u8> {
    permute_impl(data, n_head, row_bytes, false)
}

/// The inverse of [`unpermute_rows`]: Hugging Face row order → llama.cpp's GGUF order.
pub fn permute_rows(data: &[u8], n_head: usize, row_bytes: usize) -> Vec<u8> {
    permute_impl(data, n_head, row_bytes, true)
}

fn permute_impl(data: &[u8], n_head: usize, row_bytes: usize, to_gguf: bool) -> Vec<u8> {
    let rows = data.len() / row_bytes.max(1);
    let hd = rows / n_head.max(1);
    let half = hd / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for t in 0..2 {
            for j in 0..half {
                let hf = h * hd + t * half + j;
                let gg = h * hd + 2 * j + t;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Check that a tensor with `rows` rows can carry llama.cpp's Q/K permutation for `n_head` heads.
pub(crate) fn check_permutable(
    path: &Path,
    name: &str,
    rows: usize,
    n_head: usize,
    heads_key: &str,
) -> Result<()> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(Error::model(
            path,
            format!(
                "tensor '{name}' has {rows} rows, which is not {n_head} heads ({heads_key}) of an even head size; \
                 the file's head counts do not match its tensors"
            ),
        ));
    }
    Ok(())
}

/// How one config format names the attention geometry, for messages.
pub(crate) struct HeadKeys {
    /// The hidden size's key.
    pub hidden: &'static str,
    /// The query head count's key.
    pub heads: &'static str,
    /// The key/value head count's key.
    pub kv_heads: &'static str,
    /// What to say when the head size is not given.
    pub head_dim_absent: &'static str,
}

/// The head size, by the rule every config format shares: query heads must be a multiple of
/// key/value heads, and without an explicit head size (`given`, read only once the counts
/// check out) it is hidden / heads, which must divide. `counts` is (hidden, heads, kv heads),
/// the head counts non-zero.
pub(crate) fn head_dim(
    path: &Path,
    keys: &HeadKeys,
    (hidden, heads, kv_heads): (usize, usize, usize),
    given: impl FnOnce() -> Result<Option<usize>>,
) -> Result<usize> {
    if !heads.is_multiple_of(kv_heads) {
        return Err(Error::model(
            path,
            format!(
                "{} {heads} is not a multiple of {} {kv_heads}",
                keys.heads, keys.kv_heads
            ),
        ));
    }
    match given()? {
        Some(d) => Ok(d),
        None if !hidden.is_multiple_of(heads) => Err(Error::model(
            path,
            format!(
                "{} {hidden} is not a multiple of {} {heads} and {}",
                keys.hidden, keys.heads, keys.head_dim_absent
            ),
        )),
        None => Ok(hidden / heads),
    }
}

/// A model's tensors under their Hugging Face names, in file order, each with where its bytes
/// are (`L`, the loader's own): the lookup every loader shares.
pub(crate) struct TensorIndex<L> {
    slots: Vec<(TensorEntry, L)>,
    by_name: HashMap<String, usize>,
}

impl<L> TensorIndex<L> {
    /// An empty index with room for `n` tensors.
    pub fn with_capacity(n: usize) -> Self {
        TensorIndex {
            slots: Vec::with_capacity(n),
            by_name: HashMap::with_capacity(n),
        }
    }

    /// Adds a tensor after the others; if its name is taken, nothing is added and the tensor
    /// already there is returned.
    pub fn insert(
        &mut self,
        entry: TensorEntry,
        at: L,
    ) -> std::result::Result<(), &(TensorEntry, L)> {
        if let Some(&i) = self.by_name.get(&entry.name) {
            return Err(&self.slots[i]);
        }
        self.by_name.insert(entry.name.clone(), self.slots.len());
        self.slots.push((entry, at));
        Ok(())
    }

    /// The tensor called `name` and where it is.
    pub fn find(&self, name: &str) -> Option<&(TensorEntry, L)> {
        self.by_name.get(name).map(|&i| &self.slots[i])
    }

    /// Every tensor, in file order.
    pub fn entries(&self) -> Vec<TensorEntry> {
        self.slots.iter().map(|(e, _)| e.clone()).collect()
    }
}
