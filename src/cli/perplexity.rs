//! `fado perplexity`: a text's perplexity as llama.cpp's `llama-perplexity` computes it, and
//! the KL divergence from a saved reference run (see `fado::session::perplexity`).

use std::path::{Path, PathBuf};

use clap::Args;
use fado::session::kl_divergence::{KldStats, KldSummary};
use fado::session::logits_file::{Header, LogitsReader, LogitsWriter};
use fado::session::perplexity::{self, NllStats, Perplexity, Plan, Scored, DEFAULT_CTX};
use fado::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::ModelArgs;

#[derive(Args, Debug)]
#[command(mut_arg("ctx", |a| a.help(
    "Tokens per chunk (default 512 as llama-perplexity's, or the logits file's with \
     --kl-divergence); 8 to the model's trained context"
)))]
pub struct PerplexityArgs {
    /// Model, --ctx (tokens per chunk), --quant, --kv-type.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to evaluate (UTF-8); it must hold at least two chunks of --ctx tokens.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Evaluate at most this many chunks (default: all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Save every scored token's log-probabilities (the whole vocabulary up to 4096 tokens, else
    /// the top 128 and the remaining mass) for a later --kl-divergence.
    #[arg(long, value_name = "FILE", conflicts_with = "kl_divergence")]
    pub save_logits: Option<PathBuf>,
    /// Compare with the log-probabilities saved by --save-logits: KL divergence, Δppl, same top
    /// token.
    #[arg(long, value_name = "FILE")]
    pub kl_divergence: Option<PathBuf>,
}

/// What runs on each scored token besides the perplexity.
enum Observer {
    None,
    Save(LogitsWriter),
    Compare(Box<(LogitsReader, KldStats)>),
}

impl Observer {
    fn observe(&mut self, s: &Scored) -> Result<()> {
        match self {
            Observer::None => Ok(()),
            Observer::Save(w) => w.write(s),
            Observer::Compare(c) => {
                let rec = c.0.next_record()?;
                c.1.add(s, &rec);
                Ok(())
            }
        }
    }
}

pub fn perplexity(a: PerplexityArgs, adapter: Option<String>) -> Result<()> {
    let bytes = std::fs::read(&a.file).map_err(|e| Error::io(&a.file, e))?;
    // A bad reference file fails before the model loads.
    let reference = a
        .kl_divergence
        .as_deref()
        .map(LogitsReader::open)
        .transpose()?;
    let model = super::load::load(&a.model, adapter)?;
    let what = format!("--file {}", a.file.display());
    let tokens = perplexity::tokenize_text(&model, &bytes, &what)?;
    let head = reference.as_ref().map(|r| &r.header);
    let ctx = a.model.ctx.or(head.map(|h| h.ctx)).unwrap_or(DEFAULT_CTX);
    let plan = Plan::new(&model, &tokens, ctx, a.chunks.or(head.map(|h| h.chunks)))?;
    let mut observer = match (reference, &a.save_logits) {
        (Some(r), _) => {
            let path = a.kl_divergence.as_deref().unwrap_or(Path::new(""));
            r.header.check(
                &model,
                &plan,
                &format!("the logits file {}", path.display()),
            )?;
            Observer::Compare(Box::new((r, KldStats::default())))
        }
        (None, Some(p)) => Observer::Save(LogitsWriter::create(p, &Header::new(&model, &plan))?),
        (None, None) => Observer::None,
    };
    if !a.json {
        eprintln!(
            "{}: {} tokens, {} chunks of {} (scoring {} tokens each){}",
            model.name,
            tokens.len(),
            plan.chunks,
            plan.ctx,
            plan.scored_per_chunk(),
            if plan.bos.is_some() {
                ", BOS first"
            } else {
                ""
            }
        );
    }
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(plan.chunks as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("perplexity [{bar:30}] {pos}/{len} chunks {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = |done: usize, s: &NllStats| {
        bar.set_position(done as u64);
        bar.set_message(format!("ppl {:.4} ± {:.4}", s.ppl(), s.ppl_stderr()));
    };
    let result = perplexity::run(
        &model,
        &plan,
        a.model.kv_type,
        &mut |s| observer.observe(s),
        &mut progress,
    );
    bar.finish_and_clear();
    let p = result?;
    let kld = match observer {
        Observer::Save(w) => {
            w.finish()?;
            None
        }
        Observer::Compare(c) => Some(c.1.summary()),
        Observer::None => None,
    };
    report(&a, &model.name, &p, kld.as_ref());
    Ok(())
}

fn report(a: &PerplexityArgs, model: &str, p: &Perplexity, kld: Option<&KldSummary>) {
    if a.json {
        let mut v = serde_json::json!({
            "model": model,
            "file": a.file.display().to_string(),
            "ppl": p.stats.ppl(),
            "ppl_stderr": p.stats.ppl_stderr(),
            "mean_nll": p.stats.mean(),
            "tokens_scored": p.stats.count,
            "tokens_evaluated": p.tokens_evaluated,
            "chunks": p.chunks,
            "ctx": p.ctx,
            "kv_type": a.model.kv_type.name(),
            "prefill_tokens_per_s": p.tokens_per_s(),
        });
        if let (Some(k), Some(obj)) = (kld, v.as_object_mut()) {
            obj.insert(
                "kl_divergence".into(),
                serde_json::to_value(k).unwrap_or_default(),
            );
        }
        println!("{v}");
        return;
    }
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        p.stats.ppl(),
        p.stats.ppl_stderr()
    );
    println!(
        "{} tokens scored in {} chunks of {}; prefill {:.1} tokens/s (every row's logits read back)",
        p.stats.count,
        p.chunks,
        p.ctx,
        p.tokens_per_s()
    );
    if let Some(k) = kld {
        println!("Mean PPL(base)             : {:10.6}", k.ppl_base);
        println!(
            "Mean PPL(Q)-PPL(base)      : {:10.6} ± {:10.6}",
            k.delta_ppl, k.delta_ppl_stderr
        );
        println!(
            "Mean ln(PPL(Q)/PPL(base))  : {:10.6} ± {:10.6}",
            k.ln_ppl_ratio, k.ln_ppl_ratio_stderr
        );
        println!(
            "Mean    KLD: {:10.6} ± {:10.6}",
            k.mean_kld, k.mean_kld_stderr
        );
        println!("Maximum KLD: {:10.6}", k.max_kld);
        println!("99.0%   KLD: {:10.6}", k.p99_kld);
        println!("Median  KLD: {:10.6}", k.median_kld);
        println!(
            "Same top p: {:6.3} ± {:5.3} %",
            100.0 * k.same_top,
            100.0 * k.same_top_stderr
        );
    }
}
