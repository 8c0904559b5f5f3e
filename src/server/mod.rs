//! `fado serve`: an OpenAI-compatible HTTP server over one loaded [`Model`].
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both with SSE streaming),
//! `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` (slot occupancy and counters; 503
//! `"unhealthy"` once the GPU device is lost, when requests get 503 `device_lost` too),
//! `GET /metrics` (Prometheus text, [`metrics`]).
//! Errors use OpenAI's JSON shape ([`api::ApiError`]).
//!
//! Requests are parsed and tokenized on the async side (tokenizing on a blocking thread), then
//! queued for one of `parallel` slots ([`scheduler`]); generation runs on the slot's own thread
//! and streams text back through a channel, so the async runtime never waits on the GPU. The
//! slots' decode steps are batched (`session::batch`).
//!
//! ```no_run
//! # async fn f(model: std::sync::Arc<fado::model::Model>) -> fado::Result<()> {
//! use fado::server::{Server, ServerConfig};
//! let server = Server::new(model, ServerConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let handle = server.spawn(listener).map_err(|e| fado::Error::io("listener", e))?;
//! println!("listening on http://{}", handle.addr);
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod metrics;
mod respond;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::constrain::{Constraint, GrammarSpec};
use crate::error::{Error, Result};
use crate::generate::{encode_chat_with_tools, encode_raw};
use crate::model::Model;
use crate::session::{KvType, SessionOptions};
use crate::tools::{call_grammar, Tool, ToolChoice};
use api::{text_request, ApiError, Endpoint, GenParams, Prompt, ResponseMeta};
use metrics::Metrics;
use respond::{stream_response, whole_response};
use scheduler::{Job, Rejected, Scheduler, Stats};

/// Server settings (the `fado serve` flags).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Required as `Authorization: Bearer KEY` on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Slots: sessions generating at the same time.
    pub parallel: usize,
    /// Requests that may wait for a slot; one more gets 429.
    pub queue: usize,
    /// Largest request body in bytes; larger gets 413.
    pub max_body: usize,
    /// Largest `max_tokens` a request may ask for; also the default.
    pub max_tokens_cap: usize,
    /// Context (KV cache) of each slot in tokens.
    pub ctx: usize,
    /// How each slot's KV cache stores keys and values.
    pub kv_type: KvType,
    /// Reuse a slot's cached prompt prefix for the next request.
    pub prefix_cache: bool,
    /// Names the server answers to (vLLM's `--served-model-name`): the first is the one it
    /// reports; requests may name any of them or `default`. Empty: the model's file name (with
    /// or without its extension).
    pub served_model_names: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            parallel: 2,
            queue: 64,
            max_body: 1 << 20,
            max_tokens_cap: 4096,
            ctx: 4096,
            kv_type: KvType::default(),
            prefix_cache: true,
            served_model_names: Vec::new(),
        }
    }
}

struct Inner {
    model: Arc<Model>,
    cfg: ServerConfig,
    sched: Scheduler,
    /// Names a request's `model` may use; the first is the one reported.
    names: Vec<String>,
    counter: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A configured server: the model, its slots and the HTTP routes.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

/// A running server (from [`Server::spawn`]).
pub struct ServerHandle {
    /// The bound address (useful after binding port 0).
    pub addr: SocketAddr,
    server: Server,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// A snapshot of the slot and request counters ([`Server::stats`]).
    pub fn stats(&self) -> Stats {
        self.server.stats()
    }

    /// Stop accepting connections, wait for open ones to end, stop the slots.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
        let server = self.server.clone();
        let _ = tokio::task::spawn_blocking(move || server.inner.sched.shutdown()).await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Allocate the slots (each a session of `cfg.ctx` tokens) and start their threads.
    pub fn new(model: Arc<Model>, cfg: ServerConfig) -> Result<Server> {
        if cfg.max_tokens_cap == 0 {
            return Err(Error::Config("--max-tokens-cap must be at least 1".into()));
        }
        let metrics = Arc::new(Metrics::new());
        let sched = Scheduler::start(
            model.clone(),
            cfg.parallel,
            SessionOptions {
                ctx: cfg.ctx,
                kv_type: cfg.kv_type,
            },
            cfg.queue,
            cfg.prefix_cache,
            metrics.clone(),
        )?;
        let mut names = cfg.served_model_names.clone();
        if names.is_empty() {
            names.push(model.name.clone());
            for ext in [".gguf", ".safetensors"] {
                if let Some(stem) = model.name.strip_suffix(ext) {
                    names.push(stem.to_string());
                }
            }
        }
        if let Some(bad) = names.iter().find(|n| n.trim().is_empty()) {
            return Err(Error::Config(format!(
                "--served-model-name `{bad}`: a model name may not be empty"
            )));
        }
        names.push("default".to_string());
        Ok(Server {
            inner: Arc::new(Inner {
                model,
                cfg,
                sched,
                names,
                counter: AtomicU64::new(0),
                metrics,
            }),
        })
    }

    /// The model being served.
    pub fn model(&self) -> &Arc<Model> {
        &self.inner.model
    }

    /// A snapshot of the slot and request counters, as `GET /health` reports them.
    pub fn stats(&self) -> Stats {
        self.inner.sched.stats()
    }

    /// The routes, with the body limit and (if configured) the API-key check.
    pub fn router(&self) -> Router {
        let v1 = Router::new()
            .route("/chat/completions", post(chat_completions))
            .route("/completions", post(completions))
            .route("/models", get(list_models))
            .route("/models/{id}", get(get_model))
            .route_layer(middleware::from_fn_with_state(self.clone(), check_api_key));
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .nest("/v1", v1)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.inner.cfg.max_body))
            .layer(middleware::from_fn(log_request))
            .with_state(self.clone())
    }

    /// Serve on `listener` in a background task until [`ServerHandle::shutdown`].
    /// Must be called inside a tokio runtime.
    pub fn spawn(self, listener: tokio::net::TcpListener) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = self.clone();
        let task = tokio::spawn(serve(listener, self, async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle {
            addr,
            server,
            stop: Some(tx),
            task,
        })
    }
}

/// Serve until `shutdown` resolves, then wait for open connections to end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = server.router();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Requests refused before reaching a slot (4xx/5xx) get an info line here; the slots log
/// each generation they run (`scheduler::log_job`), so successful ones are debug-level only.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if status.is_client_error() || status.is_server_error() {
        tracing::info!("{method} {path}: {status} in {ms:.1} ms");
    } else {
        tracing::debug!("{method} {path}: {status} in {ms:.1} ms");
    }
    resp
}

async fn check_api_key(State(s): State<Server>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.inner.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()));
        if !ok {
            let msg = if given.is_none() {
                "missing API key: send `Authorization: Bearer KEY` (the server runs with --api-key)"
            } else {
                "incorrect API key provided"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", msg)
                .code("invalid_api_key")
                .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "unknown endpoint {} {}; this server has POST /v1/chat/completions, \
             POST /v1/completions, GET /v1/models, GET /health, GET /metrics",
            req.method(),
            req.uri().path()
        ),
    )
    .code("unknown_url")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .code("method_not_allowed")
}

/// 200 with `"status": "ok"` while the GPU works; 503 with `"status": "unhealthy"` and the
/// reason once the device is lost (load balancers take the instance out; it must be restarted).
async fn health(State(s): State<Server>) -> Response {
    let st = s.stats();
    let lost = s.inner.model.ctx.lost();
    let code = if lost.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut body = json!({
        "status": if lost.is_some() { "unhealthy" } else { "ok" },
        "model": s.inner.names[0],
        "slots": {"total": st.slots, "busy": st.busy},
        "queue": {"waiting": st.queued, "capacity": st.queue_capacity},
        "requests": {
            "completed": st.completed,
            "cancelled": st.cancelled,
            "failed": st.failed,
            "rejected": st.rejected,
        },
        // Batched decode: steps run for all decoding slots at once, and the rows they advanced.
        "batched": {"steps": st.batched_steps, "rows": st.batched_rows},
    });
    if let Some(why) = lost {
        body["error"] = json!(format!(
            "the GPU device was lost ({why}); restart the server"
        ));
    }
    (code, Json(body)).into_response()
}

/// Prometheus / OpenMetrics text (see [`metrics`]); like `/health`, no API key needed.
async fn metrics_text(State(s): State<Server>) -> Response {
    let st = s.stats();
    let total = s.inner.sched.kv_capacity(s.inner.cfg.ctx);
    let body = s
        .inner
        .metrics
        .render(st.busy, st.queued, st.kv_used, total);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn model_object(s: &Server) -> Value {
    json!({
        "id": s.inner.names[0],
        "object": "model",
        "created": 0,
        "owned_by": "fado",
        "context_length": s.inner.sched.max_sequence(s.inner.cfg.ctx),
    })
}

async fn list_models(State(s): State<Server>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&s)]}))
}

async fn get_model(State(s): State<Server>, Path(id): Path<String>) -> Response {
    match check_model(&s, Some(&id)) {
        Ok(()) => Json(model_object(&s)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_model(s: &Server, name: Option<&str>) -> std::result::Result<(), ApiError> {
    match name {
        None => Ok(()),
        Some(n) if s.inner.names.iter().any(|x| x == n) => Ok(()),
        Some(n) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model `{n}` does not exist; this server serves `{}` (also accepted: `default`)",
                s.inner.names[0]
            ),
        )
        .param("model")
        .code("model_not_found")),
    }
}

fn body_bytes(
    body: std::result::Result<Bytes, BytesRejection>,
    max: usize,
) -> std::result::Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than the server's limit of {max} bytes (--max-body)"),
            )
            .code("request_too_large")
        } else {
            ApiError::new(r.status(), "invalid_request_error", r.body_text())
        }
    })
}

async fn chat_completions(
    State(s): State<Server>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let body = body_bytes(body, s.inner.cfg.max_body)?;
        let req = api::parse_chat(&body)?;
        check_model(&s, req.gen.model.as_deref())?;
        let model = s.inner.model.clone();
        let (msgs, tools, choice) = (req.messages, req.tools, req.tool_choice);
        let rf = req.gen.response_format.clone();
        let (ids, constraint, tools, choice) = tokio::task::spawn_blocking(move || {
            let ids = encode_chat_with_tools(&model, &msgs, &tools, true)?;
            let c = request_constraint(&model, &tools, &choice, rf)?;
            Ok::<_, ApiError>((ids, c, tools, choice))
        })
        .await
        .map_err(|e| ApiError::from(Error::Config(format!("tokenizer task failed: {e}"))))??;
        let mut gen = req.gen;
        gen.params.constraint = constraint;
        let calls = (!tools.is_empty() && choice != ToolChoice::None).then(|| Arc::new(tools));
        start(&s, Endpoint::Chat, ids, gen, calls).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(s): State<Server>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let body = body_bytes(body, s.inner.cfg.max_body)?;
        let req = api::parse_completion(&body)?;
        check_model(&s, req.gen.model.as_deref())?;
        let model = s.inner.model.clone();
        let rf = req.gen.response_format.clone();
        let prompt = req.prompt;
        let (ids, constraint) = tokio::task::spawn_blocking(move || {
            let ids = match prompt {
                Prompt::Tokens(t) => t,
                Prompt::Text(text) => encode_raw(&model, &text)?,
            };
            let c = request_constraint(&model, &[], &ToolChoice::None, rf)?;
            Ok::<_, ApiError>((ids, c))
        })
        .await
        .map_err(|e| ApiError::from(Error::Config(format!("tokenizer task failed: {e}"))))??;
        let mut gen = req.gen;
        gen.params.constraint = constraint;
        start(&s, Endpoint::Completion, ids, gen, None).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The constraint a request runs under: a forced tool call's grammar, else its
/// `response_format`'s schema. Every declared function's parameter schema is compiled, so a
/// bad one is a 400 naming it even when no call is forced. Runs on a blocking thread
/// (compiling takes milliseconds; the model's first constraint builds its token trie).
fn request_constraint(
    model: &Model,
    tools: &[Tool],
    choice: &ToolChoice,
    response_format: Option<GrammarSpec>,
) -> std::result::Result<Option<Arc<Constraint>>, ApiError> {
    let compile = |spec: GrammarSpec, param: &str| {
        model.constraint(spec).map_err(|e| match e {
            Error::Request(m) => ApiError::invalid(format!("`{param}`: {m}")).param(param),
            e => ApiError::from(e),
        })
    };
    if *choice != ToolChoice::None {
        for (i, t) in tools.iter().enumerate() {
            let p = format!("tools[{i}].function.parameters");
            compile(GrammarSpec::JsonSchema(t.parameters.clone()), &p)?;
        }
    }
    if let Some(g) = call_grammar(tools, choice) {
        return compile(g, "tools").map(Some);
    }
    response_format
        .map(|spec| compile(spec, "response_format"))
        .transpose()
}

/// Check limits, queue the job and answer (streamed or whole).
async fn start(
    s: &Server,
    endpoint: Endpoint,
    prompt: Vec<u32>,
    gen: GenParams,
    tools: Option<Arc<Vec<Tool>>>,
) -> std::result::Result<Response, ApiError> {
    let cfg = &s.inner.cfg;
    if let Some(why) = s.inner.model.ctx.lost() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("the GPU device was lost ({why}); the server must be restarted"),
        )
        .code("device_lost"));
    }
    let n = s.inner.counter.fetch_add(1, Ordering::Relaxed);
    let seed = crate::sampling::clock_seed() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let vocab = s.inner.model.config.vocab_size;
    let max_sequence = s.inner.sched.max_sequence(cfg.ctx);
    let req = text_request(cfg, max_sequence, endpoint, &prompt, vocab, &gen, seed)?;
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    let id = format!("{prefix}-{:x}{n:06x}", now_secs());
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        id: id.clone(),
        prompt,
        req,
        top_logprobs: gen.logprobs,
        echo: gen.echo,
        n: gen.n,
        events: tx,
        arrived: std::time::Instant::now(),
    };
    s.inner.sched.submit(job).map_err(|r| match r {
        Rejected::QueueFull { capacity } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is busy: all {} slots are generating and {capacity} requests are \
                 already waiting (--parallel, --queue); retry shortly",
                cfg.parallel
            ),
        )
        .code("queue_full"),
        Rejected::Closed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
        .code("shutting_down"),
    })?;
    let meta = ResponseMeta {
        id,
        created: now_secs(),
        model: s.inner.names[0].clone(),
    };
    let lp = gen.logprobs.is_some().then(|| s.inner.model.clone());
    if gen.stream {
        Ok(stream_response(
            endpoint,
            meta,
            rx,
            gen.include_usage,
            lp,
            tools,
            gen.n,
        ))
    } else {
        whole_response(endpoint, meta, rx, lp, tools).await
    }
}
