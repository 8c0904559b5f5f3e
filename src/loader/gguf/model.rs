//! A GGUF file as a [`WeightSource`]: tensors under Hugging Face names, llama.cpp's Q/K
//! permutation undone.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::loader::{check_permutable, unpermute_rows, TensorEntry, TensorIndex, WeightSource};

use super::config::llama_config;
use super::names::{gguf_to_hf_name, hf_to_gguf_name, qk_heads};
use super::{GgufFile, MetaValue};

/// Where a tensor's bytes are.
struct Slot {
    /// Index into the file's tensor infos.
    index: usize,
    /// Heads of llama.cpp's Q/K permutation to undo, if any.
    unpermute: Option<usize>,
}

/// A GGUF Llama model: the file, its config, and its tensors under Hugging Face names.
pub struct GgufModel {
    file: GgufFile,
    config: LlamaConfig,
    tensors: TensorIndex<Slot>,
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
        let mut tensors = TensorIndex::with_capacity(file.tensor_infos().len());
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
            let entry = TensorEntry {
                name,
                dtype: info.dtype,
                shape,
            };
            if let Err((e, _)) = tensors.insert(entry, Slot { index, unpermute }) {
                return Err(Error::model(
                    &path,
                    format!("two tensors map to the Hugging Face name '{}'", e.name),
                ));
            }
        }
        Ok(GgufModel {
            file,
            config,
            tensors,
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

    fn slot(&self, name: &str) -> Result<&(TensorEntry, Slot)> {
        self.tensors.find(name).ok_or_else(|| {
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
        self.tensors.entries()
    }
    fn get(&self, name: &str) -> Result<TensorEntry> {
        Ok(self.slot(name)?.0.clone())
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let (entry, slot) = self.slot(name)?;
        let data = self.file.tensor_data(&self.file.tensor_infos()[slot.index]);
        Ok(match slot.unpermute {
            None => Cow::Borrowed(data),
            Some(heads) => {
                let rows = entry.shape[0];
                Cow::Owned(unpermute_rows(data, heads, data.len() / rows))
            }
        })
    }
    fn gguf_metadata(&self) -> Option<&BTreeMap<String, MetaValue>> {
        Some(self.file.metadata())
    }
}
