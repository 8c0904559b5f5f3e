//! Decode speed with and without a JSON-schema constraint (issue 20's "≥ 80% of
//! unconstrained"): the same prompt, greedy, a fixed number of tokens each way, alternated
//! three times so machine load hits both alike.
//!
//! ```text
//! cargo run --release --example constrained_speed -- [model.gguf] [tokens]
//! ```

use std::sync::Arc;

use fado::chat_template::Message;
use fado::constrain::GrammarSpec;
use fado::generate::encode_chat;
use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::session::Session;

fn main() -> fado::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/root/.cache/fado/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let model: Arc<Model> = Model::load(&path, &ModelOptions::default())?;
    let prompt = encode_chat(
        &model,
        &[Message::new("user", "Write a long story as JSON.")],
        true,
    )?;
    // Long strings, so the constrained run also lasts `n` tokens (it ends with `length`).
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"title": {"type": "string"}, "story": {"type": "string", "minLength": 4000}},
        "required": ["title", "story"], "additionalProperties": false
    });
    let t = std::time::Instant::now();
    let constraint = model.constraint(GrammarSpec::JsonSchema(schema))?;
    println!(
        "token env + compile: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let free = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let constrained = SamplingParams {
        constraint: Some(constraint),
        ..SamplingParams::greedy()
    };
    let mut session = Session::new(model.clone(), 1024)?;
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..4 {
        for (i, p) in [&free, &constrained].into_iter().enumerate() {
            session.reset();
            let before = session.decode_stats();
            let g = session.generate(&prompt, p, n, &mut |_| true)?;
            let after = session.decode_stats();
            // Round 0 warms up (compiles both graphs).
            if round > 0 {
                rates[i].push(g.decode_tokens_per_s());
            }
            // Waits that left the GPU without queued work (see DecodeStats::idle_waits).
            println!(
                "round {round} {}: {} tokens, {:.2} tok/s ({:?}), {} idle host waits",
                ["unconstrained", "constrained"][i],
                g.tokens.len(),
                g.decode_tokens_per_s(),
                g.finish_reason,
                after.idle_waits - before.idle_waits
            );
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (f, c) = (mean(&rates[0]), mean(&rates[1]));
    println!(
        "mean decode: unconstrained {f:.2} tok/s, constrained {c:.2} tok/s ({:.0}%)",
        100.0 * c / f
    );
    Ok(())
}
