//! The `fado` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "fado",
    version,
    about = "Portable GPU inference for Llama-family LLMs (AMALIA, EuroLLM, Llama, SmolLM2) on any Vulkan/Metal/DX12 GPU"
)]
struct Args {
    /// GPU adapter to use: index or name substring (see `fado devices`). Also FADO_ADAPTER.
    #[arg(long, global = true, env = "FADO_ADAPTER")]
    adapter: Option<String>,
    /// Print the full error chain and debug logs.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List GPU adapters with their backend, type, features and key limits.
    Devices,
    /// Generate text from a prompt.
    Run(cli::run::RunArgs),
    /// Multi-turn chat in the terminal.
    Chat(cli::run::ChatArgs),
    /// Prompt-processing and generation speed (llama-bench style), on a model or synthetic weights.
    Bench(cli::bench::BenchArgs),
    /// OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models).
    Serve(cli::serve::ServeArgs),
    /// Perplexity of a text (llama-perplexity's method), and KL divergence from a saved run.
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Write a GGUF with block-quantized weights (q8_0, q4_0, q4_k) from a Hugging Face folder or a GGUF.
    Quantize(cli::quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The server logs a line per request at info level; other commands only warnings unless
    // -v. RUST_LOG overrides both.
    let filter = if args.verbose {
        "fado=debug"
    } else if matches!(args.cmd, Cmd::Serve(_)) {
        "fado=info"
    } else {
        "fado=warn"
    };
    let serving = matches!(args.cmd, Cmd::Serve(_));
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(args.verbose);
    // A server's log wants timestamps; a one-shot command's warnings read better without.
    if serving {
        log.init();
    } else {
        log.without_time().init();
    }
    let result = match args.cmd {
        Cmd::Devices => cli::devices(),
        Cmd::Run(a) => cli::run::run(a, args.adapter),
        Cmd::Chat(a) => cli::run::chat(a, args.adapter),
        Cmd::Bench(a) => cli::bench::bench(a, args.adapter),
        Cmd::Serve(a) => cli::serve::serve_cmd(a, args.adapter),
        Cmd::Perplexity(a) => cli::perplexity::perplexity(a, args.adapter),
        Cmd::Quantize(a) => cli::quantize::quantize(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if args.verbose {
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    eprintln!("  caused by: {s}");
                    src = s.source();
                }
            }
            ExitCode::FAILURE
        }
    }
}
