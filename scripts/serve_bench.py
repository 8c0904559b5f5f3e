#!/usr/bin/env python3
"""Aggregate decode throughput of a running `fado serve` (standard library only).

    fado serve --parallel 4 --port 8080 &
    scripts/serve_bench.py --url http://127.0.0.1:8080 --clients 4 --requests 8 --max-tokens 32

Starts `--clients` threads; each sends `--requests / --clients` non-streaming chat requests at
temperature 0 (different prompts, so no prefix sharing between clients) and waits for the
answer. Prints one JSON line: requests, completion tokens, wall seconds, aggregate completion
tokens/s, mean request latency.

    fado serve --parallel 16 --port 8080 &
    scripts/serve_bench.py --sweep 1,2,4,8,16 --per-client 2 --max-tokens 32 --ignore-eos

`--sweep` runs each client count in turn against the same server (each client sending
`--per-client` requests) and adds each count's speed-up over the first (BENCHMARKS.md).
"""

import argparse
import json
import threading
import time
import urllib.request

PROMPTS = [
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is the capital of Portugal?",
    "Count from one to five.",
    "Give a short tip for learning to cook.",
    "Describe a cat in a few words.",
    "Why is the sky blue?",
    "Say hello in Portuguese.",
]


def one(url, model, prompt, max_tokens, key, ignore_eos):
    req = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if ignore_eos:
        req["ignore_eos"] = True
    body = json.dumps(req).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=3600) as r:
        out = json.loads(r.read())
    return out["usage"]["completion_tokens"], time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--api-key", default="")
    ap.add_argument(
        "--ignore-eos",
        action="store_true",
        help="every answer runs to --max-tokens (vLLM's ignore_eos): equal work per request",
    )
    ap.add_argument("--sweep", default="", help="client counts to run in turn, e.g. 1,2,4,8")
    ap.add_argument("--per-client", type=int, default=2, help="requests per client (--sweep)")
    a = ap.parse_args()

    # Model name: whatever the server serves.
    with urllib.request.urlopen(a.url + "/v1/models", timeout=60) as r:
        model = json.loads(r.read())["data"][0]["id"]

    if a.sweep:
        base = None
        for clients in [int(c) for c in a.sweep.split(",")]:
            r = measure(a, model, clients, a.per_client)
            base = base or r["aggregate_tokens_per_s"]
            r["speedup"] = round(r["aggregate_tokens_per_s"] / base, 2)
            print(json.dumps(r), flush=True)
    else:
        r = measure(a, model, a.clients, max(1, a.requests // a.clients))
        print(json.dumps(r))


def measure(a, model, clients, per):
    results, lock = [], threading.Lock()

    def client(c):
        for i in range(per):
            p = PROMPTS[(c * per + i) % len(PROMPTS)] + f" (request {c}.{i})"
            n, dt = one(a.url, model, p, a.max_tokens, a.api_key, a.ignore_eos)
            with lock:
                results.append((n, dt))

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    toks = sum(n for n, _ in results)
    return {
        "clients": clients,
        "requests": len(results),
        "completion_tokens": toks,
        "wall_s": round(wall, 2),
        "aggregate_tokens_per_s": round(toks / wall, 3),
        "mean_latency_s": round(sum(d for _, d in results) / len(results), 2),
    }


if __name__ == "__main__":
    main()
