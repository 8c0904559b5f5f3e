//! Chat templates: the Jinja programs Hugging Face models ship to turn a conversation into a
//! prompt, rendered with minijinja the way transformers renders them (`apply_chat_template`).
//!
//! What transformers provides, we provide: `trim_blocks` + `lstrip_blocks`, loop controls, the
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (function
//! declarations, see [`crate::tools`]) / `documents` (none), the functions `raise_exception(msg)` (→ an error carrying `msg`) and
//! `strftime_now(fmt)`, a Python-compatible `tojson`, and Python string/dict/list methods
//! (`.strip()`, `.startswith()`, `.items()` …) through minijinja-contrib's pycompat.
//!
//! Sandboxed: templates cannot load other templates (no loader), every render has a fuel budget
//! and a recursion limit, and output is capped ([`Limits`]).
//!
//! Sources, in the order a model folder is searched ([`ChatTemplate::from_model_dir`]):
//! `chat_template.jinja`, then `tokenizer_config.json`'s `chat_template` (a string, or a list of
//! `{name, template}` from which "default" is taken). GGUF files carry it as
//! `tokenizer.chat_template` ([`crate::tokenizer::Tokenizer::chat_template`]).
//! A model without one gets [`ChatTemplate::chatml`] (ChatML, `<|im_start|>role\n…<|im_end|>\n`),
//! the format SmolLM2, Qwen and most small instruct models use.

#![warn(missing_docs)]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind};

use crate::error::{Error, Result};

// `tokenizer_config.json` belongs to the tokenizer, which reads it first; re-exported here for
// the callers that pick a template.
pub use crate::tokenizer::pick_config_template;

/// The template used when a model ships none: ChatML.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const TEMPLATE_NAME: &str = "chat_template";
const RAISED: &str = "raise_exception: ";

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
    /// An assistant's function calls (see [`crate::tools`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool result's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool result's function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// The message as a template sees it: `role`, `content`, and when present `tool_calls`
    /// (`{id, type, function: {name, arguments}}`, arguments as an object when they parse, as
    /// transformers' templates expect), `tool_call_id` and `name`.
    fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), self.role.clone().into());
        m.insert("content".into(), self.content.clone().into());
        if !self.tool_calls.is_empty() {
            let calls: Vec<serde_json::Value> = self
                .tool_calls
                .iter()
                .map(|c| {
                    let mut v = c.to_openai();
                    v["function"]["arguments"] = c.arguments_value();
                    v
                })
                .collect();
            m.insert("tool_calls".into(), calls.into());
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), id.clone().into());
        }
        if let Some(n) = &self.name {
            m.insert("name".into(), n.clone().into());
        }
        Value::from(minijinja::value::Serde(serde_json::Value::Object(m)))
    }
}

/// A function call the model made (see [`crate::tools`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_…`), which the tool's answer refers to.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

impl ToolCall {
    /// The call in OpenAI's shape `{id, type: "function", function: {name, arguments}}`.
    pub fn to_openai(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }

    /// The arguments as a JSON value: the parsed object when the text is JSON, else the text
    /// (templates expect an object, as transformers passes it).
    pub fn arguments_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.arguments)
            .unwrap_or_else(|_| serde_json::Value::String(self.arguments.clone()))
    }
}

/// Sandbox limits for rendering.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// minijinja fuel (roughly, instructions executed) per render.
    pub fuel: u64,
    /// Maximum nesting of calls / includes / macros.
    pub recursion: usize,
    /// Maximum rendered size in bytes.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 5_000_000,
            recursion: 64,
            max_output_bytes: 16 << 20,
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    limits: Limits,
    knows_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a template; `origin` names where it came from in every error
    /// (e.g. "tokenizer.chat_template in model.gguf").
    pub fn new(source: impl Into<String>) -> Result<Self> {
        Self::with_origin(source, "chat template")
    }

    /// Like [`new`](Self::new), naming the template's origin for errors.
    pub fn with_origin(source: impl Into<String>, origin: impl Into<String>) -> Result<Self> {
        Self::with_limits(source, origin, Limits::default())
    }

    /// Like [`with_origin`](Self::with_origin) with explicit sandbox limits.
    pub fn with_limits(
        source: impl Into<String>,
        origin: impl Into<String>,
        limits: Limits,
    ) -> Result<Self> {
        let origin = origin.into();
        let source: String = source.into();
        let knows_tools = source.contains("tools");
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        let syntax = syntax
            .build()
            .map_err(|e| Error::Tokenizer(format!("{origin}: {e}")))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(limits.fuel));
        env.set_recursion_limit(limits.recursion);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| template_error(&origin, &e))?;
        Ok(ChatTemplate {
            env,
            origin,
            limits,
            knows_tools,
        })
    }

    /// The template a model folder ships: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template`. `Ok(None)` when it has neither.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        let jinja = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&jinja) {
            Ok(src) => return Self::with_origin(src, jinja.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(jinja, e)),
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let text = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(cfg_path, e)),
        };
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&cfg_path, format!("invalid JSON: {e}")))?;
        match cfg.get("chat_template").and_then(pick_config_template) {
            Some(src) => {
                Self::with_origin(src, format!("{} (chat_template)", cfg_path.display())).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The fallback for models without a template: ChatML.
    pub fn chatml() -> Self {
        match Self::with_origin(CHATML_TEMPLATE, "built-in ChatML template") {
            Ok(t) => t,
            Err(e) => unreachable!("the built-in ChatML template must compile: {e}"),
        }
    }

    /// Where this template came from (used in errors).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Does the template use the `tools` variable? Those that do get function declarations
    /// and calls as transformers passes them; the others get [`crate::tools`]' fallback.
    pub fn knows_tools(&self) -> bool {
        self.knows_tools
    }

    /// Renders a conversation into a prompt string.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt, bos_token, eos_token)
    }

    /// [`ChatTemplate::render`] with function declarations for the `tools` variable (None:
    /// the variable is none, as transformers passes it without tools).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let msgs: Vec<Value> = messages.iter().map(Message::to_value).collect();
        let tools = tools.map_or(Value::from(()), |t| Value::from(minijinja::value::Serde(t)));
        let ctx = Value::from_pairs([
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(bos_token)),
            ("eos_token", Value::from(eos_token)),
            ("tools", tools),
            ("documents", Value::from(())),
        ]);
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&self.origin, &e))?;
        let overflow = Arc::new(AtomicBool::new(false));
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: self.limits.max_output_bytes,
            overflow: overflow.clone(),
        };
        if let Err(e) = tmpl.render_captured_to(ctx, &mut out) {
            if overflow.load(Ordering::Relaxed) {
                return Err(Error::Tokenizer(format!(
                    "{}: rendered prompt exceeds the {}-byte limit",
                    self.origin, self.limits.max_output_bytes
                )));
            }
            return Err(template_error(&self.origin, &e));
        }
        String::from_utf8(out.buf)
            .map_err(|_| Error::Tokenizer(format!("{}: rendered invalid UTF-8", self.origin)))
    }
}

struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflow: Arc<AtomicBool>,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.overflow.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn template_error(origin: &str, e: &minijinja::Error) -> Error {
    let line = e.line().map(|l| format!(", line {l}")).unwrap_or_default();
    let detail = e.detail().unwrap_or("");
    if let Some(msg) = detail.strip_prefix(RAISED) {
        return Error::Tokenizer(format!(
            "{origin}{line}: the template raised an exception: {msg}"
        ));
    }
    let what = match e.kind() {
        ErrorKind::SyntaxError => "syntax error",
        ErrorKind::OutOfFuel => "ran out of fuel (the template does too much work)",
        _ => "render error",
    };
    let detail = if detail.is_empty() {
        e.kind().to_string()
    } else {
        format!("{}: {detail}", e.kind())
    };
    Error::Tokenizer(format!("{origin}{line}: {what}: {detail}"))
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// Longest `tojson` indent accepted (Python's would be unbounded; templates use 2 or 4).
const TOJSON_MAX_INDENT: usize = 64;
/// Largest `tojson` result: the default render output cap. Checked as the text grows, so a
/// huge lazy sequence (`[0] * 100000000`) is refused instead of being collected first.
const TOJSON_MAX_BYTES: usize = 16 << 20;

fn tojson_too_big() -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: result is over the limit of {TOJSON_MAX_BYTES} bytes"),
    )
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)` (transformers' `tojson`).
fn tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    // Fuzzing found `tojson(indent=99999999999)` allocating the indent string before writing
    // a byte (an abort, not an error): the indent is capped, like the output below.
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            let ind = match v.as_i64() {
                Some(n) => " ".repeat(n.clamp(0, TOJSON_MAX_INDENT as i64 + 1) as usize),
                None => v.as_str().unwrap_or("").to_string(),
            };
            if ind.len() > TOJSON_MAX_INDENT {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent is over the limit of {TOJSON_MAX_INDENT} characters"),
                ));
            }
            Some(ind)
        }
    };
    let mut out = String::new();
    write_json(
        &value,
        indent.as_deref(),
        sort_keys.unwrap_or(false),
        0,
        &mut out,
    )?;
    Ok(Value::from_safe_string(out))
}

fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(
    v: &Value,
    indent: Option<&str>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    if depth > 64 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, d: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..d {
                out.push_str(ind);
            }
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_finite() {
                    // Python prints floats with a fractional part ("1.0").
                    let s = format!("{f:?}");
                    out.push_str(&s);
                } else if f.is_nan() {
                    out.push_str("NaN");
                } else if f > 0.0 {
                    out.push_str("Infinity");
                } else {
                    out.push_str("-Infinity");
                }
            }
        }
        ValueKind::String => write_json_str(v.as_str().unwrap_or(""), out),
        ValueKind::Seq | ValueKind::Iterable => {
            // Streamed, not collected: sequences can be lazy and huge (see TOJSON_MAX_BYTES).
            let mut items = v.try_iter()?.peekable();
            if items.peek().is_none() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(&item, indent, sort_keys, depth + 1, out)?;
                if out.len() > TOJSON_MAX_BYTES {
                    return Err(tojson_too_big());
                }
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => write_json_str(s, out),
                    None => write_json_str(&k.to_string(), out),
                }
                out.push_str(": ");
                let item = v.get_item(k)?;
                write_json(&item, indent, sort_keys, depth + 1, out)?;
                if out.len() > TOJSON_MAX_BYTES {
                    return Err(tojson_too_big());
                }
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_str(&v.to_string(), out),
    }
    Ok(())
}

/// `strftime_now(fmt)`: the current UTC time, formatted with the common strftime codes
/// (%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &fmt)
}

/// Formats a Unix time (UTC). Public for tests.
pub fn strftime(unix_secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (Monday = 0)
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[wday]),
            Some('a') => out.push_str(&DAYS[wday][..3]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}
