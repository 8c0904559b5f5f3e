//! `fado run` and `fado chat`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use fado::chat_template::Message;
use fado::constrain::GrammarSpec;
use fado::generate::{encode_chat, encode_raw, generate_text, TextRequest};
use fado::session::Session;
use fado::{Error, Result};

use super::args::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt (default: read standard input).
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Wrap the prompt as one user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Constrain the output to JSON matching this JSON-schema file (objects allow extra
    /// properties unless "additionalProperties": false).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to this Lark grammar file (llguidance's dialect; `start` rule).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
}

/// The `--json-schema`/`--grammar` file as a grammar, read and parsed before the model loads
/// so a missing file or broken JSON fails at once.
fn grammar_spec(a: &RunArgs) -> Result<Option<GrammarSpec>> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })
    };
    if let Some(p) = &a.json_schema {
        let v: serde_json::Value = serde_json::from_str(&read(p)?).map_err(|e| {
            Error::Request(format!(
                "{}: not a JSON schema: invalid JSON: {e}",
                p.display()
            ))
        })?;
        return Ok(Some(GrammarSpec::JsonSchema(v)));
    }
    match &a.grammar {
        Some(p) => Ok(Some(GrammarSpec::Lark(read(p)?))),
        None => Ok(None),
    }
}

/// The prompt from standard input, without the one line break that ends typed or piped text
/// (`echo "…" | fado run` must not prompt with a trailing newline).
fn read_stdin() -> Result<String> {
    if std::io::stdin().is_terminal() {
        eprintln!("reading the prompt from standard input; end it with Ctrl-D (or pass --prompt)");
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("<stdin>", e))?;
    let mut text = String::from_utf8(buf).map_err(|e| {
        Error::Request(format!(
            "the prompt on standard input is not valid UTF-8 (byte {}); pass UTF-8 text",
            e.utf8_error().valid_up_to()
        ))
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// `1 token`, `2 tokens`.
fn tokens(n: usize) -> String {
    if n == 1 {
        "1 token".into()
    } else {
        format!("{n} tokens")
    }
}

fn summary(out: &fado::generate::TextOutput) {
    let g = &out.generation;
    eprintln!(
        "\n[prompt: {}, {:.1} tok/s | generated: {}, {:.1} tok/s | {}]",
        tokens(g.prompt_tokens),
        g.prefill_tokens_per_s(),
        tokens(g.tokens.len()),
        g.decode_tokens_per_s(),
        g.finish_reason.as_str()
    );
}

/// `fado run`: generate once from the prompt (raw, or as a chat turn with `--chat`),
/// streaming the text to standard output.
pub fn run(a: RunArgs, adapter: Option<String>) -> Result<()> {
    let prompt = match &a.prompt {
        Some(p) => p.clone(),
        None => read_stdin()?,
    };
    let mut params = a.sampling.params()?;
    let spec = grammar_spec(&a)?;
    let model = super::load::load(&a.model, adapter)?;
    if let Some(spec) = spec {
        let file = a.json_schema.as_ref().or(a.grammar.as_ref());
        let file = file.map(|p| p.display().to_string()).unwrap_or_default();
        params.constraint = Some(
            model
                .constraint(spec)
                .map_err(|e| Error::Request(format!("{file}: {e}")))?,
        );
    }
    let ids = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s.clone()));
        }
        msgs.push(Message::new("user", prompt));
        encode_chat(&model, &msgs, true)?
    } else {
        if a.system.is_some() {
            return Err(Error::Request("--system needs --chat".into()));
        }
        encode_raw(&model, &prompt)?
    };
    let opts = a.model.session_for(model.config.max_position_embeddings);
    let mut session = Session::with_options(model.clone(), opts)?;
    let req = TextRequest {
        params,
        max_tokens: a.sampling.max_tokens as usize,
        stop: a.sampling.stop.clone(),
    };
    let stdout = std::io::stdout();
    let json = a.json;
    let out = generate_text(&mut session, &ids, &req, &mut |t| {
        if !json {
            let mut o = stdout.lock();
            // A closed pipe (`| head`) ends generation instead of crashing.
            o.write_all(t.as_bytes()).is_ok() && o.flush().is_ok()
        } else {
            true
        }
    })?;
    if json {
        let g = &out.generation;
        let v = serde_json::json!({
            "model": model.name,
            "adapter": model.ctx.adapter_name(),
            "prompt_tokens": ids,
            "tokens": g.tokens,
            "text": out.text,
            "finish_reason": g.finish_reason.as_str(),
            "prefill_tokens_per_s": g.prefill_tokens_per_s(),
            "decode_tokens_per_s": g.decode_tokens_per_s(),
            "weights_bytes": model.weights_bytes,
        });
        println!("{v}");
    } else {
        println!();
        summary(&out);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
}

const CHAT_HELP: &str = "commands: /reset clears the conversation, /help shows this, /exit (or Ctrl-D) \
quits; Ctrl-C stops a reply. When the context fills up, the oldest turns are dropped (with a note).";

/// Set by Ctrl-C while a reply is generating (the reply stops; the program goes on).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Whether a reply is generating now; Ctrl-C at any other time (outside the line editor, e.g.
/// while the model loads) ends the program as usual.
static GENERATING: AtomicBool = AtomicBool::new(false);

fn install_ctrl_c() {
    let r = ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    });
    if let Err(e) = r {
        tracing::debug!("no Ctrl-C handler ({e}): Ctrl-C ends the program");
    }
}

/// What one line of input asks for.
enum ChatInput<'a> {
    Exit,
    Reset,
    Help,
    Unknown(&'a str),
    Empty,
    Message(&'a str),
}

fn parse_chat_input(line: &str) -> ChatInput<'_> {
    match line.trim() {
        "" => ChatInput::Empty,
        "/exit" | "/quit" => ChatInput::Exit,
        "/reset" | "/clear" => ChatInput::Reset,
        "/help" | "/?" => ChatInput::Help,
        c if c.starts_with('/') && !c.contains(char::is_whitespace) => ChatInput::Unknown(c),
        text => ChatInput::Message(text),
    }
}

/// Render the conversation, dropping its oldest turns (never the system message nor the last
/// user message) until it leaves `reserve` tokens of the `ctx`-token context for the reply.
/// Returns the prompt and how many messages were dropped.
fn fit_conversation(
    model: &fado::model::Model,
    msgs: &mut Vec<Message>,
    ctx: usize,
    reserve: usize,
) -> Result<(Vec<u32>, usize)> {
    let mut dropped = 0;
    loop {
        let ids = encode_chat(model, msgs, true)?;
        if ids.len() + reserve <= ctx {
            return Ok((ids, dropped));
        }
        let first = msgs.iter().position(|m| m.role != "system");
        match first {
            Some(i) if i + 1 < msgs.len() => {
                msgs.remove(i);
                dropped += 1;
            }
            _ => {
                return Err(Error::Request(format!(
                    "this message needs {} tokens with the reply's {reserve} but the context \
                     holds {ctx}; shorten it or raise --ctx",
                    ids.len()
                )))
            }
        }
    }
}

/// Multi-turn REPL with line editing and history. The session keeps its KV cache between
/// turns: each turn prefills only the tokens after the longest common prefix of the cache and
/// the newly rendered conversation. When the conversation outgrows the context, its oldest
/// turns are dropped with a note (the whole rest is prefilled again once).
pub fn chat(a: ChatArgs, adapter: Option<String>) -> Result<()> {
    let params = a.sampling.params()?;
    let model = super::load::load(&a.model, adapter)?;
    let opts = a.model.session_for(model.config.max_position_embeddings);
    let ctx = opts.ctx;
    let mut session = Session::with_options(model.clone(), opts)?;
    let mut msgs = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(Message::new("system", s.clone()));
    }
    let max_tokens = a.sampling.max_tokens as usize;
    // Room kept for a reply when old turns must go: all of --max-tokens, up to half the context.
    let reserve = max_tokens.min(ctx / 2).max(1);
    eprintln!(
        "fado chat — {} on {}, {ctx}-token context. {CHAT_HELP}",
        model.name,
        model.ctx.adapter_name()
    );
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Error::Config(format!("could not open the line editor: {e}")))?;
    install_ctrl_c();
    loop {
        let line = match editor.readline("> ") {
            Ok(l) => l,
            // Ctrl-C at the prompt clears the line, as in a shell.
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: could not read input ({e}); type UTF-8 text");
                continue;
            }
        };
        let text = match parse_chat_input(&line) {
            ChatInput::Empty => continue,
            ChatInput::Exit => break,
            ChatInput::Help => {
                eprintln!("{CHAT_HELP}");
                continue;
            }
            ChatInput::Unknown(c) => {
                eprintln!("unknown command {c}; /help lists the commands");
                continue;
            }
            ChatInput::Reset => {
                msgs.retain(|m: &Message| m.role == "system");
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            ChatInput::Message(t) => t.to_string(),
        };
        let _ = editor.add_history_entry(line.as_str());
        msgs.push(Message::new("user", text));
        let full = match fit_conversation(&model, &mut msgs, ctx, reserve) {
            Ok((ids, dropped)) => {
                if dropped > 0 {
                    eprintln!(
                        "(the context of {ctx} tokens is full: dropped the oldest {dropped} \
                         message{}; /reset starts over)",
                        if dropped == 1 { "" } else { "s" }
                    );
                }
                ids
            }
            Err(e) => {
                eprintln!("error: {e}");
                msgs.pop();
                continue;
            }
        };
        let common = session.reuse_prefix(&full);
        let req = TextRequest {
            params: params.clone(),
            max_tokens,
            stop: a.sampling.stop.clone(),
        };
        let stdout = std::io::stdout();
        INTERRUPTED.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let result = generate_text(&mut session, &full[common..], &req, &mut |t| {
            let mut o = stdout.lock();
            !INTERRUPTED.load(Ordering::SeqCst)
                && o.write_all(t.as_bytes()).is_ok()
                && o.flush().is_ok()
        });
        GENERATING.store(false, Ordering::SeqCst);
        match result {
            Ok(out) => {
                println!();
                if INTERRUPTED.swap(false, Ordering::SeqCst) {
                    eprintln!("(interrupted)");
                }
                summary(&out);
                if out.generation.finish_reason == fado::session::FinishReason::Length
                    && session.history().len() >= session.capacity()
                {
                    eprintln!(
                        "(the context of {ctx} tokens is full: the reply was cut; the oldest \
                         turns will be dropped next turn, or /reset starts over)"
                    );
                }
                msgs.push(Message::new("assistant", out.text));
            }
            Err(e) => {
                // A turn that fails is reported; the conversation goes on.
                eprintln!("error: {e}");
                msgs.pop();
            }
        }
    }
    Ok(())
}
