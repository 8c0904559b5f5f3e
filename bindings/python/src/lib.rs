//! `fado._fado`: the native half of Fado's Python package (the Python half, `python/fado/`,
//! gives it its public shape). A thin layer over the Rust library: models, sessions and
//! `fado::generate::generate_text_reusing`, as `fado run` uses.
//!
//! The GIL is released while the GPU works; a generating thread re-takes it only to check
//! for Ctrl-C (`KeyboardInterrupt`), which stops generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use fado_core::chat_template::Message;
use fado_core::generate::{encode_chat, encode_raw, generate_text_reusing, TextRequest};
use fado_core::gpu::{GpuContext, GpuOptions};
use fado_core::model::{Model, ModelOptions};
use fado_core::sampling::SamplingParams;
use fado_core::session::{KvType, Session, SessionOptions};
use fado_core::tensor::DType;

create_exception!(
    _fado,
    FadoError,
    PyException,
    "An error from Fado: a model that cannot be read, a bad argument, a GPU failure."
);

fn err(e: impl std::fmt::Display) -> PyErr {
    FadoError::new_err(e.to_string())
}

/// A session behind a lock: one generation at a time per session.
type SharedSession = Arc<Mutex<Session>>;

fn lock(s: &SharedSession) -> std::sync::MutexGuard<'_, Session> {
    // A panic while generating poisons the lock; the session's state is still consistent
    // (the next call re-prefills what it needs), so keep using it.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loaded weights, tokenizer and chat template; shared by its sessions.
#[pyclass(frozen, module = "fado._fado")]
struct NativeModel {
    model: Arc<Model>,
    kv_type: KvType,
}

#[pymethods]
impl NativeModel {
    #[getter]
    fn name(&self) -> String {
        self.model.name.clone()
    }
    #[getter]
    fn adapter(&self) -> String {
        self.model.ctx.adapter_name()
    }
    #[getter]
    fn context_length(&self) -> usize {
        self.model.config.max_position_embeddings
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.tokenizer.vocab_size()
    }
    #[getter]
    fn kv_type(&self) -> &'static str {
        self.kv_type.name()
    }

    /// A new session (its own KV cache) with room for `ctx` tokens (0: the model's context,
    /// at most 4096).
    fn new_session(&self, ctx: usize) -> PyResult<NativeSession> {
        let ctx = match ctx {
            0 => self.model.config.max_position_embeddings.clamp(1, 4096),
            n => n,
        };
        let opts = SessionOptions {
            ctx,
            kv_type: self.kv_type,
        };
        let session = Session::with_options(self.model.clone(), opts).map_err(err)?;
        Ok(NativeSession {
            session: Arc::new(Mutex::new(session)),
        })
    }

    /// Token ids of `text` (with BOS when `add_special` and the model adds one).
    fn tokenize(&self, text: &str, add_special: bool) -> PyResult<Vec<u32>> {
        self.model.tokenizer.encode(text, add_special).map_err(err)
    }

    /// Text of `ids`, special tokens included.
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        let vocab = self.model.tokenizer.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(err(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(self.model.tokenizer.decode_with(&ids, false))
    }

    /// Prompt ids: raw text, or with `chat` one user message through the chat template.
    fn encode_prompt(&self, prompt: &str, chat: bool) -> PyResult<Vec<u32>> {
        if chat {
            encode_chat(&self.model, &[Message::new("user", prompt)], true).map_err(err)
        } else {
            encode_raw(&self.model, prompt).map_err(err)
        }
    }

    /// Prompt ids of a conversation of (role, content) pairs, ready for the reply.
    fn encode_messages(&self, messages: Vec<(String, String)>) -> PyResult<Vec<u32>> {
        let msgs: Vec<Message> = messages
            .into_iter()
            .map(|(r, c)| Message::new(r, c))
            .collect();
        encode_chat(&self.model, &msgs, true).map_err(err)
    }
}

/// Sampling settings and stop strings, checked.
#[allow(clippy::too_many_arguments)]
fn request(
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
) -> PyResult<TextRequest> {
    let seed = seed.unwrap_or_else(fado_core::sampling::clock_seed);
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        seed,
        ..Default::default()
    };
    params.validate().map_err(err)?;
    Ok(TextRequest {
        params,
        max_tokens,
        stop: stop.unwrap_or_default(),
    })
}

/// One sequence's KV cache; generations on it run one at a time.
#[pyclass(frozen, module = "fado._fado")]
struct NativeSession {
    session: SharedSession,
}

#[pymethods]
impl NativeSession {
    /// Generate after `ids` (the whole prompt; the cached prefix is reused) and return the
    /// text. The GIL is released meanwhile; Ctrl-C stops it with `KeyboardInterrupt`.
    #[pyo3(signature = (ids, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        seed: Option<u64>,
        stop: Option<Vec<String>>,
    ) -> PyResult<String> {
        let req = request(
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            seed,
            stop,
        )?;
        let session = self.session.clone();
        let mut interrupted: Option<PyErr> = None;
        let out = py.detach(|| {
            let mut s = lock(&session);
            generate_text_reusing(&mut s, &ids, &req, &mut |_| {
                // Ctrl-C arrives as a pending signal, seen only with the GIL.
                match Python::attach(|py| py.check_signals()) {
                    Ok(()) => true,
                    Err(e) => {
                        interrupted = Some(e);
                        false
                    }
                }
            })
        });
        if let Some(e) = interrupted {
            return Err(e);
        }
        Ok(out.map_err(err)?.text)
    }

    /// Like `generate`, as an iterator of text pieces: generation runs on a thread of its
    /// own and stops when the iterator is closed or dropped.
    #[pyo3(signature = (ids, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        ids: Vec<u32>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        seed: Option<u64>,
        stop: Option<Vec<String>>,
    ) -> PyResult<NativeStream> {
        let req = request(
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            seed,
            stop,
        )?;
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let session = self.session.clone();
        let stop = cancel.clone();
        let worker = std::thread::spawn(move || {
            let mut s = lock(&session);
            let out = generate_text_reusing(&mut s, &ids, &req, &mut |piece| {
                // An unbounded channel: the worker never waits for the reader.
                !stop.load(Ordering::Relaxed) && tx.send(Event::Piece(piece.to_string())).is_ok()
            });
            let _ = tx.send(Event::Done(out.map(|_| ()).map_err(|e| e.to_string())));
        });
        Ok(NativeStream {
            rx: Mutex::new(rx),
            cancel,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Forget the cached tokens.
    fn reset(&self, py: Python<'_>) {
        let session = self.session.clone();
        py.detach(|| lock(&session).reset());
    }

    /// Tokens currently in the cache.
    fn cached_tokens(&self, py: Python<'_>) -> Vec<u32> {
        let session = self.session.clone();
        py.detach(|| lock(&session).history().to_vec())
    }
}

enum Event {
    Piece(String),
    Done(Result<(), String>),
}

/// The pieces of one streamed generation.
#[pyclass(frozen, module = "fado._fado")]
struct NativeStream {
    rx: Mutex<Receiver<Event>>,
    cancel: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl NativeStream {
    /// Stop the worker and wait for it (without the GIL), so the session is free afterwards.
    fn finish(&self, py: Python<'_>) {
        self.cancel.store(true, Ordering::Relaxed);
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = worker {
            py.detach(|| {
                let _ = w.join();
            });
        }
    }
}

#[pymethods]
impl NativeStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            let got = py.detach(|| {
                let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
                rx.recv_timeout(Duration::from_millis(50))
            });
            match got {
                Ok(Event::Piece(p)) => return Ok(Some(p)),
                Ok(Event::Done(r)) => {
                    self.finish(py);
                    return r.map(|()| None).map_err(err);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish(py);
                    return Ok(None);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.finish(py);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Stop generating and wait until the session is free.
    fn close(&self, py: Python<'_>) {
        self.finish(py);
    }
}

impl Drop for NativeStream {
    fn drop(&mut self) {
        // Dropped without close(): the worker stops at its next piece.
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Load a model (a Hugging Face folder, a .safetensors or a .gguf file) onto the GPU.
#[pyfunction]
#[pyo3(signature = (path, kv_type, adapter, quant))]
fn load(
    py: Python<'_>,
    path: String,
    kv_type: &str,
    adapter: Option<String>,
    quant: Option<String>,
) -> PyResult<NativeModel> {
    let kv_type = KvType::parse(kv_type).map_err(err)?;
    let quant = match quant.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("q8_0") => Some(DType::Q8_0),
        Some("q4_0") => Some(DType::Q4_0),
        Some("q4_k") => Some(DType::Q4K),
        Some(q) => {
            return Err(err(format!(
                "quant = '{q}': use 'q8_0', 'q4_0', 'q4_k' or None"
            )))
        }
    };
    let mut gpu = GpuOptions::from_env();
    if adapter.is_some() {
        gpu.adapter = adapter;
    }
    let opts = ModelOptions {
        gpu,
        quant,
        progress: None,
    };
    let model = py.detach(|| Model::load(&path, &opts)).map_err(err)?;
    Ok(NativeModel { model, kv_type })
}

/// The GPU adapters wgpu sees, as `fado devices` lists them.
#[pyfunction]
fn devices(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let list = py.detach(GpuContext::list_adapters);
    list.into_iter()
        .map(|a| {
            let d = PyDict::new(py);
            d.set_item("index", a.index)?;
            d.set_item("name", a.name)?;
            d.set_item("backend", a.backend)?;
            d.set_item("device_type", a.device_type)?;
            d.set_item("driver", a.driver)?;
            d.set_item("features", a.features)?;
            Ok(d)
        })
        .collect()
}

#[pymodule]
fn _fado(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FadoError", m.py().get_type::<FadoError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<NativeModel>()?;
    m.add_class::<NativeSession>()?;
    m.add_class::<NativeStream>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    Ok(())
}
