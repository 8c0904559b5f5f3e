//! Several prompts at once through the library's batched engine: one pool of sequences, their
//! decode steps run as batched steps (each weight read once per step for all of them).
//!
//!     cargo run --release --example batch -- MODEL_PATH "First prompt" "Second prompt" ...
//!
//! Each prompt is a chat turn; the answers print in order, then the batching counters.

use std::time::Instant;

use fado::chat_template::Message;
use fado::generate::encode_chat;
use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::session::{Batcher, SessionOptions};

fn main() -> fado::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: batch MODEL_PATH [PROMPT ...]");
    let mut prompts: Vec<String> = args.collect();
    if prompts.is_empty() {
        prompts = [
            "Name three colours.",
            "What is the capital of Portugal?",
            "Say hello.",
        ]
        .map(String::from)
        .to_vec();
    }
    let model = Model::load(&path, &ModelOptions::default())?;
    let batcher = Batcher::new(model.clone(), prompts.len(), SessionOptions::new(1024))?;
    let requests = prompts
        .iter()
        .map(|p| {
            let turn = [Message::new("user", p.as_str())];
            Ok((
                encode_chat(&model, &turn, true)?,
                SamplingParams::greedy(),
                64,
            ))
        })
        .collect::<fado::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let outs = batcher.generate_all(&requests)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut tokens = 0;
    for (p, g) in prompts.iter().zip(&outs) {
        tokens += g.tokens.len();
        let text = model.tokenizer.decode_with(&g.tokens, true);
        println!("> {p}\n{}\n", text.trim());
    }
    let st = batcher.stats();
    println!(
        "[{tokens} tokens in {secs:.1} s: {:.1} tok/s aggregate; {} batched steps, {:.1} rows each]",
        tokens as f64 / secs,
        st.batches,
        st.rows as f64 / st.batches.max(1) as f64
    );
    Ok(())
}
