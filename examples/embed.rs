//! Embedding Fado in another program: one model shared by worker threads, each with its own
//! session (KV cache), reporting tokens through a callback.
//!
//!     cargo run --example embed -- MODEL_PATH

use std::sync::Arc;
use std::thread;

use fado::generate::{encode_raw, generate_text, TextRequest};
use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::session::Session;

fn main() -> fado::Result<()> {
    let path = std::env::args().nth(1).expect("usage: embed MODEL_PATH");
    let model: Arc<Model> = Model::load(&path, &ModelOptions::default())?;
    let handles: Vec<_> = ["Lisbon is", "Porto is"]
        .into_iter()
        .map(|prompt| {
            let model = model.clone();
            thread::spawn(move || -> fado::Result<String> {
                let mut s = Session::new(model.clone(), 256)?;
                let ids = encode_raw(&model, prompt)?;
                let req = TextRequest {
                    params: SamplingParams::greedy(),
                    max_tokens: 16,
                    stop: vec!["\n".into()],
                };
                Ok(format!(
                    "{prompt}{}",
                    generate_text(&mut s, &ids, &req, &mut |_| true)?.text
                ))
            })
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok(r) => println!("{}", r?),
            Err(_) => eprintln!("a worker panicked"),
        }
    }
    Ok(())
}
