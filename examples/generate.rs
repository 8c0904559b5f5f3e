//! Plain generation through the library: load a model, open a session, stream tokens.
//!
//!     cargo run --example generate -- MODEL_PATH "The capital of Portugal is"

use std::io::Write;

use fado::generate::{encode_raw, generate_text, TextRequest};
use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::session::Session;

fn main() -> fado::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: generate MODEL_PATH [PROMPT]");
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let model = Model::load(&path, &ModelOptions::default())?;
    let mut session = Session::new(model.clone(), 1024)?;
    let ids = encode_raw(&model, &prompt)?;
    let req = TextRequest {
        params: SamplingParams::greedy(),
        max_tokens: 48,
        stop: vec![],
    };
    print!("{prompt}");
    let out = generate_text(&mut session, &ids, &req, &mut |t| {
        print!("{t}");
        std::io::stdout().flush().is_ok()
    })?;
    println!(
        "\n[{} tokens, {:.1} tok/s]",
        out.generation.tokens.len(),
        out.generation.decode_tokens_per_s()
    );
    Ok(())
}
