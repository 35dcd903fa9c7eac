"""A KV cache for Hugging Face transformers stored through squat's C++ store.

    import squat.hf
    squat.hf.attach(model)   # query capture hooks + the "squat" attention implementation
    out = model.generate(**inputs, max_new_tokens=64,
                         past_key_values=squat.hf.SquatCache(model.config, method="squat",
                                                             k_bits=2, v_bits=2))

How it fits transformers (5.x) without editing the model's source:

- SquatCache is a transformers `Cache` whose layers (SquatLayer) keep keys and values in one
  squat.Store per layer, with any of squat's methods (f32, f16, int8, int4, kivi, squat) and
  the same options as the command line. transformers hands the cache keys after RoPE; by
  default (key_rope "pre", as in the engine) the layer rotates them back, so the store keeps
  pre-RoPE keys and rotates them at their positions inside attention.
- SQuat builds each layer's query subspace from the prompt's queries. attach() puts a forward
  hook on every attention module's q_proj that keeps the layer's latest query projection; the
  cache rotates it (RoPE, after-RoPE queries by default) when the prompt arrives.
- attach() also registers the attention function "squat" with transformers'
  AttentionInterface and selects it: the prompt attends to itself in full precision (as the
  engine and the KIVI/SQuat references do), and every later token attends through the store's
  own kernels over the packed cache, so no full-precision copy of the cache is ever made.
  Without it (another attention implementation), the layer returns the dequantized cache to
  transformers' attention at every step, which is exact but costs a full copy per step.

Batch size 1 only (one sequence per cache), no padding masks, no beam search.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from ._hf_gguf import load_gguf_model  # noqa: F401 (part of squat.hf's API)
from .config import CacheConfig
from .library import Store

ATTENTION_NAME = "squat"

_local = threading.local()


def _captured() -> dict:
    if not hasattr(_local, "queries"):
        _local.queries = {}  # layer_idx -> the q_proj output of the layer's latest forward
        _local.layers = {}  # layer_idx -> the SquatLayer whose update awaits its attention
    return _local.queries


def _last_layers() -> dict:
    _captured()
    return _local.layers


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _cos_sin(inv_freq: torch.Tensor, first: int, n: int):
    """cos and sin [n, d] of positions first..first+n-1, computed as transformers' default
    rotary embedding computes them (float32 positions times inv_freq, halves repeated)."""
    pos = torch.arange(first, first + n, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _model_dims(config):
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    return text, text.num_hidden_layers, n_heads, n_kv, head_dim


def _default_inv_freq(text, head_dim: int) -> torch.Tensor | None:
    """The default RoPE's frequencies, or None when the model uses a scaled variant."""
    params = getattr(text, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", getattr(text, "rope_theta", None))
    if rope_type != "default" or theta is None:
        return None
    return 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


class SquatLayer(CacheLayerMixin):
    """One decoder layer's cache: a squat.Store for one sequence."""

    is_sliding = False
    is_compileable = False

    def __init__(self, cache: "SquatCache", layer_idx: int):
        super().__init__()
        self.parent = cache
        self.layer_idx = layer_idx
        self.cumulative_length = 0
        self.store = cache._new_store()
        self.last_was_prompt = False

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _to_store(self, x: torch.Tensor) -> np.ndarray:
        # [1, heads, n, d] -> [n, heads, d] float32, C-contiguous (the store's layout)
        return x[0].transpose(0, 1).to(torch.float32).contiguous().cpu().numpy()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.dim() != 4 or key_states.shape[0] != 1:
            raise ValueError(
                "squat.hf.SquatCache holds one sequence: key states must be [1, kv_heads, tokens, "
                f"head_dim], got {tuple(key_states.shape)} (batch size 1 only)")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        parent = self.parent
        first, n = self.cumulative_length, key_states.shape[-2]
        prompt = first == 0
        keys = key_states
        if parent.pre_rope:
            cos, sin = _cos_sin(parent.inv_freq, first, n)
            k = key_states.to(torch.float32)
            keys = k * cos - _rotate_half(k) * sin  # the inverse rotation
        if parent.config.method == "squat" and not self.store.has_subspace:
            self.store.set_queries(self._prompt_queries(first, n))
        self.store.append(self._to_store(parent._order(keys)), self._to_store(value_states))
        self.cumulative_length += n
        self.last_was_prompt = prompt
        _last_layers()[self.layer_idx] = self
        if prompt or parent.fused:
            # The prompt attends in full precision; the fused attention reads the store itself.
            return key_states, value_states
        return self._dequantized()

    def _prompt_queries(self, first: int, n: int) -> np.ndarray:
        q = _captured().pop(self.layer_idx, None)
        if q is None or q.shape[-2] != n:
            raise RuntimeError(
                "SquatCache(method='squat') needs the prompt's queries: call "
                "squat.hf.attach(model) before generating (it hooks the query projections)")
        p = self.parent
        q = q[0].to(torch.float32).reshape(n, p.n_heads, p.head_dim)  # [n, heads, d]
        if p.config.query_rope == "after":
            cos, sin = _cos_sin(p.inv_freq_queries, first, n)
            q = q * cos[:, None, :] + _rotate_half(q) * sin[:, None, :]
        return p._order(q).contiguous().numpy()

    def _dequantized(self):
        """The whole cache as transformers' attention expects it: [1, kv_heads, T, d] keys
        (rotated) and values."""
        p = self.parent
        ks, vs = zip(*(self.store.dequantize(h) for h in range(p.n_kv_heads)))
        keys = torch.from_numpy(np.stack(ks))  # [kv_heads, T, d]
        if p.channel_perm is not None:
            keys = keys[..., torch.argsort(p.channel_perm)]
        values = torch.from_numpy(np.stack(vs))
        if p.pre_rope:
            cos, sin = _cos_sin(p.inv_freq, 0, keys.shape[1])
            keys = keys * cos + _rotate_half(keys) * sin
        return (keys[None].to(device=self.device, dtype=self.dtype),
                values[None].to(device=self.device, dtype=self.dtype))

    def get_mask_sizes(self, query_length: int):
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.store.clear()
        self.cumulative_length = 0

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("squat.hf.SquatCache holds one sequence (no beam search)")


class SquatCache(Cache):
    """A transformers Cache whose keys and values live in squat's C++ store.

    SquatCache(model.config, method="squat", k_bits=2, v_bits=2, **options): options as
    squat.CacheConfig (the command line's cache flags). Passing the model itself instead of its
    config also calls attach(model). `threads`: threads of the store's kernels (default 1).

    channel_order: how the store orders each key's channels. "half" (default) keeps
    transformers' order, RoPE pairing channel i with i + head_dim/2. "interleaved" stores them
    as GGUF files (llama.cpp's conversion) and so the squat engine do, pairs side by side
    (i, i + d/2 -> 2i, 2i + 1). Per-channel KIVI is the same either way; SQuat's key quantizer
    works on blocks of adjacent channels (quant_group_size), so its result depends on the
    order: on SmolLM2-135M, 2-bit SQuat's KL to the full cache measured 0.068 in "half" order
    and 0.091 in "interleaved" order, the engine's 0.091 (python/tests/test_hf.py).
    """

    def __init__(self, config, method: str = "squat", threads: int = 1,
                 channel_order: str = "half", **options):
        if isinstance(config, torch.nn.Module):
            model = config
            attach(model)
            config = model.config
        self.config = CacheConfig(method, **options)
        text, n_layers, self.n_heads, self.n_kv_heads, self.head_dim = _model_dims(config)
        self.native = self.config.native(self.head_dim)
        self.threads = threads
        inv_freq = _default_inv_freq(text, self.head_dim)
        self.pre_rope = self.native.key_rope == "pre"
        if inv_freq is None and (self.pre_rope or self.config.method == "squat"):
            raise ValueError(
                "squat.hf.SquatCache knows only the default RoPE; this model's rope_parameters "
                f"are {getattr(text, 'rope_parameters', None)} (use a model with default RoPE)")
        self.inv_freq = inv_freq
        self.inv_freq_queries = inv_freq
        if channel_order not in ("half", "interleaved"):
            raise ValueError(f"channel_order must be 'half' or 'interleaved', got {channel_order!r}")
        d = self.head_dim
        self.channel_perm = None if channel_order == "half" else torch.stack(
            [torch.arange(d // 2), torch.arange(d // 2) + d // 2], dim=1).reshape(-1)
        self.fused = getattr(config, "_attn_implementation", None) == ATTENTION_NAME
        super().__init__(layers=[SquatLayer(self, i) for i in range(n_layers)])

    def _new_store(self) -> Store:
        freq = None if self.inv_freq is None else self.inv_freq.numpy()
        return Store(self.config, self.n_kv_heads, self.head_dim, inv_freq=freq,
                     neox=self.channel_perm is None, threads=self.threads)

    def _order(self, x: torch.Tensor) -> torch.Tensor:
        """Keys or queries (channels last) in the store's channel order."""
        return x if self.channel_perm is None else x[..., self.channel_perm]

    @property
    def bytes(self) -> int:
        """Bytes of cached data over all layers: codes, scales/mins, full-precision windows."""
        return sum(layer.store.bytes for layer in self.layers)

    @property
    def state_bytes(self) -> int:
        """SQuat's per-prompt subspace states over all layers (not in bytes)."""
        return sum(layer.store.state_bytes for layer in self.layers)

    @property
    def allocated_bytes(self) -> int:
        return sum(layer.store.allocated_bytes for layer in self.layers)


def squat_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs):
    """transformers attention function: decode steps read the packed cache through the store.

    query is [1, heads, n, d] after RoPE. The prompt (and any call without a SquatCache) runs
    causal full-precision attention on the key/value it is given.
    """
    # Consumed here, so a later forward with another cache (DynamicCache) never finds it.
    layer = _last_layers().pop(getattr(module, "layer_idx", None), None)
    n = query.shape[-2]
    if layer is None or layer.last_was_prompt or not layer.parent.fused:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask if attention_mask is not None else None,
            is_causal=attention_mask is None and n > 1, scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous(), None
    d = query.shape[-1]
    if scaling is not None and abs(scaling - d ** -0.5) > 1e-6 * d ** -0.5:
        raise ValueError(f"squat attention scales logits by 1/sqrt(head_dim); the model asks {scaling}")
    q = layer.parent._order(query[0].transpose(0, 1).to(torch.float32))
    q = q.contiguous().cpu().numpy()  # [n, heads, d]
    out = layer.store.attend(q)  # the last n stored tokens' positions
    return torch.from_numpy(out)[None].to(device=query.device, dtype=query.dtype), None


def attach(model) -> None:
    """Prepares a transformers model for SquatCache: hooks that keep each attention layer's
    query projection (for SQuat's subspace), and the "squat" attention implementation.
    Idempotent."""
    if getattr(model, "_squat_attached", False):
        return
    AttentionInterface.register(ATTENTION_NAME, squat_attention)
    hooked = 0
    for module in model.modules():
        q_proj = getattr(module, "q_proj", None)
        layer_idx = getattr(module, "layer_idx", None)
        if q_proj is None or layer_idx is None:
            continue

        def keep(_mod, _inputs, output, layer_idx=layer_idx):
            _captured()[layer_idx] = output.detach()

        q_proj.register_forward_hook(keep)
        hooked += 1
    if hooked == 0:
        raise ValueError(
            f"{type(model).__name__}: no attention module with q_proj and layer_idx to hook "
            "(squat.hf supports Llama- and Qwen2-style attention)")
    model.set_attn_implementation(ATTENTION_NAME)
    model._squat_attached = True
