"""The KV-cache library on NumPy arrays: the `squat quant` quantizers and one layer's store."""

from __future__ import annotations

import numpy as np

from . import _squat
from ._arrays import float_array, int_option
from .config import CacheConfig


def quantize_keys(K: np.ndarray, Q: np.ndarray | None = None, method: str = "squat",
                  bits: int = 2, group_size: int = 32, quant_group_size: int = 0,
                  subspace_dim: int = 20, lambda_: float = 0.001,
                  key_quant: str = "per-channel", tensor: str = "keys",
                  return_info: bool = False):
    """Quantizes keys K [tokens, head_dim] with KIVI or SQuat and returns them dequantized.

    The same computation, bit for bit, as
    `squat quant --keys K.npy --queries Q.npy --method M --bits B --out K2.npy` (with the same
    flags). SQuat needs the queries Q [rows, head_dim] whose subspace it protects.
    tensor="values" quantizes per token as KIVI does values. quant_group_size=0: the engine's
    default block. With return_info, also returns a dict with the storage bytes, bits per
    element, MSE and (given Q) the relative logit error ||Q (K^ - K)^T|| / ||Q K^T||.
    """
    K = float_array("K", K, 2, "[tokens, head_dim]")
    if Q is not None:
        Q = float_array("Q", Q, 2, "[rows, head_dim]")
    khat, storage = _squat.quantize_array(
        K, Q, method, int_option("bits", bits), int_option("group_size", group_size),
        int_option("quant_group_size", quant_group_size), int_option("subspace_dim", subspace_dim),
        float(lambda_), key_quant, tensor)
    if not return_info:
        return khat
    info = {"storage_bytes": int(storage), "bits_per_element": storage * 8.0 / K.size,
            "mse": key_error(K, khat)["mse"]}
    if Q is not None:
        info["logit_error"] = key_error(K, khat, Q)["logit_error"]
    return khat, info


def key_error(K: np.ndarray, K_hat: np.ndarray, Q: np.ndarray | None = None) -> dict:
    """MSE of K_hat against K and, with Q, the relative logit error (in double precision)."""
    K = np.asarray(K, dtype=np.float64)
    E = np.asarray(K_hat, dtype=np.float64) - K
    out = {"mse": float(np.mean(E * E))}
    if Q is not None:
        Qd = np.asarray(Q, dtype=np.float64)
        out["logit_error"] = float(np.linalg.norm(Qd @ E.T) / np.linalg.norm(Qd @ K.T))
    return out


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """Standard RoPE inverse frequencies theta^(-2i/d), i < d/2, as float32."""
    i = np.arange(0, head_dim, 2, dtype=np.float64)
    return (1.0 / theta ** (i / head_dim)).astype(np.float32)


class Store:
    """One layer's KV cache (all its KV heads) in the C++ store: residual window, flush rules,
    quantized storage and attention over it.

    k and v are [tokens, n_kv_heads, head_dim], q is [tokens, n_heads, head_dim] (query heads
    h / (n_heads / n_kv_heads) share KV head h), all float32 and C-contiguous (no copy is made).
    Keys stored before RoPE (key_rope "pre", kivi's and squat's default) need the rotary
    frequencies `inv_freq` (head_dim/2 floats; `neox` pairs (i, i + d/2) as transformers'
    rotate_half does, else (2i, 2i+1)); attend() rotates them at their positions 0, 1, ...
    """

    def __init__(self, config: CacheConfig | str, n_kv_heads: int, head_dim: int,
                 inv_freq=None, neox: bool = True, threads: int = 1):
        if isinstance(config, str):
            config = CacheConfig(config)
        if not isinstance(config, CacheConfig):
            raise TypeError(f"config must be a squat.CacheConfig, got {config!r}")
        self.config = config
        head_dim = int_option("head_dim", head_dim, minimum=1)
        freq = [] if inv_freq is None else [float(x) for x in np.asarray(inv_freq).ravel()]
        self._s = _squat.LayerStore(config.native(head_dim),
                                    int_option("n_kv_heads", n_kv_heads, minimum=1), head_dim,
                                    freq, bool(neox), int_option("threads", threads, minimum=1))

    n_kv_heads = property(lambda self: self._s.n_kv_heads)
    head_dim = property(lambda self: self._s.head_dim)
    tokens = property(lambda self: self._s.tokens, doc="tokens stored")
    bytes = property(lambda self: self._s.bytes,
                     doc="bytes of cached data: codes, scales/mins, full-precision window")
    key_bytes = property(lambda self: self._s.key_bytes)
    value_bytes = property(lambda self: self._s.value_bytes)
    state_bytes = property(lambda self: self._s.state_bytes,
                           doc="SQuat's per-prompt subspace state (not in bytes)")
    allocated_bytes = property(lambda self: self._s.allocated_bytes)
    bits_per_element = property(lambda self: self._s.bits_per_element)
    quantized_keys = property(lambda self: self._s.quantized_keys)
    quantized_values = property(lambda self: self._s.quantized_values)
    has_subspace = property(lambda self: self._s.has_subspace)

    def _heads(self, name, a):
        return float_array(name, a, 3, "[tokens, heads, head_dim]")

    def set_queries(self, q: np.ndarray) -> None:
        """SQuat: the prompt's queries [tokens, n_heads, head_dim] (after RoPE by default) give
        each KV head its subspace. Call before appending the prompt's keys."""
        self._s.set_queries(self._heads("q", q))

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        self._s.append(self._heads("k", k), self._heads("v", v))

    def attend(self, q: np.ndarray, positions=None) -> np.ndarray:
        """Causal attention of q [n, n_heads, head_dim] (rotated, at `positions`; default the
        last n stored tokens' positions) over everything stored; returns [n, n_heads, head_dim]."""
        q = self._heads("q", q)
        if positions is not None:
            positions = np.ascontiguousarray(np.asarray(positions), dtype=np.int32)
            if positions.ndim != 1:
                raise ValueError(f"positions must be 1-D, got shape {positions.shape}")
        return self._s.attend(q, positions)

    def dequantize(self, kv_head: int):
        """(keys, values) of one KV head as stored, [tokens, head_dim] float32 each (pre-RoPE
        keys unrotated)."""
        return self._s.dequantize(int_option("kv_head", kv_head))

    def save_subspace(self, path: str) -> None:
        self._s.save_subspace(str(path))

    def load_subspace(self, path: str) -> None:
        self._s.load_subspace(str(path))

    def clear(self) -> None:
        self._s.clear()

    def reserve(self, n_tokens: int) -> None:
        self._s.reserve(int_option("n_tokens", n_tokens, minimum=0))
