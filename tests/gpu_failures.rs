//! GPU out-of-memory and device loss: a context, a model or a server larger than the device
//! allows is an error naming what failed and the bytes needed vs available (not a panic, not an
//! abort); after the device is lost, `/health` says unhealthy and requests get a JSON error.
//!
//! Each test opens its own device: the device-loss test destroys it.

mod common;
#[path = "common/server.rs"]
mod server_common;
use server_common::*;

use std::sync::Arc;

use fado::config::LlamaConfig;
use fado::gpu::{GpuContext, GpuOptions};
use fado::model::Model;
use fado::server::{Server, ServerConfig};
use fado::session::Session;
use fado::tensor::DType;
use fado::Error;
use serde_json::Value;

fn own_device() -> Arc<GpuContext> {
    GpuContext::new(&GpuOptions::from_env()).expect("a Vulkan adapter (lavapipe)")
}

fn tiny_on(ctx: Arc<GpuContext>) -> Arc<Model> {
    common::load_on(ctx, common::fixture("tiny-llama"))
}

/// The error is OutOfMemory and its message gives both byte counts and names `what`.
fn assert_oom(e: &Error, what: &str) {
    let msg = e.to_string();
    match e {
        Error::OutOfMemory {
            needed, available, ..
        } => {
            assert!(needed > available, "{msg}");
            assert!(
                msg.contains(&needed.to_string()) && msg.contains(&available.to_string()),
                "{msg}"
            );
        }
        other => panic!("expected an out-of-memory error, got {other:?}"),
    }
    assert!(msg.contains(what), "`{what}` not named in: {msg}");
}

#[test]
fn a_context_larger_than_the_device_is_an_error_with_the_numbers() {
    let model = tiny_on(own_device());
    for ctx in [1usize << 40, usize::MAX] {
        let e = Session::new(model.clone(), ctx)
            .err()
            .unwrap_or_else(|| panic!("a {ctx}-token session was created"));
        assert_oom(&e, &format!("session of {ctx} tokens"));
        assert!(e.to_string().contains("--ctx"), "no advice: {e}");
    }
    // The server allocates its slots' sessions at start: the same error, before serving.
    let e = Server::new(
        model.clone(),
        ServerConfig {
            ctx: 1 << 40,
            ..Default::default()
        },
    )
    .err()
    .expect("a server with a 2^40-token context started");
    assert_oom(&e, "KV cache");
    // The device still works.
    let mut s = Session::new(model, 64).expect("a small session after the failures");
    assert!(!s.prefill(&[0, 5, 9], 1).unwrap().is_empty());
}

#[test]
fn a_model_larger_than_the_device_is_an_error_with_the_numbers() {
    let ctx = own_device();
    let max = ctx.caps.max_buffer;
    // An f32 embedding table of vocab × 4096: one row too many for the largest buffer.
    let hidden = 4096usize;
    let vocab = (max / (hidden as u64 * 4)) as usize + 1;
    let cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 32,
        num_key_value_heads: 32,
        head_dim: 128,
        ..fado::model::synthetic::smollm2_135m()
    };
    let e = Model::synthetic(ctx, "huge", cfg, DType::F32, None)
        .err()
        .expect("a model over max_buffer_size loaded");
    assert_oom(&e, "embed_tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_makes_health_unhealthy_and_requests_fail_with_json_errors() {
    let gpu = own_device();
    let model = tiny_on(gpu.clone());
    let (h, base) = start_with(model, cfg(1)).await;
    let c = client();
    let ok = post(
        &c,
        format!("{base}/v1/chat/completions"),
        &chat_body("Hi", 3, false),
        "request",
    )
    .await;
    assert_eq!(ok.status(), 200, "before the loss");
    assert_eq!(health(&c, &base).await["status"], "ok");

    // Lose the device for real: wgpu's device-lost callback must report it.
    gpu.device.destroy();
    let _ = gpu.device.poll(wgpu::PollType::Poll);
    let t0 = std::time::Instant::now();
    let v: Value = loop {
        let r = c.get(format!("{base}/health")).send().await.unwrap();
        if r.status() == 503 {
            break r.json().await.expect("health JSON");
        }
        assert!(
            t0.elapsed() < REQUEST_TIMEOUT,
            "health stayed ok after Device::destroy()"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("lost"), "{v}");
    for stream in [false, true] {
        let r = post(
            &c,
            format!("{base}/v1/chat/completions"),
            &chat_body("Hi", 3, stream),
            "request",
        )
        .await;
        let e = expect_error(r, 503, "a request after the loss").await;
        assert_eq!(e["error"]["code"], "device_lost", "{e}");
    }
    h.shutdown().await;
}
