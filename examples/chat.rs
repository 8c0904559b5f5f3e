//! A multi-turn chat that reuses the session's KV cache between turns: each turn prefills only
//! the tokens after the common prefix of the cache and the re-rendered conversation.
//!
//!     cargo run --example chat -- MODEL_PATH

use fado::chat_template::Message;
use fado::generate::{encode_chat, generate_text, TextRequest};
use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::session::Session;

fn main() -> fado::Result<()> {
    let path = std::env::args().nth(1).expect("usage: chat MODEL_PATH");
    let model = Model::load(&path, &ModelOptions::default())?;
    let mut session = Session::new(model.clone(), 2048)?;
    let mut messages = Vec::new();
    for question in ["What is the capital of Portugal?", "And its largest river?"] {
        messages.push(Message::new("user", question));
        let ids = encode_chat(&model, &messages, true)?;
        let keep = session.reuse_prefix(&ids);
        let req = TextRequest {
            params: SamplingParams::greedy(),
            max_tokens: 64,
            stop: vec![],
        };
        let out = generate_text(&mut session, &ids[keep..], &req, &mut |_| true)?;
        println!(
            "user: {question}\nassistant: {}\n(prefilled {} new tokens, reused {keep})\n",
            out.text,
            ids.len() - keep
        );
        messages.push(Message::new("assistant", out.text));
    }
    Ok(())
}
