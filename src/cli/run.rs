//! `fado run` and `fado chat`.

use std::io::{BufRead, IsTerminal, Read, Write};

use clap::Args;
use fado::chat_template::Message;
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
    let params = a.sampling.params()?;
    let model = super::load::load(&a.model, adapter)?;
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
    let ctx = a.model.ctx_for(model.config.max_position_embeddings);
    let mut session = Session::new(model.clone(), ctx)?;
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

/// Multi-turn REPL. The session keeps its KV cache between turns: each turn prefills only the
/// tokens after the longest common prefix of the cache and the newly rendered conversation.
pub fn chat(a: ChatArgs, adapter: Option<String>) -> Result<()> {
    let params = a.sampling.params()?;
    let model = super::load::load(&a.model, adapter)?;
    let ctx = a.model.ctx_for(model.config.max_position_embeddings);
    let mut session = Session::new(model.clone(), ctx)?;
    let mut msgs = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(Message::new("system", s.clone()));
    }
    eprintln!(
        "fado chat — {} on {}. /reset clears the conversation, /exit or Ctrl-D quits.",
        model.name,
        model.ctx.adapter_name()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let line = match lines.next() {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                eprintln!("error: could not read input ({e}); type UTF-8 text");
                continue;
            }
        };
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                msgs.retain(|m: &Message| m.role == "system");
                session.reset();
                continue;
            }
            _ => {}
        }
        msgs.push(Message::new("user", line.to_string()));
        let full = encode_chat(&model, &msgs, true)?;
        let common = session.reuse_prefix(&full);
        let req = TextRequest {
            params: params.clone(),
            max_tokens: a.sampling.max_tokens as usize,
            stop: a.sampling.stop.clone(),
        };
        let stdout = std::io::stdout();
        match generate_text(&mut session, &full[common..], &req, &mut |t| {
            let mut o = stdout.lock();
            o.write_all(t.as_bytes()).is_ok() && o.flush().is_ok()
        }) {
            Ok(out) => {
                println!();
                summary(&out);
                msgs.push(Message::new("assistant", out.text));
            }
            Err(e) => {
                // A turn that does not fit is reported; the conversation goes on.
                eprintln!("error: {e}");
                msgs.pop();
            }
        }
    }
    Ok(())
}
