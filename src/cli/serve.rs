//! `fado serve`: the OpenAI-compatible HTTP server (the library's `fado::server` does the work).

use clap::Args;
use fado::server::{serve, Server, ServerConfig};
use fado::{Error, Result};

use super::args::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind. The default serves this machine only; use 0.0.0.0 to serve the network
    /// (then also set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Names to answer to (repeatable, or several after one flag), as vLLM's flag: the first
    /// is reported in responses and /v1/models, and requests may name any of them (or
    /// `default`). Default: the model's file name, with or without its extension. Clients that
    /// hard-code a model name (e.g. `gpt-4o-mini`) work with it listed here.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long, env = "FADO_API_KEY")]
    pub api_key: Option<String>,
    /// Requests generating at once. Their KV caches share one pool of --ctx × --parallel
    /// tokens: each request gets prompt + max_tokens of it (without max_tokens, up to --ctx),
    /// so one long conversation may use what short ones leave free; a request that does not
    /// fit while others run waits for one to finish. Their decode steps run as one batched
    /// step (each weight read once per step for all of them), up to 16 rows a step.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Requests that may wait for a free slot; beyond that the server answers 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Largest max_tokens a request may ask for (also the default).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_cap: usize,
    /// Do not reuse a slot's cached prompt prefix for the next request.
    #[arg(long)]
    pub no_prefix_cache: bool,
}

/// `fado serve`: load the model, start the server and serve until Ctrl-C.
pub fn serve_cmd(a: ServeArgs, adapter: Option<String>) -> Result<()> {
    let model = super::load::load(&a.model, adapter)?;
    let ctx = a.model.ctx_for(model.config.max_position_embeddings);
    let cfg = ServerConfig {
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        parallel: a.parallel,
        queue: a.queue,
        max_body: a.max_body,
        max_tokens_cap: a.max_tokens_cap,
        ctx,
        kv_type: a.model.kv_type,
        prefix_cache: !a.no_prefix_cache,
        served_model_names: a.served_model_name.clone(),
    };
    let server = Server::new(model.clone(), cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("could not start the async runtime: {e}")))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Config(format!("could not listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Config(format!("could not read the bound address: {e}")))?;
        eprintln!(
            "fado serve — {} on {} | {} slot(s) × {ctx} tokens | http://{bound}/v1",
            model.name,
            model.ctx.adapter_name(),
            a.parallel
        );
        if a.api_key.is_none() && !listener.local_addr().is_ok_and(|x| x.ip().is_loopback()) {
            eprintln!("warning: serving beyond this machine without --api-key");
        }
        serve(listener, server, async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("shutting down");
        })
        .await
        .map_err(|e| Error::Config(format!("server error: {e}")))
    })
}
