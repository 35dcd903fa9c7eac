"""squat.Model: the C++ engine over a GGUF model, from Python."""

from __future__ import annotations

import codecs
import os
import time
from typing import Iterator, Sequence

import numpy as np

from . import _squat
from ._arrays import float_option, int_option
from .config import CacheConfig


class Model:
    """A GGUF model loaded by the squat engine.

    >>> m = squat.Model("SmolLM2-135M-Instruct.Q4_1.gguf", threads=2)
    >>> m.generate("The capital of France is", max_tokens=8, temperature=0,
    ...            kv=squat.CacheConfig("squat", k_bits=2, v_bits=2))

    Each call runs its own sequence with a fresh KV cache of `context` tokens (prompt and
    output). The GIL is released while the engine computes. close() (or a `with` block) frees
    the model; using it afterwards raises RuntimeError.
    """

    def __init__(self, path: str, threads: int = 0, context: int = 4096):
        self.path = os.path.expanduser(str(path))
        self._context = int_option("context", context, minimum=1)
        self._engine = _squat.Engine(self.path, int_option("threads", threads, minimum=0))
        self.last_stats: dict | None = None

    # ---- life cycle ----
    def close(self) -> None:
        self._engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self) -> bool:
        return self._engine is None

    def _e(self):
        if self._engine is None:
            raise RuntimeError(f"squat.Model({self.path!r}) is closed")
        return self._engine

    # ---- facts ----
    @property
    def config(self) -> dict:
        e = self._e()
        return {
            "architecture": e.architecture, "n_layers": e.n_layers, "n_heads": e.n_heads,
            "n_kv_heads": e.n_kv_heads, "head_dim": e.head_dim, "vocab_size": e.vocab_size,
            "context_length": e.context_length, "threads": e.threads,
        }

    # ---- text ----
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(self._e().tokenize(text, bool(add_special), bool(parse_special)))

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        return self._e().detokenize(self._ids(ids), bool(render_special)).decode("utf-8", "replace")

    def _ids(self, ids) -> list[int]:
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"token ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"token ids must be a sequence of ints, got {type(ids).__name__}")
        out = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"token ids must be ints; item {i} is {t!r}")
            out.append(int(t))
        return out

    def _prompt_ids(self, prompt) -> list[int]:
        ids = self.tokenize(prompt, True, False) if isinstance(prompt, str) else self._ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty after tokenization: nothing to continue from")
        return ids

    def _session(self, kv, max_tokens: int):
        kv = CacheConfig() if kv is None else kv
        if isinstance(kv, str):
            kv = CacheConfig(kv)
        if not isinstance(kv, CacheConfig):
            raise TypeError(f"kv must be a squat.CacheConfig or a method name, got {kv!r}")
        e = self._e()
        return _squat.Session(e, kv.native(e.head_dim), max_tokens, 0)

    # ---- logits ----
    def logits(self, tokens, kv: CacheConfig | str | None = None,
               prompt_tokens: int | None = None) -> np.ndarray:
        """Logits [len(tokens), vocab] (float32) of every position.

        The first `prompt_tokens` tokens (default: all) are fed in one forward pass, as a prompt
        (a quantized cache's prompt attends to itself in full precision); the rest one at a time,
        as decoding feeds them, so each of them reads the cache (`squat perplexity`'s method).
        """
        ids = self._ids(tokens)
        if not ids:
            raise ValueError("tokens is empty")
        p = len(ids) if prompt_tokens is None else int_option("prompt_tokens", prompt_tokens,
                                                              minimum=1)
        if p > len(ids):
            raise ValueError(f"prompt_tokens {p} exceeds the {len(ids)} tokens given")
        session = self._session(kv, max(len(ids), 1))
        rows = [session.eval(ids[:p], True)]
        for t in ids[p:]:
            rows.append(session.eval([t], False)[None, :])
        self.last_stats = {"cache_bytes": session.cache_bytes,
                           "bits_per_element": session.bits_per_element, "tokens": len(ids)}
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    # ---- generation ----
    def generate(self, prompt, max_tokens: int = 128, kv: CacheConfig | str | None = None,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.0, seed: int = 0, stop: str | Sequence[str] | None = None,
                 stream: bool = False):
        """Continues `prompt` (text, or token ids) by up to `max_tokens` tokens.

        Returns the text, or with stream=True a generator of text pieces as they are decoded.
        Stops at an end-of-generation token, or before the first of the `stop` strings (never
        returned). temperature=0 is greedy. Afterwards `last_stats` holds token counts,
        tokens/s and the cache's measured bytes.
        """
        it = self._generate(prompt, max_tokens, kv, temperature, top_k, top_p, min_p, seed, stop)
        if stream:
            return it
        return "".join(it)

    def _generate(self, prompt, max_tokens, kv, temperature, top_k, top_p, min_p, seed,
                  stop) -> Iterator[str]:
        # Everything is checked before the first piece, so a bad argument raises at the call,
        # not at the first next() of a stream.
        max_tokens = int_option("max_tokens", max_tokens, minimum=0)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop must be a non-empty str or a list of them, got {stop!r}")
        ids = self._prompt_ids(prompt)
        if len(ids) > self._context:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, more than the context of {self._context} "
                "(Model(..., context=N))")
        sampler = _squat.Sampler(float_option("temperature", temperature),
                                 int_option("top_k", top_k, minimum=0),
                                 float_option("top_p", top_p), float_option("min_p", min_p),
                                 int_option("seed", seed, minimum=0))
        session = self._session(kv, self._context)
        return self._stream(session, sampler, ids, max_tokens, stops)

    def _stream(self, session, sampler, ids, max_tokens, stops) -> Iterator[str]:
        e = self._e()
        decoder = _squat.StreamDecoder(e)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        stop_filter = _squat.StopFilter(stops)
        stats = {"prompt_tokens": len(ids), "generated_tokens": 0, "stopped_at_eog": False,
                 "stopped_at_stop": False}
        self.last_stats = stats
        sampler.observe(ids)
        t0 = time.perf_counter()
        logits = session.eval(ids, False)
        stats["prompt_seconds"] = time.perf_counter() - t0
        decode_seconds = 0.0
        for i in range(max_tokens):
            token = sampler.sample(logits)
            if e.is_eog(token):
                stats["stopped_at_eog"] = True
                break
            stats["generated_tokens"] += 1
            piece = stop_filter.add(utf8.decode(decoder.push(token)))
            if piece:
                yield piece
            if stop_filter.stopped:
                stats["stopped_at_stop"] = True
                break
            if i + 1 == max_tokens or session.n_past >= session.max_tokens:
                break
            t0 = time.perf_counter()
            logits = session.eval([token], False)
            decode_seconds += time.perf_counter() - t0
        if not stop_filter.stopped:
            tail = stop_filter.add(utf8.decode(decoder.finish(), final=True))
            tail += stop_filter.finish()
            if tail:
                yield tail
        stats["decode_seconds"] = decode_seconds
        n_dec = max(stats["generated_tokens"] - 1, 0)
        stats["decode_tokens_per_second"] = n_dec / decode_seconds if decode_seconds > 0 else 0.0
        stats["cache_bytes"] = session.cache_bytes
        stats["cache_tokens"] = session.n_past
        stats["bits_per_element"] = session.bits_per_element
