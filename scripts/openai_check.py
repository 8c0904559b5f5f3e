#!/usr/bin/env python3
"""Check `fado serve` with the official OpenAI Python client.

1. lists the models,
2. streams a chat answer (stream=True, stream_options.include_usage) and prints it as it comes,
3. asks the same question without streaming at temperature 0 and requires the answer to equal
   both the streamed one and `fado run --chat --temperature 0 --prompt SAME --max-tokens SAME`,
4. structured output: a `response_format` json_schema answer that parses and has the schema's
   fields, and a schema the server cannot compile gives openai.BadRequestError (400),
5. a tool-call round trip: with `tools` and `tool_choice` "required" the model calls
   get_weather (arguments valid JSON with a city), streamed the same call arrives as
   delta.tool_calls; the script answers with a `tool` message and the model replies,
6. checks that an unknown model gives openai.NotFoundError (404) and a bad key (when the
   server has --api-key) gives openai.AuthenticationError (401).

Usage (see scripts/README.md):
    python3 -m venv /tmp/oaienv && /tmp/oaienv/bin/pip install openai
    /tmp/oaienv/bin/python scripts/openai_check.py --spawn            # starts fado serve itself
    /tmp/oaienv/bin/python scripts/openai_check.py --base-url http://127.0.0.1:8080/v1
Exit status 0 when every check passes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import openai


def find_fado(arg):
    if arg:
        return arg
    if os.environ.get("FADO_BIN"):
        return os.environ["FADO_BIN"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    for profile in ("release", "debug"):
        p = os.path.join(target, profile, "fado")
        if os.path.isfile(p):
            return p
    p = shutil.which("fado")
    if p:
        return p
    sys.exit("no fado binary: build it (cargo build --release) or pass --fado PATH / FADO_BIN")


def wait_healthy(base_url, proc, limit_s):
    health = base_url.rstrip("/").removesuffix("/v1") + "/health"
    t0 = time.time()
    while time.time() - t0 < limit_s:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"fado serve exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the server did not answer {health} within {limit_s} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default=os.environ.get("FADO_API_KEY", "none"))
    ap.add_argument("--fado", help="fado binary (default: $FADO_BIN, target/{release,debug}/fado, PATH)")
    ap.add_argument("--model", help="model path for fado serve/run (default: fado's default model)")
    ap.add_argument("--spawn", action="store_true", help="start `fado serve` on --port and stop it after")
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    fado = find_fado(args.fado)
    model_args = ["--model", args.model] if args.model else []
    proc = None
    if args.spawn:
        args.base_url = f"http://127.0.0.1:{args.port}/v1"
        cmd = [fado, "serve", "--port", str(args.port), "--parallel", "2", *model_args]
        if args.api_key != "none":
            cmd += ["--api-key", args.api_key]
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd)
    failures = []
    try:
        h = wait_healthy(args.base_url, proc, 300)
        print(f"health: {json.dumps(h)}")
        client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600)

        models = client.models.list()
        ids = [m.id for m in models.data]
        print(f"models: {ids}")
        served = ids[0]
        msgs = [{"role": "user", "content": args.prompt}]

        print(f"\n--- streamed (temperature 0, max_tokens {args.max_tokens}) ---")
        t0 = time.time()
        stream = client.chat.completions.create(
            model=served, messages=msgs, stream=True, temperature=0,
            max_tokens=args.max_tokens, stream_options={"include_usage": True},
        )
        streamed, usage, finish = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    streamed.append(c.delta.content)
                    print(c.delta.content, end="", flush=True)
                if c.finish_reason:
                    finish = c.finish_reason
        streamed = "".join(streamed)
        print(f"\n[finish_reason={finish} usage={usage} {time.time() - t0:.1f} s]")
        if usage is None:
            failures.append("no usage chunk with stream_options.include_usage")

        print("\n--- not streamed (temperature 0) ---")
        r = client.chat.completions.create(
            model=served, messages=msgs, temperature=0, max_tokens=args.max_tokens,
        )
        text = r.choices[0].message.content
        print(text)
        print(f"[finish_reason={r.choices[0].finish_reason} usage={r.usage}]")
        if text != streamed:
            failures.append(f"streamed text differs from the whole answer:\n  {streamed!r}\n  {text!r}")

        print("\n--- fado run --chat --temperature 0 ---")
        run_cmd = [fado, "run", *model_args, "--chat", "--temperature", "0",
                   "--prompt", args.prompt, "--max-tokens", str(args.max_tokens), "--json"]
        print("$", " ".join(run_cmd), flush=True)
        out = subprocess.run(run_cmd, capture_output=True, text=True, check=True)
        ran = json.loads(out.stdout.strip().splitlines()[-1])["text"]
        print(ran)
        if ran != text:
            failures.append(f"server answer differs from fado run:\n  server: {text!r}\n  run:    {ran!r}")
        else:
            print("[equal to the server's answer]")

        print("\n--- response_format json_schema ---")
        schema = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
                  "properties": {"city": {"type": "string", "maxLength": 30},
                                 "country": {"type": "string", "maxLength": 30}}}
        r = client.chat.completions.create(
            model=served, temperature=0, max_tokens=64,
            messages=[{"role": "user", "content": "Name a city in Portugal and its country, in JSON."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "place", "schema": schema, "strict": True}},
        )
        content = r.choices[0].message.content
        print(f"{content}  [finish_reason={r.choices[0].finish_reason}]")
        try:
            place = json.loads(content)
            if set(place) != {"city", "country"}:
                failures.append(f"json_schema answer has other fields: {place}")
        except json.JSONDecodeError as e:
            failures.append(f"json_schema answer is not JSON ({e}): {content!r}")
        try:
            client.chat.completions.create(
                model=served, messages=msgs, max_tokens=4,
                response_format={"type": "json_schema", "json_schema": {
                    "name": "bad", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}})
            failures.append("an unsatisfiable schema was accepted")
        except openai.BadRequestError as e:
            print(f"unsatisfiable schema -> {e.status_code} {e.body}")

        print("\n--- tool call round trip ---")
        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather in a city",
            "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                           "properties": {"city": {"type": "string", "maxLength": 30}}}}}]
        convo = [{"role": "user", "content": "What is the weather in Lisbon?"}]
        r = client.chat.completions.create(
            model=served, messages=convo, tools=tools, tool_choice="required",
            temperature=0, max_tokens=64)
        m = r.choices[0].message
        print(f"finish_reason={r.choices[0].finish_reason} tool_calls={m.tool_calls}")
        if r.choices[0].finish_reason != "tool_calls" or not m.tool_calls:
            failures.append(f"no tool call with tool_choice=required: {r}")
        else:
            call = m.tool_calls[0]
            args_ = json.loads(call.function.arguments)
            if call.function.name != "get_weather" or not isinstance(args_.get("city"), str):
                failures.append(f"unexpected call: {call}")
            stream = client.chat.completions.create(
                model=served, messages=convo, tools=tools, tool_choice="required",
                temperature=0, max_tokens=64, stream=True)
            streamed_calls, finish = [], None
            for chunk in stream:
                for c in chunk.choices:
                    streamed_calls.extend(c.delta.tool_calls or [])
                    finish = c.finish_reason or finish
            if (finish != "tool_calls" or len(streamed_calls) != 1
                    or streamed_calls[0].function.arguments != call.function.arguments):
                failures.append(f"streamed call differs: {streamed_calls} finish={finish}")
            else:
                print(f"streamed: the same call, finish_reason={finish}")
            convo += [m.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id,
                       "content": json.dumps({"city": args_["city"], "temperature_c": 18, "sky": "clear"})}]
            r = client.chat.completions.create(
                model=served, messages=convo, tools=tools, temperature=0, max_tokens=48)
            reply = r.choices[0].message
            print(f"reply after the tool: {reply.content!r} tool_calls={reply.tool_calls} "
                  f"[finish_reason={r.choices[0].finish_reason}]")
            if not (reply.content or reply.tool_calls):
                failures.append("no reply after the tool message")

        print("\n--- errors ---")
        try:
            client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=1)
            failures.append("an unknown model was accepted")
        except openai.NotFoundError as e:
            print(f"unknown model -> {e.status_code} {e.body}")
        if args.api_key != "none":
            bad = openai.OpenAI(base_url=args.base_url, api_key="wrong-key", max_retries=0)
            try:
                bad.models.list()
                failures.append("a wrong API key was accepted")
            except openai.AuthenticationError as e:
                print(f"wrong key -> {e.status_code} {e.body}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    if failures:
        print("\nFAILED:\n" + "\n".join(failures))
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
