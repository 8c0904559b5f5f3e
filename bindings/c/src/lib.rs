//! `libfado`: Fado's C ABI (`include/fado.h`, generated from this file by cbindgen).
//!
//! A thin layer over the Rust library, no second implementation: `fado_model` holds an
//! `Arc<fado::model::Model>`, `fado_session` a `fado::session::Session`, and generation is
//! `fado::generate::generate_text_reusing`, as `fado run` uses.
//!
//! Conventions, for every function:
//! - Pointers are checked: NULL where an object or a string is required gives
//!   `FADO_ERR_NULL_ARGUMENT` (or a NULL result), never a crash.
//! - Strings are NUL-terminated UTF-8; invalid UTF-8 gives `FADO_ERR_INVALID_ARGUMENT`.
//! - A Rust panic never crosses the boundary: it is caught and reported as
//!   `FADO_ERR_INTERNAL` with its message.
//! - On failure, `fado_last_error()` tells why, on the calling thread.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // the safety contract is in each function's C docs

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use fado_core::chat_template::Message;
use fado_core::generate::{encode_chat, encode_raw, generate_text_reusing, TextRequest};
use fado_core::gpu::GpuOptions;
use fado_core::model::{Model, ModelOptions};
use fado_core::sampling::SamplingParams;
use fado_core::session::{KvType, Session, SessionOptions};
use fado_core::tensor::DType;
use fado_core::Error;

/// Success.
pub const FADO_OK: i32 = 0;
/// A required pointer argument was NULL.
pub const FADO_ERR_NULL_ARGUMENT: i32 = -1;
/// An argument is invalid: not UTF-8, out of range, a prompt longer than the context, …
pub const FADO_ERR_INVALID_ARGUMENT: i32 = -2;
/// The model could not be read: missing file, unsupported or corrupt format, bad tokenizer.
pub const FADO_ERR_MODEL: i32 = -3;
/// The GPU failed: no adapter, out of memory, device lost, a kernel error.
pub const FADO_ERR_GPU: i32 = -4;
/// A bug in Fado (a caught panic); the message says where.
pub const FADO_ERR_INTERNAL: i32 = -5;

/// `kv_type`: keys and values stored as f16 (the default).
pub const FADO_KV_F16: i32 = 0;
/// `kv_type`: keys and values stored as f32 (twice the memory).
pub const FADO_KV_F32: i32 = 1;

/// `seed`: draw a seed from the clock.
pub const FADO_SEED_RANDOM: u64 = u64::MAX;

/// A loaded model: weights on the GPU, tokenizer, chat template. Thread-safe: any number of
/// threads may use one model (each through its own sessions) at once.
pub struct fado_model {
    model: Arc<Model>,
    kv_type: KvType,
    name: CString,
    adapter: CString,
}

/// One sequence's KV cache and compiled graphs. Not thread-safe: use a session from one thread
/// at a time (it may move between threads). Sessions of one model generate concurrently.
pub struct fado_session {
    session: Session,
}

/// How `fado_model_load()` loads a model; `fado_model_options_default()` gives the defaults.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct fado_model_options {
    /// Adapter index (as `fado devices` lists them) or a case-insensitive substring of its
    /// name; NULL: the `FADO_ADAPTER` environment variable, else the best adapter.
    pub adapter: *const c_char,
    /// Re-quantize float weights while loading: NULL (keep them), "q8_0", "q4_0" or "q4_k".
    pub quant: *const c_char,
    /// KV cache of this model's sessions: [`FADO_KV_F16`] or [`FADO_KV_F32`].
    pub kv_type: i32,
}

/// Sampling settings; `fado_sampling_default()` gives `fado run`'s defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct fado_sampling {
    /// 0 = greedy (always the most likely token).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = off; ≥ 0).
    pub top_k: i32,
    /// Nucleus sampling mass, in (0, 1] (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the best one, in [0, 1] (0 = off).
    pub min_p: f32,
    /// Penalize repeats of the last 64 tokens, > 0 (1 = off).
    pub repeat_penalty: f32,
    /// The same seed, settings and prompt give the same tokens; `FADO_SEED_RANDOM`: from the
    /// clock.
    pub seed: u64,
    /// Most new tokens (0 only prefills the prompt).
    pub max_tokens: u32,
}

/// A chat message for `fado_chat`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct fado_message {
    /// "system", "user" or "assistant".
    pub role: *const c_char,
    /// The message text.
    pub content: *const c_char,
}

/// Receives each piece of generated text (UTF-8, NUL-terminated, valid only during the call;
/// a NUL character the model generates is left out) and `user_data`; returns non-zero to stop
/// generation.
pub type fado_piece_callback =
    Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> i32>;

// ---------------------------------------------------------------------------------------------
// Errors

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// An error on its way to C: the code to return and the message for `fado_last_error`.
struct CError {
    code: i32,
    msg: String,
}

impl CError {
    fn null(what: &str) -> CError {
        CError {
            code: FADO_ERR_NULL_ARGUMENT,
            msg: format!("{what} is NULL"),
        }
    }
    fn invalid(msg: impl Into<String>) -> CError {
        CError {
            code: FADO_ERR_INVALID_ARGUMENT,
            msg: msg.into(),
        }
    }
}

impl From<Error> for CError {
    fn from(e: Error) -> CError {
        let code = match &e {
            Error::NoAdapter(_)
            | Error::Gpu { .. }
            | Error::DeviceLost { .. }
            | Error::OutOfMemory { .. }
            | Error::Op { .. } => FADO_ERR_GPU,
            Error::Model { .. } | Error::Tokenizer(_) | Error::Io { .. } | Error::Config(_) => {
                FADO_ERR_MODEL
            }
            _ => FADO_ERR_INVALID_ARGUMENT,
        };
        CError {
            code,
            msg: e.to_string(),
        }
    }
}

fn set_error(msg: &str) {
    // A message with a NUL byte is cut there rather than lost.
    let bytes: Vec<u8> = msg.bytes().take_while(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in Fado (please report it): {what}")
}

/// Run `f`, turning its error or panic into `fallback` (and the thread's last error).
fn guard<T>(fallback: impl FnOnce(i32) -> T, f: impl FnOnce() -> Result<T, CError>) -> T {
    set_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(&e.msg);
            fallback(e.code)
        }
        Err(p) => {
            set_error(&panic_message(p.as_ref()));
            fallback(FADO_ERR_INTERNAL)
        }
    }
}

/// A C string argument as `&str`.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, CError> {
    if p.is_null() {
        return Err(CError::null(what));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        CError::invalid(format!(
            "{what} is not valid UTF-8 (bad byte at offset {}); pass UTF-8 text",
            e.valid_up_to()
        ))
    })
}

unsafe fn opt_str_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, CError> {
    if p.is_null() {
        Ok(None)
    } else {
        str_arg(p, what).map(Some)
    }
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Errors and versions

/// Why the last failing call on this thread failed ("" after a call that succeeded). The
/// string belongs to Fado and stays valid until the next Fado call on this thread. Thread-safe.
#[no_mangle]
pub extern "C" fn fado_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Fado's version, e.g. "0.1.0" (static string). Thread-safe.
#[no_mangle]
pub extern "C" fn fado_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

// ---------------------------------------------------------------------------------------------
// Models

/// Default model options: default adapter, no re-quantization, f16 KV cache. Thread-safe.
#[no_mangle]
pub extern "C" fn fado_model_options_default() -> fado_model_options {
    fado_model_options {
        adapter: std::ptr::null(),
        quant: std::ptr::null(),
        kv_type: FADO_KV_F16,
    }
}

unsafe fn load(
    path: *const c_char,
    options: *const fado_model_options,
) -> Result<fado_model, CError> {
    let path = str_arg(path, "path")?;
    let o = if options.is_null() {
        fado_model_options_default()
    } else {
        *options
    };
    let kv_type = match o.kv_type {
        FADO_KV_F16 => KvType::F16,
        FADO_KV_F32 => KvType::F32,
        v => {
            return Err(CError::invalid(format!(
                "options.kv_type = {v}: use FADO_KV_F16 (0) or FADO_KV_F32 (1)"
            )))
        }
    };
    let quant = match opt_str_arg(o.quant, "options.quant")? {
        None => None,
        Some(q) => Some(match q.to_ascii_lowercase().as_str() {
            "q8_0" => DType::Q8_0,
            "q4_0" => DType::Q4_0,
            "q4_k" => DType::Q4K,
            _ => {
                return Err(CError::invalid(format!(
                    "options.quant = \"{q}\": use \"q8_0\", \"q4_0\", \"q4_k\" or NULL"
                )))
            }
        }),
    };
    let mut gpu = GpuOptions::from_env();
    if let Some(a) = opt_str_arg(o.adapter, "options.adapter")? {
        gpu.adapter = Some(a.to_string());
    }
    let opts = ModelOptions {
        gpu,
        quant,
        progress: None,
    };
    let model = Model::load(path, &opts)?;
    Ok(fado_model {
        name: c_string(&model.name),
        adapter: c_string(&model.ctx.adapter_name()),
        model,
        kv_type,
    })
}

/// Load a model (a Hugging Face folder, a .safetensors file or a .gguf file) onto the GPU.
/// `options` NULL: defaults. Returns NULL on error (see `fado_last_error()`); free the model
/// with `fado_model_free()` after its sessions. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_model_load(
    path: *const c_char,
    options: *const fado_model_options,
) -> *mut fado_model {
    guard(
        |_| std::ptr::null_mut(),
        || load(path, options).map(|m| Box::into_raw(Box::new(m))),
    )
}

/// Free a model (NULL: nothing). Its sessions keep the weights alive until they are freed.
/// Not thread-safe with other calls on the same model.
#[no_mangle]
pub unsafe extern "C" fn fado_model_free(model: *mut fado_model) {
    if !model.is_null() {
        guard(
            |_| (),
            || {
                drop(Box::from_raw(model));
                Ok(())
            },
        );
    }
}

unsafe fn model_ref<'a>(m: *const fado_model) -> Result<&'a fado_model, CError> {
    m.as_ref().ok_or_else(|| CError::null("model"))
}

/// The model's name (file or folder name); owned by the model. NULL if `model` is NULL.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_model_name(model: *const fado_model) -> *const c_char {
    guard(|_| std::ptr::null(), || Ok(model_ref(model)?.name.as_ptr()))
}

/// The name of the GPU adapter the model runs on; owned by the model. NULL if `model` is
/// NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_model_adapter(model: *const fado_model) -> *const c_char {
    guard(
        |_| std::ptr::null(),
        || Ok(model_ref(model)?.adapter.as_ptr()),
    )
}

/// The model's maximum context in tokens (0 if `model` is NULL). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_model_context_length(model: *const fado_model) -> u32 {
    guard(
        |_| 0,
        || Ok(model_ref(model)?.model.config.max_position_embeddings as u32),
    )
}

/// The tokenizer's vocabulary size (0 if `model` is NULL). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_model_vocab_size(model: *const fado_model) -> u32 {
    guard(
        |_| 0,
        || Ok(model_ref(model)?.model.tokenizer.vocab_size() as u32),
    )
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// Tokenize `text` (with BOS when `add_special` and the model adds one) into `out`, which has
/// room for `capacity` ids. Returns the number of ids; when that is more than `capacity`,
/// nothing is written (call again with a larger buffer; `out` may be NULL when `capacity` is
/// 0). Negative on error. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_tokenize(
    model: *const fado_model,
    text: *const c_char,
    add_special: bool,
    out: *mut u32,
    capacity: i32,
) -> i32 {
    guard(
        |code| code,
        || {
            let m = model_ref(model)?;
            let text = str_arg(text, "text")?;
            let ids = m.model.tokenizer.encode(text, add_special)?;
            let n = i32::try_from(ids.len()).map_err(|_| CError::invalid("text too long"))?;
            if n <= capacity {
                if out.is_null() {
                    return Err(CError::null("out"));
                }
                std::ptr::copy_nonoverlapping(ids.as_ptr(), out, ids.len());
            }
            Ok(n)
        },
    )
}

/// Turn `n` token ids into text (special tokens included) written to `out` with a NUL, if it
/// has room (`capacity` bytes, NUL included). Returns the text's length in bytes without the
/// NUL; when that is ≥ `capacity`, nothing is written (call again with a larger buffer).
/// Negative on error (an id outside the vocabulary). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_detokenize(
    model: *const fado_model,
    tokens: *const u32,
    n: i32,
    out: *mut c_char,
    capacity: i32,
) -> i32 {
    guard(
        |code| code,
        || {
            let m = model_ref(model)?;
            if n < 0 {
                return Err(CError::invalid(format!("n = {n} is negative")));
            }
            if tokens.is_null() && n > 0 {
                return Err(CError::null("tokens"));
            }
            let ids = if n == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(tokens, n as usize)
            };
            let vocab = m.model.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(CError::invalid(format!(
                    "token id {bad} is outside the vocabulary (size {vocab})"
                )));
            }
            let text = c_string(&m.model.tokenizer.decode_with(ids, false));
            let bytes = text.as_bytes_with_nul();
            let len =
                i32::try_from(bytes.len() - 1).map_err(|_| CError::invalid("text too long"))?;
            if len < capacity {
                if out.is_null() {
                    return Err(CError::null("out"));
                }
                std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), out, bytes.len());
            }
            Ok(len)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Sessions and generation

/// A session with room for `ctx` tokens (0: the model's context, at most 4096), its KV cache
/// in the model's `kv_type`. NULL on error. Free it with `fado_session_free()`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn fado_session_new(model: *mut fado_model, ctx: u32) -> *mut fado_session {
    guard(
        |_| std::ptr::null_mut(),
        || {
            let m = model_ref(model)?;
            let ctx = match ctx {
                0 => m.model.config.max_position_embeddings.clamp(1, 4096),
                n => n as usize,
            };
            let opts = SessionOptions {
                ctx,
                kv_type: m.kv_type,
            };
            let session = Session::with_options(m.model.clone(), opts)?;
            Ok(Box::into_raw(Box::new(fado_session { session })))
        },
    )
}

/// Free a session (NULL: nothing). Not thread-safe with other calls on the same session.
#[no_mangle]
pub unsafe extern "C" fn fado_session_free(session: *mut fado_session) {
    if !session.is_null() {
        guard(
            |_| (),
            || {
                drop(Box::from_raw(session));
                Ok(())
            },
        );
    }
}

/// `fado run`'s sampling defaults: temperature 0.7, top_k 40, top_p 0.95, min_p 0.05,
/// repeat_penalty 1, a random seed, 256 tokens. Thread-safe.
#[no_mangle]
pub extern "C" fn fado_sampling_default() -> fado_sampling {
    fado_sampling {
        temperature: 0.7,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.0,
        seed: FADO_SEED_RANDOM,
        max_tokens: 256,
    }
}

fn request(s: &fado_sampling) -> Result<TextRequest, CError> {
    if s.top_k < 0 {
        return Err(CError::invalid(format!("top_k = {} is negative", s.top_k)));
    }
    let seed = if s.seed == FADO_SEED_RANDOM {
        fado_core::sampling::clock_seed()
    } else {
        s.seed
    };
    let params = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed,
        ..Default::default()
    };
    params.validate().map_err(CError::invalid)?;
    Ok(TextRequest {
        params,
        max_tokens: s.max_tokens as usize,
        stop: Vec::new(),
    })
}

/// Generate from token ids, streaming pieces to the callback.
unsafe fn run(
    session: &mut fado_session,
    ids: &[u32],
    sampling: *const fado_sampling,
    callback: fado_piece_callback,
    user_data: *mut c_void,
) -> Result<i32, CError> {
    let callback = callback.ok_or_else(|| CError::null("callback"))?;
    let s = sampling
        .as_ref()
        .copied()
        .unwrap_or_else(|| fado_sampling_default());
    let req = request(&s)?;
    generate_text_reusing(&mut session.session, ids, &req, &mut |piece| {
        let c = c_string(piece);
        callback(c.as_ptr(), user_data) == 0
    })?;
    Ok(FADO_OK)
}

/// Generate after `prompt` — raw text, or with `chat` one user message through the model's
/// chat template (as `fado run --chat`) — streaming each piece of text to `callback`, which
/// returns non-zero to stop. `sampling` NULL: `fado_sampling_default()`. The session keeps
/// the part of its cache that `prompt` starts with, so a prompt that extends the previous one
/// prefills only what is new. Returns `FADO_OK` (also when the callback stopped it) or a
/// negative error code. Calls the callback on the calling thread. Not thread-safe per session.
#[no_mangle]
pub unsafe extern "C" fn fado_generate(
    session: *mut fado_session,
    prompt: *const c_char,
    chat: bool,
    sampling: *const fado_sampling,
    callback: fado_piece_callback,
    user_data: *mut c_void,
) -> i32 {
    guard(
        |code| code,
        || {
            let s = session.as_mut().ok_or_else(|| CError::null("session"))?;
            let prompt = str_arg(prompt, "prompt")?;
            let model = s.session.model().clone();
            let ids = if chat {
                encode_chat(&model, &[Message::new("user", prompt)], true)?
            } else {
                encode_raw(&model, prompt)?
            };
            run(s, &ids, sampling, callback, user_data)
        },
    )
}

/// Generate the assistant's reply to a conversation of `n` messages rendered with the
/// model's chat template; otherwise as `fado_generate()`. Re-sending the conversation with
/// the reply and a new message appended prefills only the new part. Not thread-safe per
/// session.
#[no_mangle]
pub unsafe extern "C" fn fado_chat(
    session: *mut fado_session,
    messages: *const fado_message,
    n: usize,
    sampling: *const fado_sampling,
    callback: fado_piece_callback,
    user_data: *mut c_void,
) -> i32 {
    guard(
        |code| code,
        || {
            let s = session.as_mut().ok_or_else(|| CError::null("session"))?;
            if messages.is_null() {
                return Err(CError::null("messages"));
            }
            if n == 0 {
                return Err(CError::invalid("the conversation has no messages"));
            }
            let mut msgs = Vec::with_capacity(n);
            for (i, m) in std::slice::from_raw_parts(messages, n).iter().enumerate() {
                let role = str_arg(m.role, &format!("messages[{i}].role"))?;
                if !matches!(role, "system" | "user" | "assistant") {
                    return Err(CError::invalid(format!(
                        "messages[{i}].role = \"{role}\": use \"system\", \"user\" or \"assistant\""
                    )));
                }
                let content = str_arg(m.content, &format!("messages[{i}].content"))?;
                msgs.push(Message::new(role, content));
            }
            let model = s.session.model().clone();
            let ids = encode_chat(&model, &msgs, true)?;
            run(s, &ids, sampling, callback, user_data)
        },
    )
}

/// Forget the tokens the session holds (the next generation prefills from scratch). Returns
/// `FADO_OK` or `FADO_ERR_NULL_ARGUMENT`. Not thread-safe per session.
#[no_mangle]
pub unsafe extern "C" fn fado_session_reset(session: *mut fado_session) -> i32 {
    guard(
        |code| code,
        || {
            let s = session.as_mut().ok_or_else(|| CError::null("session"))?;
            s.session.reset();
            Ok(FADO_OK)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        unsafe { CStr::from_ptr(fado_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_code() {
        let code = guard(
            |c| c,
            || -> Result<i32, CError> { panic!("boom in a test") },
        );
        assert_eq!(code, FADO_ERR_INTERNAL);
        assert!(last_error().contains("boom in a test"), "{}", last_error());
        // The next successful call clears the message.
        assert_eq!(guard(|c| c, || Ok(FADO_OK)), FADO_OK);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn errors_map_to_codes_and_keep_their_message() {
        let code = guard(
            |c| c,
            || -> Result<i32, CError> { Err(Error::Request("prompt too long".into()).into()) },
        );
        assert_eq!(code, FADO_ERR_INVALID_ARGUMENT);
        assert_eq!(last_error(), "prompt too long");
        let e: CError = Error::NoAdapter("none".into()).into();
        assert_eq!(e.code, FADO_ERR_GPU);
        let e: CError = Error::Config("bad".into()).into();
        assert_eq!(e.code, FADO_ERR_MODEL);
        // A message with a NUL is cut there, not lost.
        set_error("before\0after");
        assert_eq!(last_error(), "before");
    }
}
