//! `GET /metrics`: the server's counters, gauges and latency histograms in the OpenMetrics text
//! format Prometheus scrapes, written by the `prometheus-client` crate. Names follow vLLM's
//! (`vllm:` → `fado:`) where a counterpart exists, so existing dashboards need only the prefix
//! changed:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `fado:num_requests_running` | gauge | requests generating now |
//! | `fado:num_requests_waiting` | gauge | requests queued for a slot |
//! | `fado:request_success_total{finished_reason}` | counter | ended normally: `stop`, `length`, or `abort` (the client left) |
//! | `fado:request_failure_total` | counter | ended with an error |
//! | `fado:request_rejected_total` | counter | refused because the queue was full (429) |
//! | `fado:prompt_tokens_total` | counter | prompt tokens of finished requests (cached ones included) |
//! | `fado:generation_tokens_total` | counter | tokens generated |
//! | `fado:prefix_cache_queries_total` / `fado:prefix_cache_hits_total` | counter | prompt tokens looked up in / served from a slot's cached prefix |
//! | `fado:kv_cache_usage_perc` | gauge | KV rows held (running and cached sequences) over all slots' rows, 0–1 |
//! | `fado:time_to_first_token_seconds` | histogram | from the request's arrival in the queue to its first text |
//! | `fado:inter_token_latency_seconds` | histogram | between consecutive pieces of text of a stream |
//! | `fado:e2e_request_latency_seconds` | histogram | from arrival to the last token |
//! | `fado:request_queue_time_seconds` | histogram | waiting for a slot |

#![warn(missing_docs)]

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::session::FinishReason;

type Labels = Vec<(String, String)>;

/// The server's metrics; cheap to update from any thread (atomics).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    success: Family<Labels, Counter>,
    failure: Counter,
    rejected: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    prefix_queries: Counter,
    prefix_hits: Counter,
    kv_usage: Gauge<f64, AtomicU64>,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue_time: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 1 ms to ~9 min (lavapipe's steps are ~0.1 s, a GPU's ~10 ms).
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            running: Gauge::default(),
            waiting: Gauge::default(),
            success: Family::default(),
            failure: Counter::default(),
            rejected: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            prefix_queries: Counter::default(),
            prefix_hits: Counter::default(),
            kv_usage: Gauge::default(),
            ttft: latency_buckets(),
            itl: latency_buckets(),
            e2e: latency_buckets(),
            queue_time: latency_buckets(),
            registry: Registry::default(),
        };
        r.register(
            "fado:num_requests_running",
            "Requests generating now",
            m.running.clone(),
        );
        r.register(
            "fado:num_requests_waiting",
            "Requests waiting for a slot",
            m.waiting.clone(),
        );
        r.register(
            "fado:request_success",
            "Requests that ended normally, by finished_reason (stop, length, abort)",
            m.success.clone(),
        );
        r.register(
            "fado:request_failure",
            "Requests that ended with an error",
            m.failure.clone(),
        );
        r.register(
            "fado:request_rejected",
            "Requests refused because the queue was full",
            m.rejected.clone(),
        );
        r.register(
            "fado:prompt_tokens",
            "Prompt tokens of finished requests",
            m.prompt_tokens.clone(),
        );
        r.register(
            "fado:generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        r.register(
            "fado:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            m.prefix_queries.clone(),
        );
        r.register(
            "fado:prefix_cache_hits",
            "Prompt tokens served from the prefix cache",
            m.prefix_hits.clone(),
        );
        r.register(
            "fado:kv_cache_usage_perc",
            "KV-cache rows held over all rows (0-1)",
            m.kv_usage.clone(),
        );
        r.register(
            "fado:time_to_first_token_seconds",
            "Seconds from arrival to the first text",
            m.ttft.clone(),
        );
        r.register(
            "fado:inter_token_latency_seconds",
            "Seconds between consecutive pieces of text",
            m.itl.clone(),
        );
        r.register(
            "fado:e2e_request_latency_seconds",
            "Seconds from arrival to the end of generation",
            m.e2e.clone(),
        );
        r.register(
            "fado:request_queue_time_seconds",
            "Seconds waiting for a slot",
            m.queue_time.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// A request ended normally.
    pub fn finished(&self, reason: FinishReason, prompt: usize, cached: usize, generated: usize) {
        let label = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "abort",
        };
        self.success
            .get_or_create(&vec![("finished_reason".into(), label.into())])
            .inc();
        self.tokens(prompt, cached, generated);
    }

    /// A request ended with an error.
    pub fn failed(&self) {
        self.failure.inc();
    }

    /// A request was refused (queue full).
    pub fn rejected(&self) {
        self.rejected.inc();
    }

    fn tokens(&self, prompt: usize, cached: usize, generated: usize) {
        self.prompt_tokens.inc_by(prompt as u64);
        self.generation_tokens.inc_by(generated as u64);
        self.prefix_queries.inc_by(prompt as u64);
        self.prefix_hits.inc_by(cached as u64);
    }

    /// Seconds a request waited for a slot.
    pub fn queue_time(&self, s: f64) {
        self.queue_time.observe(s);
    }

    /// Seconds from a request's arrival to its first text.
    pub fn first_token(&self, s: f64) {
        self.ttft.observe(s);
    }

    /// Seconds between two pieces of a request's text.
    pub fn inter_token(&self, s: f64) {
        self.itl.observe(s);
    }

    /// Seconds from a request's arrival to its end.
    pub fn end_to_end(&self, s: f64) {
        self.e2e.observe(s);
    }

    /// The text exposition, with the gauges read now: `running`, `waiting` requests and
    /// `kv_used` of `kv_total` KV rows.
    pub fn render(
        &self,
        running: usize,
        waiting: usize,
        kv_used: usize,
        kv_total: usize,
    ) -> String {
        self.running.set(running as i64);
        self.waiting.set(waiting as i64);
        self.kv_usage.set(kv_used as f64 / kv_total.max(1) as f64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first sample line of `name` (with its labels, if any).
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[test]
    fn counters_histograms_and_gauges_render() {
        let m = Metrics::new();
        m.finished(FinishReason::Stop, 10, 4, 5);
        m.finished(FinishReason::Length, 7, 0, 3);
        m.finished(FinishReason::Cancelled, 2, 0, 1);
        m.failed();
        m.rejected();
        m.first_token(0.2);
        m.inter_token(0.05);
        m.inter_token(0.07);
        let t = m.render(1, 2, 30, 120);
        assert_eq!(sample(&t, "fado:num_requests_running"), 1.0);
        assert_eq!(sample(&t, "fado:num_requests_waiting"), 2.0);
        assert_eq!(
            sample(&t, "fado:request_success_total{finished_reason=\"stop\"}"),
            1.0
        );
        assert_eq!(
            sample(&t, "fado:request_success_total{finished_reason=\"abort\"}"),
            1.0
        );
        assert_eq!(sample(&t, "fado:request_failure_total"), 1.0);
        assert_eq!(sample(&t, "fado:request_rejected_total"), 1.0);
        assert_eq!(sample(&t, "fado:prompt_tokens_total"), 19.0);
        assert_eq!(sample(&t, "fado:generation_tokens_total"), 9.0);
        assert_eq!(sample(&t, "fado:prefix_cache_hits_total"), 4.0);
        assert_eq!(sample(&t, "fado:prefix_cache_queries_total"), 19.0);
        assert_eq!(sample(&t, "fado:kv_cache_usage_perc"), 0.25);
        assert_eq!(sample(&t, "fado:time_to_first_token_seconds_count"), 1.0);
        assert_eq!(sample(&t, "fado:inter_token_latency_seconds_count"), 2.0);
        assert!((sample(&t, "fado:inter_token_latency_seconds_sum") - 0.12).abs() < 1e-9);
        assert!(t.trim_end().ends_with("# EOF"), "{t}");
    }
}
