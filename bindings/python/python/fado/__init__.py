"""Fado: run Llama-family language models (AMALIA, EuroLLM, Llama, SmolLM2, …) on any GPU.

The same engine as the ``fado`` command, in your Python process::

    import fado

    model = fado.Model("SmolLM2-135M-Instruct.Q4_1.gguf")
    print(model.generate("A capital de Portugal é", max_tokens=32, temperature=0))

A :class:`Model` holds the weights and one default :class:`Session` (a KV cache), which its
``generate``/``stream``/``chat`` use; :meth:`Model.session` makes more sessions over the same
weights, e.g. one per thread. The GIL is released while the GPU works, so sessions on several
threads generate at once; one session runs one generation at a time.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union
import os

from . import _fado
from ._fado import FadoError

__all__ = ["FadoError", "Model", "Session", "devices", "__version__"]
__version__: str = _fado.__version__

_ROLES = ("system", "user", "assistant")


def devices() -> List[Dict[str, Any]]:
    """The GPU adapters Fado can use (index, name, backend, device_type, driver, features), in
    the order ``adapter=`` and ``fado devices`` number them."""
    return _fado.devices()


def _messages(messages: Iterable[Mapping[str, str]]) -> List[tuple]:
    """OpenAI-style message dicts as (role, content) pairs, checked."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] is a {type(m).__name__}, not a dict with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}]['role'] = {role!r}: use 'system', 'user' or 'assistant'")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] must be a string, not {type(content).__name__}")
        out.append((role, content))
    if not out:
        raise ValueError("messages is empty: give at least one message")
    return out


class Session:
    """One sequence's KV cache over a model's weights.

    Each call takes a whole prompt; the session keeps the part of its cache the prompt starts
    with, so a conversation re-sent with one more turn prefills only the new turn.
    """

    def __init__(self, model: "Model", ctx: Optional[int] = None) -> None:
        self._model = model
        self._native = model._native_model.new_session(int(ctx or 0))

    # The sampling keywords of generate/stream/chat, with `fado run`'s defaults.
    def _args(self, ids, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop):
        if isinstance(stop, str):
            stop = [stop]
        if max_tokens < 0:
            raise ValueError(f"max_tokens = {max_tokens} is negative")
        if top_k < 0:
            raise ValueError(f"top_k = {top_k} is negative")
        return (ids, int(max_tokens), float(temperature), int(top_k), float(top_p), float(min_p),
                float(repeat_penalty), seed, list(stop) if stop is not None else None)

    def _ids(self, prompt: str, chat: bool) -> List[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        return self._model._native_model.encode_prompt(prompt, chat)

    def generate(self, prompt: str, max_tokens: int = 256, temperature: float = 0.7, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 seed: Optional[int] = None, chat: bool = False,
                 stop: Union[str, Sequence[str], None] = None) -> str:
        """Generate after ``prompt`` (raw text, or with ``chat=True`` one user message through
        the model's chat template) and return the text. ``temperature=0`` is greedy; the same
        ``seed`` gives the same text. Generation stops before any ``stop`` string. Ctrl-C
        stops it with ``KeyboardInterrupt``."""
        ids = self._ids(prompt, chat)
        return self._native.generate(*self._args(ids, max_tokens, temperature, top_k, top_p, min_p,
                                                 repeat_penalty, seed, stop))

    def stream(self, prompt: str, max_tokens: int = 256, temperature: float = 0.7, top_k: int = 40,
               top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
               seed: Optional[int] = None, chat: bool = False,
               stop: Union[str, Sequence[str], None] = None) -> Iterator[str]:
        """As :meth:`generate`, yielding pieces of text as they come. Leaving the loop early
        (``break``, an exception, ``KeyboardInterrupt``) stops generation."""
        ids = self._ids(prompt, chat)
        return self._pieces(ids, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop)

    def _pieces(self, ids, *rest) -> Iterator[str]:
        it = self._native.stream(*self._args(ids, *rest))
        try:
            yield from it
        finally:
            it.close()  # stop the worker and wait for it: the session is free afterwards

    def chat(self, messages: Iterable[Mapping[str, str]], max_tokens: int = 256,
             temperature: float = 0.7, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: Optional[int] = None,
             stop: Union[str, Sequence[str], None] = None, stream: bool = False) -> Union[str, Iterator[str]]:
        """The assistant's reply to OpenAI-style ``messages`` (dicts with ``role`` and
        ``content``), rendered with the model's chat template; with ``stream=True``, an
        iterator of pieces."""
        ids = self._model._native_model.encode_messages(_messages(messages))
        args = (ids, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop)
        if stream:
            return self._pieces(*args)
        return self._native.generate(*self._args(*args))

    def reset(self) -> None:
        """Forget the cached tokens."""
        self._native.reset()

    @property
    def cached_tokens(self) -> List[int]:
        """Token ids whose keys and values the session holds."""
        return self._native.cached_tokens()


class Model(Session):
    """A model loaded onto the GPU (a Hugging Face folder, a ``.safetensors`` or a ``.gguf``
    file) with a default session of ``ctx`` tokens (default: the model's context, at most
    4096). ``kv_type`` is ``"f16"`` (default) or ``"f32"``; ``adapter`` an index or name from
    :func:`devices`; ``quant`` (``"q8_0"``, ``"q4_0"``, ``"q4_k"``) re-quantizes float weights
    while loading. Raises :class:`FadoError` when the model cannot be loaded."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], ctx: Optional[int] = None,
                 kv_type: str = "f16", adapter: Union[str, int, None] = None,
                 quant: Optional[str] = None) -> None:
        self._native_model = _fado.load(os.fspath(path), kv_type,
                                        None if adapter is None else str(adapter), quant)
        self._ctx = ctx
        super().__init__(self, ctx)

    def session(self, ctx: Optional[int] = None) -> Session:
        """A new session (its own KV cache) over these weights; ``ctx`` defaults to the
        model's."""
        return Session(self, self._ctx if ctx is None else ctx)

    def tokenize(self, text: str, add_special: bool = True) -> List[int]:
        """Token ids of ``text`` (with BOS when ``add_special`` and the model adds one)."""
        return self._native_model.tokenize(text, add_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens included)."""
        return self._native_model.detokenize(list(ids))

    @property
    def name(self) -> str:
        """The model's file or folder name."""
        return self._native_model.name

    @property
    def adapter(self) -> str:
        """The GPU adapter the model runs on."""
        return self._native_model.adapter

    @property
    def context_length(self) -> int:
        """The model's maximum context in tokens."""
        return self._native_model.context_length

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size."""
        return self._native_model.vocab_size

    def __repr__(self) -> str:
        return f"fado.Model({self.name!r}, adapter={self.adapter!r})"
