//! `fado bench`: prompt processing (pp) and token generation (tg) speed, llama-bench style.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use fado::gpu::{GpuContext, GpuOptions};
use fado::model::{synthetic, Model};
use fado::rng::Rng;
use fado::sampling::SamplingParams;
use fado::session::{Batcher, Session, SessionOptions};
use fado::tensor::DType;
use fado::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Benchmark random weights of a preset's exact shapes instead of a file:
    /// amalia-9b, smollm2-135m, or a config.json path.
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Weight type for --synthetic: bf16 (default), f16, f32, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k.
    #[arg(long, requires = "synthetic")]
    pub dtype: Option<String>,
    /// Prompt tokens for the pp test (llama-bench's -p; no short flag here, since `-p` is the
    /// prompt text in `fado run`).
    #[arg(long = "prompt-tokens", default_value_t = 512)]
    pub pp: usize,
    /// Generated tokens for the tg test (llama-bench's -n).
    #[arg(long = "gen-tokens", default_value_t = 128)]
    pub tg: usize,
    /// Repetitions (mean ± stddev).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Time every op of one decode step and of one prefill chunk of --prompt-tokens with
    /// timestamp queries and print the time per op kind.
    #[arg(long)]
    pub profile: bool,
    /// Also time batched decode: for each count (comma-separated, e.g. 1,4,16), that many
    /// sequences generate --gen-tokens each at once through one pool, and the aggregate
    /// tokens/s over the whole run is reported (each sequence's 16-token random prompt is
    /// prefilled within it: use a --gen-tokens much larger than 16).
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    DType::from_name(s).ok_or_else(|| {
        Error::Config(format!(
            "--dtype `{s}`: expected {}",
            DType::list(&DType::WEIGHT_TYPES)
        ))
    })
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// Bytes a decode step reads: every matrix and norm once, one embedding row.
fn bytes_per_token(m: &Model) -> u64 {
    let w = &m.weights;
    let mut b: u64 = w
        .layers
        .iter()
        .map(|l| {
            l.attn_norm.size_bytes()
                + l.qkv.iter().map(|t| t.size_bytes()).sum::<u64>()
                + l.o.size_bytes()
                + l.mlp_norm.size_bytes()
                + l.gate_up.iter().map(|t| t.size_bytes()).sum::<u64>()
                + l.down.size_bytes()
        })
        .sum();
    b += w.norm.size_bytes() + w.lm_head.size_bytes();
    b += w.embed.size_bytes() / m.config.vocab_size as u64;
    b
}

/// The model `a` names, or synthetic weights of its preset.
fn bench_model(a: &BenchArgs, adapter: Option<String>) -> Result<Arc<Model>> {
    Ok(match &a.synthetic {
        Some(name) => {
            let cfg = synthetic::config_by_name(name)?;
            let dtype = parse_dtype(a.dtype.as_deref().unwrap_or("bf16"))?;
            let ctx = GpuContext::new(&GpuOptions {
                adapter,
                ..GpuOptions::from_env()
            })?;
            eprintln!(
                "generating synthetic {name} weights ({dtype}) on {}…",
                ctx.adapter_name()
            );
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "generating weights [{bar:30}] {pos}/{len} matrices ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            if a.json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let b = bar.clone();
            let progress = move |done: u64, total: u64| {
                b.set_length(total);
                b.set_position(done);
            };
            let m = Model::synthetic(ctx, name, cfg, dtype, Some(&progress));
            bar.finish_and_clear();
            m?
        }
        None => super::load::load(&a.model, adapter)?,
    })
}

/// `fado bench`: time a random prompt's prefill (pp) and single-token steps (tg) after a
/// warm-up, `reps` times, and print mean ± stddev (text or `--json`).
pub fn bench(a: BenchArgs, adapter: Option<String>) -> Result<()> {
    if a.reps == 0 || a.tg == 0 || a.pp == 0 {
        return Err(Error::Request(
            "--prompt-tokens, --gen-tokens and --reps must be at least 1".into(),
        ));
    }
    let model = bench_model(&a, adapter)?;
    let vocab = model.config.vocab_size as u32;
    let mut rng = Rng::new(7);
    let prompt: Vec<u32> = (0..a.pp).map(|_| rng.below(vocab)).collect();
    let opts = SessionOptions {
        ctx: a.pp + a.tg + 1,
        kv_type: a.model.kv_type,
    };
    let mut session = Session::with_options(model.clone(), opts)?;

    let runs = time_reps(&a, &model, &mut session, &prompt)?;
    let (pp, tg, stats) = (runs.pp, runs.tg, runs.stats);
    let (ppm, pps) = mean_std(&pp);
    let (tgm, tgs) = mean_std(&tg);
    let weight_bpt = bytes_per_token(&model);
    // Attention reads every cached row of every layer once per token: on average over the tg
    // run, pp + (tg + 1) / 2 of the session's rows.
    let kv_bytes = session.kv_bytes();
    let mean_rows = a.pp as f64 + (a.tg as f64 + 1.0) / 2.0;
    let kv_bpt = (kv_bytes as f64 * mean_rows / session.capacity() as f64) as u64;
    let bpt = weight_bpt + kv_bpt;
    let gbps = bpt as f64 * tgm / 1e9;
    let dispatches = session.decode_dispatches()?;
    // Per generated token, over every repetition: blocking waits that left the GPU without
    // a queued step (the pipeline's point is to make none), and all blocking waits.
    let (tokens, syncs, idle) = stats
        .iter()
        .fold((0, 0, 0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2));
    let host_waits = idle as f64 / tokens.max(1) as f64;
    let host_syncs = syncs as f64 / tokens.max(1) as f64;
    let batches = bench_batches(&a, &model)?;
    if a.json {
        let batch: Vec<_> = batches
            .iter()
            .map(|b| {
                serde_json::json!({"streams": b.streams, "tg_tokens_per_s": b.tokens_per_s,
                    "rows_per_step": b.rows_per_step, "dispatches_per_step": b.dispatches})
            })
            .collect();
        let v = serde_json::json!({
            "batch": batch,
            "model": model.name,
            "adapter": model.ctx.adapter_name(),
            "prefill_matmul": fado::ops::matmul::coop::prefill_path(&model.ctx.caps),
            "weights_bytes": model.weights_bytes,
            "bytes_per_decode_token": bpt,
            "weight_bytes_per_decode_token": weight_bpt,
            "kv_bytes_per_decode_token": kv_bpt,
            "kv_type": a.model.kv_type.name(),
            "kv_bytes": kv_bytes,
            "dispatches_per_token": dispatches,
            "host_waits_per_token": host_waits,
            "host_syncs_per_token": host_syncs,
            "pipeline_depth": fado::session::DEPTH,
            "prompt_tokens": a.pp,
            "gen_tokens": a.tg,
            "reps": a.reps,
            "pp_tokens_per_s": {"mean": ppm, "stddev": pps},
            "tg_tokens_per_s": {"mean": tgm, "stddev": tgs},
            "effective_gb_per_s": gbps,
        });
        println!("{v}");
    } else {
        println!("model:    {}", model.name);
        println!(
            "adapter:  {} (prefill matmul: {})",
            model.ctx.adapter_name(),
            fado::ops::matmul::coop::prefill_path(&model.ctx.caps)
        );
        println!(
            "weights:  {:.2} GB on the GPU; KV cache {:.1} MB ({}); a decode step reads {:.3} GB \
             (KV {:.1} MB) in {dispatches} dispatches",
            model.weights_bytes as f64 / 1e9,
            kv_bytes as f64 / 1e6,
            a.model.kv_type,
            bpt as f64 / 1e9,
            kv_bpt as f64 / 1e6
        );
        println!("| test   |           t/s |");
        println!("|--------|---------------|");
        println!("| pp{:<4} | {:>7.1} ± {:<4.1} |", a.pp, ppm, pps);
        println!("| tg{:<4} | {:>7.1} ± {:<4.1} |", a.tg, tgm, tgs);
        println!("effective bandwidth in tg: {gbps:.1} GB/s");
        println!(
            "tg host waits per token: {host_waits:.3} leaving the GPU idle, {host_syncs:.3} in \
             all ({} steps in flight)",
            fado::session::DEPTH
        );
        for b in &batches {
            println!(
                "batched tg{} × {:>2} streams: {:>7.1} t/s aggregate ({:.1} rows per step, {} \
                 dispatches per step)",
                a.tg, b.streams, b.tokens_per_s, b.rows_per_step, b.dispatches
            );
        }
    }
    if a.profile {
        // A decode step after the prompt (the timed runs may have filled the cache), then the
        // prompt's first chunk from an empty cache.
        session.reset();
        session.prefill(&prompt, 1)?;
        print_profile(
            &format!("decode step at position {}", a.pp),
            &session.profile_decode()?,
        );
        session.reset();
        let pp = a.pp.min(fado::model::PREFILL_CHUNK);
        print_profile(
            &format!("prefill of {pp} tokens"),
            &session.profile_step(pp)?,
        );
    }
    Ok(())
}

/// One `--batch` measurement.
struct BatchRun {
    streams: usize,
    tokens_per_s: f64,
    rows_per_step: f64,
    dispatches: usize,
}

/// `--batch`: for each count, a warm-up (every batch size's graph compiled) and one timed run
/// of that many sequences generating `a.tg` tokens each at once.
fn bench_batches(a: &BenchArgs, model: &Arc<Model>) -> Result<Vec<BatchRun>> {
    let mut out = Vec::new();
    let vocab = model.config.vocab_size as u32;
    for &n in &a.batch {
        if n == 0 || n > fado::ops::MAX_ROWS {
            return Err(Error::Request(format!(
                "--batch {n}: expected 1 ..= {} sequences",
                fado::ops::MAX_ROWS
            )));
        }
        let opts = SessionOptions {
            ctx: 16 + a.tg + 1,
            kv_type: a.model.kv_type,
        };
        let batcher = Batcher::new(model.clone(), n, opts)?;
        let mut rng = Rng::new(11);
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy()
        };
        let reqs = |tokens: usize, rng: &mut Rng| -> Vec<_> {
            (0..n)
                .map(|_| {
                    let p: Vec<u32> = (0..16).map(|_| rng.below(vocab)).collect();
                    (p, params.clone(), tokens)
                })
                .collect()
        };
        batcher.generate_all(&reqs(4, &mut rng))?;
        let before = batcher.stats();
        let t0 = std::time::Instant::now();
        let gens = batcher.generate_all(&reqs(a.tg, &mut rng))?;
        let secs = t0.elapsed().as_secs_f64();
        let st = batcher.stats();
        let tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
        out.push(BatchRun {
            streams: n,
            tokens_per_s: tokens as f64 / secs,
            rows_per_step: (st.rows - before.rows) as f64
                / (st.batches - before.batches).max(1) as f64,
            dispatches: batcher.dispatches(n)?,
        });
        if a.profile {
            let p = batcher.profile(n, 16 + a.tg / 2)?;
            print_profile(&format!("batched step of {n} rows"), &p);
        }
    }
    Ok(out)
}

/// The timed repetitions of [`bench`].
struct Runs {
    /// pp tokens/s per repetition.
    pp: Vec<f64>,
    /// tg tokens/s per repetition.
    tg: Vec<f64>,
    /// (tokens, blocking waits, waits leaving the GPU idle) of each tg run.
    stats: Vec<(u64, u64, u64)>,
}

/// A warm-up, then `a.reps` times: prefill `prompt` (pp), then decode `a.tg` tokens (tg).
fn time_reps(a: &BenchArgs, model: &Model, session: &mut Session, prompt: &[u32]) -> Result<Runs> {
    let vocab = model.config.vocab_size as u32;
    // Progress in tokens over the warm-up and every repetition; on a terminal only, never
    // with --json (the bar draws on standard error, which indicatif hides when redirected).
    let per_rep = (a.pp + a.tg) as u64;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(per_rep * (a.reps as u64 + 1))
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:<22} [{bar:30}] {pos}/{len} tokens ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    // Warm-up: builds the graphs (pipelines, bind groups) outside the timed region.
    bar.set_message("warm-up (compiling)");
    session.prefill(prompt, 1)?;
    let warm = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    session.generate(&[1], &warm, 2, &mut |_| true)?;
    model.ctx.sync()?;
    bar.inc(per_rep);

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut stats = Vec::new();
    // tg runs the pipelined generation (the sampler in the graph, steps queued ahead), greedy
    // and past any EOS, so every repetition decodes exactly `tg` tokens.
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    for r in 0..a.reps {
        session.reset();
        bar.set_message(format!("pp{} rep {}/{}", a.pp, r + 1, a.reps));
        let t0 = Instant::now();
        let c = session.prefill(prompt, 1)?;
        model.ctx.sync()?;
        pp.push(a.pp as f64 / t0.elapsed().as_secs_f64());
        bar.inc(a.pp as u64);
        bar.set_message(format!("tg{} rep {}/{}", a.tg, r + 1, a.reps));
        let before = session.decode_stats();
        let first = c.first().map_or(0, |c| c.0.min(vocab - 1));
        let g = session.generate(&[first], &params, a.tg + 1, &mut |_| {
            bar.inc(1);
            true
        })?;
        tg.push(g.decode_tokens_per_s());
        let after = session.decode_stats();
        stats.push((
            after.tokens - before.tokens,
            after.syncs - before.syncs,
            after.idle_waits - before.idle_waits,
        ));
    }
    bar.finish_and_clear();
    Ok(Runs { pp, tg, stats })
}

/// The time of one step by op kind and by kernel entry point (`--profile`).
fn print_profile(what: &str, p: &fado::model::Profile) {
    let total: f64 = p.entries.iter().map(|e| e.2).sum();
    eprintln!(
        "{what} profile ({} dispatches, {:.3} ms GPU time):",
        p.entries.len(),
        total * 1e3
    );
    for (kind, s) in p.by_kind() {
        eprintln!(
            "  {kind:<20} {:>9.3} ms  {:>5.1} %",
            s * 1e3,
            100.0 * s / total.max(1e-12)
        );
    }
    // The same time by kernel entry point (an op may run several kernels).
    let mut by_entry: Vec<(String, f64, usize)> = Vec::new();
    for (_, entry, s) in &p.entries {
        match by_entry.iter_mut().find(|e| &e.0 == entry) {
            Some(e) => {
                e.1 += s;
                e.2 += 1;
            }
            None => by_entry.push((entry.clone(), *s, 1)),
        }
    }
    by_entry.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("by kernel:");
    for (entry, s, n) in by_entry {
        eprintln!(
            "  {entry:<20} {:>9.3} ms  {n:>4} dispatches  {:>8.1} µs each",
            s * 1e3,
            s * 1e6 / n as f64
        );
    }
}
