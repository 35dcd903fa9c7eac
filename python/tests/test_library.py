"""The NumPy library API: quantize_keys against `squat quant`, the Store, bad inputs."""

import subprocess

import numpy as np
import pytest

import squat


def keys_and_queries(n=64, d=64, rows=96, seed=0):
    rng = np.random.default_rng(seed)
    # Keys with a few loud channels (as real keys have), queries from a low-rank subspace.
    K = rng.standard_normal((n, d)).astype(np.float32) * np.linspace(0.2, 3.0, d, dtype=np.float32)
    basis = rng.standard_normal((6, d))
    Q = (rng.standard_normal((rows, 6)) @ basis + 0.05 * rng.standard_normal((rows, d)))
    return K, Q.astype(np.float32)


CASES = [
    dict(method="squat", bits=2),
    dict(method="squat", bits=4, quant_group_size=32, subspace_dim=8, lambda_=0.01),
    dict(method="kivi", bits=2),
    dict(method="kivi", bits=8, key_quant="per-token"),
    dict(method="squat", bits=2, key_quant="per-token", quant_group_size=32, group_size=16),
    dict(method="kivi", bits=4, tensor="values"),
]

FLAG = {"method": "--method", "bits": "--bits", "quant_group_size": "--quant-group-size",
        "subspace_dim": "--subspace-dim", "lambda_": "--lambda", "key_quant": "--key-quant",
        "group_size": "--group-size", "tensor": "--tensor"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_quantize_keys_equals_squat_quant_bit_for_bit(case, cli, tmp_path):
    K, Q = keys_and_queries()
    np.save(tmp_path / "K.npy", K)
    np.save(tmp_path / "Q.npy", Q)
    args = [cli, "quant", "--keys", str(tmp_path / "K.npy"), "--queries", str(tmp_path / "Q.npy"),
            "--out", str(tmp_path / "K2.npy")]
    for name, value in case.items():
        args += [FLAG[name], str(value)]
    subprocess.run(args, check=True, capture_output=True)
    expected = np.load(tmp_path / "K2.npy")
    got = squat.quantize_keys(K, Q, **case)
    assert got.dtype == np.float32 and got.shape == K.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_squat_protects_the_query_subspace_better_than_kivi():
    K, Q = keys_and_queries(n=128)
    _, squat_info = squat.quantize_keys(K, Q, method="squat", bits=2, lambda_=1.0,
                                        return_info=True)
    _, kivi_info = squat.quantize_keys(K, Q, method="kivi", bits=2, return_info=True)
    assert squat_info["logit_error"] < 0.8 * kivi_info["logit_error"]
    # 2-bit codes plus an fp16 scale and min per group of 32: 2 + 32/32 = 3 bits per element.
    assert squat_info["bits_per_element"] == pytest.approx(3.0)


def test_lambda_zero_is_kivi_bit_for_bit():
    K, Q = keys_and_queries()
    a = squat.quantize_keys(K, Q, method="squat", bits=2, lambda_=0.0)
    b = squat.quantize_keys(K, method="kivi", bits=2)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("bad, error, words", [
    (lambda K: K.astype(np.float64), TypeError, "float32"),
    (lambda K: K[:, ::2], ValueError, "C-contiguous"),
    (lambda K: K.reshape(2, 32, 64), ValueError, "2-D"),
    (lambda K: K.tolist(), TypeError, "numpy.ndarray"),
    (lambda K: np.where(np.arange(K.size).reshape(K.shape) == 70, np.nan, K).astype(np.float32),
     ValueError, "non-finite value (nan) at index (1, 6)"),
    (lambda K: K[:40].copy(), ValueError, "multiple of group_size 32"),
])
def test_bad_arrays_raise_clear_errors(bad, error, words):
    K, Q = keys_and_queries()
    with pytest.raises(error, match=None) as e:
        squat.quantize_keys(bad(K), Q)
    assert words in str(e.value)


def test_bad_options_raise_clear_errors():
    K, Q = keys_and_queries()
    with pytest.raises(ValueError, match="bits must be 2, 4 or 8, got 3"):
        squat.quantize_keys(K, Q, bits=3)
    with pytest.raises(ValueError, match="needs the queries"):
        squat.quantize_keys(K, method="squat")
    with pytest.raises(ValueError, match="Q must be \\[rows, 64\\]"):
        squat.quantize_keys(K, Q[:, :32].copy())
    with pytest.raises(ValueError, match="method must be 'kivi' or 'squat'"):
        squat.quantize_keys(K, Q, method="gptq")


def dense_attention(q, k, v):
    """Causal attention of the last len(q) positions over k, v (float64 reference), GQA."""
    n, heads, d = q.shape
    t, kv_heads, _ = k.shape
    rep = heads // kv_heads
    out = np.zeros((n, heads, d))
    for i in range(n):
        pos = t - n + i
        for h in range(heads):
            logits = k[: pos + 1, h // rep] @ q[i, h] / np.sqrt(d)
            w = np.exp(logits - logits.max())
            out[i, h] = (w / w.sum()) @ v[: pos + 1, h // rep]
    return out


def test_store_8bit_attention_matches_dense_attention():
    rng = np.random.default_rng(3)
    n_kv, heads, d, t = 2, 6, 64, 100
    k = rng.standard_normal((t, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((t, n_kv, d)).astype(np.float32)
    q = rng.standard_normal((t, heads, d)).astype(np.float32)
    store = squat.Store(squat.CacheConfig("kivi", k_bits=8, v_bits=8, key_rope="post"), n_kv, d)
    store.append(k[:64], v[:64])
    for i in range(64, t):  # decode: one token at a time
        store.append(k[i:i + 1], v[i:i + 1])
    assert store.tokens == t and store.quantized_keys == 96
    out = store.attend(q[-4:].copy())
    ref = dense_attention(q[-4:].astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    assert np.abs(out - ref).max() < 0.02
    # Bytes as the layout says: 96 quantized keys (8-bit codes + fp16 scale/min per group of
    # 32 tokens and channel), 4 fp16 keys in the window; values per token in groups of 32.
    key_bytes = n_kv * (96 * d + (96 // 32) * d * 4 + 4 * d * 2)
    assert store.key_bytes == key_bytes


def test_store_squat_subspace_save_and_load(tmp_path):
    rng = np.random.default_rng(4)
    n_kv, heads, d, t = 3, 9, 64, 64
    inv_freq = squat.rope_inv_freq(d, 10000.0)
    k = rng.standard_normal((t, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((t, n_kv, d)).astype(np.float32)
    q = rng.standard_normal((t, heads, d)).astype(np.float32)
    a = squat.Store(squat.CacheConfig("squat"), n_kv, d, inv_freq=inv_freq)
    with pytest.raises(RuntimeError, match="no query subspace"):
        a.append(k, v)  # a flush without the prompt's queries
    a = squat.Store(squat.CacheConfig("squat"), n_kv, d, inv_freq=inv_freq)
    a.set_queries(q)
    a.append(k, v)
    a.save_subspace(tmp_path / "sub.bin")
    b = squat.Store(squat.CacheConfig("squat"), n_kv, d, inv_freq=inv_freq)
    b.load_subspace(tmp_path / "sub.bin")
    b.append(k, v)
    for h in range(n_kv):
        for x, y in zip(a.dequantize(h), b.dequantize(h)):
            assert np.array_equal(x, y)
    assert a.bytes == b.bytes < 0.5 * t * n_kv * d * 2 * 2  # below half an fp16 cache


def test_store_bad_inputs():
    store = squat.Store(squat.CacheConfig("int8"), 2, 64)
    good = np.zeros((4, 2, 64), np.float32)
    with pytest.raises(ValueError, match="must have 2 KV heads, got 3"):
        store.append(np.zeros((4, 3, 64), np.float32), np.zeros((4, 3, 64), np.float32))
    with pytest.raises(ValueError, match="same number of tokens"):
        store.append(good, good[:2].copy())
    with pytest.raises(ValueError, match="non-finite"):
        store.append(good, np.full((4, 2, 64), np.inf, np.float32))
    with pytest.raises(ValueError, match="need the rotary frequencies"):
        squat.Store(squat.CacheConfig("kivi"), 2, 64)
    with pytest.raises(ValueError, match="multiple of the 2 KV heads"):
        store.attend(np.zeros((1, 3, 64), np.float32))
    with pytest.raises(ValueError, match="only a squat store"):
        store.save_subspace("/tmp/x")


def test_cache_config_validation_matches_the_command_line():
    with pytest.raises(ValueError, match="k_bits does not apply to method 'f16'"):
        squat.CacheConfig("f16", k_bits=2)
    with pytest.raises(ValueError, match="subspace_dim does not apply to method 'kivi'"):
        squat.CacheConfig("kivi", subspace_dim=4)
    with pytest.raises(TypeError, match="unknown cache option 'kbits'"):
        squat.CacheConfig("kivi", kbits=2)
    with pytest.raises(ValueError, match="method must be one of"):
        squat.CacheConfig("fp8")
    with pytest.raises(ValueError, match="residual_length 40 must be a positive multiple"):
        squat.CacheConfig("kivi", residual_length=40).native(64)
    with pytest.raises(ValueError, match="bits"):
        squat.CacheConfig("kivi", k_bits=3).native(64)
    c = squat.CacheConfig("squat-4", lambda_=0.01)
    assert (c.k_bits, c.v_bits) == (4, 4)
    assert c.native(64).quant_group_size == 16  # the engine's default block at head_dim 64
    assert c.flags() == ["--kv", "squat", "--k-bits", "4", "--lambda", "0.01", "--v-bits", "4"]
