"""The Python package on the tiny fixture model (tests/fixtures/tiny-llama): generation equals
the CLI's, streaming, chat, errors, threads, and stopping a stream early."""

import _thread
import os
import subprocess
import threading
from pathlib import Path

import pytest

import fado

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"
PROMPT = "The capital of Portugal is"


def fado_cli() -> Path:
    """The `fado` binary (FADO_BIN, else target/debug or target/release)."""
    if os.environ.get("FADO_BIN"):
        return Path(os.environ["FADO_BIN"])
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "fado"
        if p.is_file():
            return p
    pytest.fail("no fado binary: run `cargo build` first or set FADO_BIN")


def cli_greedy(prompt: str, n: int, chat: bool = False) -> str:
    cmd = [str(fado_cli()), "run", "--model", str(TINY), "--temperature", "0", "-n", str(n),
           "--prompt", prompt]
    if chat:
        cmd.append("--chat")
    out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode()
    assert out.endswith("\n")
    return out[:-1]  # `fado run` ends the text with a line break


@pytest.fixture(scope="module")
def model() -> fado.Model:
    return fado.Model(TINY, ctx=256)


def test_model_info(model):
    assert model.name == "tiny-llama"
    assert model.context_length == 256
    assert model.vocab_size == 512
    assert model.adapter
    assert any(model.adapter.startswith(d["name"]) for d in fado.devices())


def test_generate_greedy_equals_cli(model):
    text = model.generate(PROMPT, max_tokens=24, temperature=0)
    assert text
    assert text == cli_greedy(PROMPT, 24)


def test_stream_pieces_make_the_generated_text(model):
    pieces = list(model.stream(PROMPT, max_tokens=24, temperature=0))
    assert len(pieces) > 1
    assert "".join(pieces) == cli_greedy(PROMPT, 24)


def test_chat_equals_cli_chat(model):
    reply = model.chat([{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0)
    assert reply == cli_greedy(PROMPT, 16, chat=True)
    assert model.generate(PROMPT, chat=True, max_tokens=16, temperature=0) == reply
    streamed = "".join(model.chat([{"role": "user", "content": PROMPT}], max_tokens=16,
                                  temperature=0, stream=True))
    assert streamed == reply


def test_seeded_sampling_repeats(model):
    a = model.generate(PROMPT, max_tokens=16, temperature=0.9, seed=7)
    b = model.generate(PROMPT, max_tokens=16, temperature=0.9, seed=7)
    assert a == b


def test_tokenize_roundtrip(model):
    ids = model.tokenize("hello world", add_special=False)
    assert ids and all(isinstance(i, int) for i in ids)
    assert model.detokenize(ids) == "hello world"


def test_errors(model, tmp_path):
    with pytest.raises(fado.FadoError, match="no/such"):
        fado.Model("/no/such/model.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(fado.FadoError):
        fado.Model(bad)
    with pytest.raises(fado.FadoError, match="KV"):
        fado.Model(TINY, kv_type="q4")
    with pytest.raises(fado.FadoError, match="temperature"):
        model.generate("x", temperature=-1)
    with pytest.raises(fado.FadoError, match="top_p"):
        model.generate("x", top_p=0)
    with pytest.raises(fado.FadoError, match="context"):
        model.session(ctx=16).generate("ab cd " * 100, max_tokens=4)
    with pytest.raises(fado.FadoError, match="vocabulary"):
        model.detokenize([10**6])
    with pytest.raises(ValueError, match="role"):
        model.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="empty"):
        model.chat([])
    with pytest.raises(TypeError):
        model.generate(b"bytes")
    with pytest.raises(fado.FadoError, match="stop"):
        model.generate("x", stop=[""])
    # Still works after the errors.
    assert model.generate(PROMPT, max_tokens=24, temperature=0) == cli_greedy(PROMPT, 24)


def test_two_threads_two_sessions(model):
    expected = {p: model.session().generate(p, max_tokens=24, temperature=0)
                for p in (PROMPT, "Lisbon is a city")}
    results = {}

    def work(prompt):
        results[prompt] = model.session().generate(prompt, max_tokens=24, temperature=0)

    threads = [threading.Thread(target=work, args=(p,)) for p in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive()
    assert results == expected


def stopped_early(s: fado.Session) -> bool:
    """The session holds far fewer tokens than a finished 200-token generation would (which
    the tiny model does reach: test_full_stream_runs_long)."""
    return len(s.cached_tokens) < len(s._model.tokenize(PROMPT)) + 50


def test_full_stream_runs_long(model):
    s = model.session()
    assert len(list(s.stream(PROMPT, max_tokens=200, temperature=0))) > 0
    assert not stopped_early(s)


def test_break_out_of_stream_stops_cleanly(model):
    s = model.session()
    it = s.stream(PROMPT, max_tokens=200, temperature=0)
    first = next(it)
    assert first
    it.close()  # what `break` does to the generator
    assert stopped_early(s)
    # The session is free and generates the same greedy text as a fresh one.
    assert s.generate(PROMPT, max_tokens=24, temperature=0) == cli_greedy(PROMPT, 24)
    for piece in s.stream(PROMPT, max_tokens=200, temperature=0):
        break
    # CPython closes the abandoned generator at once (reference counting), which waits for
    # the worker: the session is free and holds only what was generated so far.
    assert stopped_early(s)
    assert s.generate(PROMPT, max_tokens=24, temperature=0) == cli_greedy(PROMPT, 24)


def test_keyboard_interrupt_stops_a_stream(model):
    s = model.session()
    got = []
    with pytest.raises(KeyboardInterrupt):
        for piece in s.stream(PROMPT, max_tokens=200, temperature=0):
            got.append(piece)
            _thread.interrupt_main()  # as Ctrl-C: KeyboardInterrupt in this thread
    assert len(got) >= 1
    assert stopped_early(s)
    assert s.generate(PROMPT, max_tokens=24, temperature=0) == cli_greedy(PROMPT, 24)
