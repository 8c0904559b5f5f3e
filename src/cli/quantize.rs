//! `fado quantize IN OUT.gguf --type q8_0|q4_0|q4_k`.

use std::path::PathBuf;

use clap::Args;
use fado::convert;
use fado::tensor::DType;
use fado::Result;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face folder (config.json, f32/f16/bf16 safetensors, tokenizer.json) or a GGUF
    /// file.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// Block format of the weight matrices: q8_0, q4_0 or q4_k.
    #[arg(long = "type", short = 't', value_parser = super::args::parse_quant)]
    pub dtype: DType,
}

/// `fado quantize`: [`fado::convert::quantize_model`] with a progress bar and a summary.
pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("quantizing [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let progress = move |done: u64, total: u64| {
        b.set_length(total);
        b.set_position(done);
    };
    let r = convert::quantize_model(&a.input, &a.output, a.dtype, Some(&progress));
    bar.finish_and_clear();
    let r = r?;
    let counts: Vec<String> = r.tensors.iter().map(|(d, n)| format!("{n} {d}")).collect();
    eprintln!(
        "wrote {} ({:.1} MB of tensors from {:.1} MB): {}",
        a.output.display(),
        r.bytes_out as f64 / 1e6,
        r.bytes_in as f64 / 1e6,
        counts.join(", ")
    );
    if let Some(line) = fado::quant::fallback_summary(&r.fallbacks, a.dtype) {
        eprintln!("  {line}");
    }
    if !r.requantized.is_empty() {
        eprintln!(
            "  {} tensors re-quantized from another block format (more error than quantizing \
             the original floats)",
            r.requantized.len()
        );
    }
    Ok(())
}
