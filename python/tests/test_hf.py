"""squat.hf.SquatCache under transformers, and the engine checked against transformers.

transformers loads the same GGUF test model itself (dequantizing its Q4_1 weights to float32;
python/squat/_hf_gguf.py keeps the converted copy), so these compare two independent
implementations of the same weights.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import squat  # noqa: E402

TEXT = (
    "The history of the city begins in the Roman era, when a small settlement grew on the "
    "banks of the river. Over the following centuries it became a market town, then a centre "
    "of the wool trade, and by the eighteenth century one of the largest ports of the country. "
    "Its old town still keeps the narrow streets, the cathedral and the guild houses of that "
    "time, while the docks were rebuilt after the war as a district of offices and flats. "
    "Today the city is known for its university, its museums and the festival of music that "
    "fills the squares every summer, drawing visitors from all over the world.")


@pytest.fixture(scope="session")
def hf(model_path):
    import squat.hf
    from squat._hf_gguf import load_gguf_model

    torch.set_num_threads(2)
    model, tok = load_gguf_model(model_path)
    squat.hf.attach(model)
    return model, tok


def kl_rows(base, other):
    """Per-row KL(softmax(base) || softmax(other)), double precision."""
    la = torch.log_softmax(torch.as_tensor(base, dtype=torch.float64), -1)
    lb = torch.log_softmax(torch.as_tensor(other, dtype=torch.float64), -1)
    return (la.exp() * (la - lb)).sum(-1).numpy()


@torch.no_grad()
def hf_logits(model, ids, prompt_tokens, cache):
    """Logits of every position: the prompt in one forward, the rest one token at a time
    (each reading the cache), as Model.logits(prompt_tokens=...) feeds the engine."""
    x = torch.tensor([ids])
    rows = [model(x[:, :prompt_tokens], past_key_values=cache, use_cache=True).logits[0]]
    for i in range(prompt_tokens, len(ids)):
        rows.append(model(x[:, i:i + 1], past_key_values=cache, use_cache=True).logits[0])
    return torch.cat(rows).float().numpy()


@pytest.fixture(scope="session")
def text_ids(engine):
    ids = engine.tokenize(TEXT, add_special=False)
    assert len(ids) > 120
    return ids[:128]


def test_tokenizers_agree(hf, engine):
    _, tok = hf
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == engine.tokenize(TEXT, False)


def test_engine_logits_match_transformers(hf, engine, text_ids):
    """Same weights (Q4_1), two implementations. The engine multiplies with int8-quantized
    activations (per row), transformers in float32, so logits differ by a few tenths; the
    predictions agree nearly everywhere and the mean KL is small (measured on these 128 tokens:
    top-1 agreement 0.975, mean KL 0.0024)."""
    model, _ = hf
    ours = engine.logits(text_ids, kv="f32")
    theirs = hf_logits(model, text_ids, len(text_ids), torch_cache(None))
    kl = kl_rows(theirs, ours)
    agree = (ours.argmax(1) == theirs.argmax(1)).mean()
    print(f"engine vs transformers: top-1 agreement {agree:.3f}, mean KL {kl.mean():.4f}")
    assert agree >= 0.9, agree
    assert kl.mean() < 0.02, kl.mean()


def torch_cache(cache):
    from transformers import DynamicCache

    return DynamicCache() if cache is None else cache


@pytest.mark.parametrize("method, order", [("kivi", "half"), ("squat", "interleaved")])
def test_2bit_kl_matches_the_engine(hf, engine, text_ids, method, order):
    """KL of the 2-bit cache against the full cache, over 64 tokens that each read the cache
    after a 64-token prompt, measured in transformers and in the engine (Model.logits, the
    protocol of `squat perplexity --kl-base`). The two see slightly different keys and values
    (float32 activations there, int8 here), so each token's KL differs; the quantizer is the same,
    so the paired per-token differences must average to zero within their noise: |mean| below
    3 standard errors of the mean (a 99.7% two-sided bound for a mean-zero difference; the data
    are fixed, so the test is deterministic). SQuat's blocks of adjacent channels depend on the
    channel order, so its cache stores keys in the engine's (GGUF's interleaved) order here; in
    transformers' own order SQuat-2 measured 0.068 against the engine's 0.091 (3.0 standard
    errors apart), KIVI 0.109 vs 0.104 in either order. Both KLs must also be far above the
    implementations' own disagreement (test_engine_logits_match_transformers)."""
    import squat.hf

    model, _ = hf
    p = 64
    full = hf_logits(model, text_ids, p, torch_cache(None))[p:]
    cache = squat.hf.SquatCache(model.config, method=method, k_bits=2, v_bits=2,
                                channel_order=order)
    assert cache.fused
    quant = hf_logits(model, text_ids, p, cache)[p:]
    hf_kl = kl_rows(full, quant)
    kv = squat.CacheConfig(method, k_bits=2, v_bits=2)
    e_full = engine.logits(text_ids, kv="f16", prompt_tokens=p)[p:]
    e_quant = engine.logits(text_ids, kv=kv, prompt_tokens=p)[p:]
    engine_kl = kl_rows(e_full, e_quant)
    d = hf_kl - engine_kl
    se = d.std(ddof=1) / np.sqrt(len(d))
    print(f"{method}-2 KL: transformers {hf_kl.mean():.4f}, engine {engine_kl.mean():.4f}, "
          f"paired difference {d.mean():+.4f} (s.e. {se:.4f})")
    assert abs(d.mean()) < 3 * se, (hf_kl.mean(), engine_kl.mean(), se)
    assert engine_kl.mean() > 0.01 and hf_kl.mean() > 0.01


def test_squat_attention_equals_transformers_attention(hf, text_ids):
    """The "squat" attention function reading the store against transformers' sdpa attention
    over DynamicCache, with a float32 store of pre-RoPE keys: the store un-rotates the keys
    transformers hands it and rotates them back inside attention (RoPE layout, positions),
    maps query heads to KV heads (GQA, 9 query heads on 3 KV heads) and scales logits. A slip
    in any of these moves logits by O(1); what remains is float32 rounding of a different
    summation order (measured 3.5e-5 at most over 32 decode steps)."""
    import squat.hf

    model, _ = hf
    ids, p = text_ids[:96], 64
    full = hf_logits(model, ids, p, torch_cache(None))[p:]
    cache = squat.hf.SquatCache(model.config, method="f32", key_rope="pre")
    assert cache.fused
    ours = hf_logits(model, ids, p, cache)[p:]
    assert np.abs(ours - full).max() < 1e-3


@pytest.mark.parametrize("method", ["kivi", "squat"])
def test_8bit_cache_generates_what_the_full_cache_generates(hf, text_ids, method):
    """Greedy generate() with an 8-bit SquatCache against transformers' DynamicCache after a
    128-token prompt (96 of its tokens leave the 32-token residual window and are quantized),
    24 new tokens (min_new_tokens: no early end). The outputs are equal, or first differ where
    the full cache's two candidates were nearly tied: a logit margin below 0.15, the bound the
    engine's own 8-bit test uses (tests/model/test_cache_methods.cpp); 8-bit codes move this
    model's logits by about 0.06 here (fused and dequantized paths alike)."""
    import squat.hf
    from transformers import DynamicCache

    model, _ = hf
    x = torch.tensor([text_ids])
    n = 24
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
               return_dict_in_generate=True)
    with torch.no_grad():
        full = model.generate(x, past_key_values=DynamicCache(), **gen)
        cache = squat.hf.SquatCache(model.config, method=method, k_bits=8, v_bits=8)
        ours = model.generate(x, past_key_values=cache, **gen)
    assert cache.fused and cache.layers[0].store.quantized_keys >= 96
    a = full.sequences[0, len(text_ids):]
    b = ours.sequences[0, len(text_ids):]
    assert len(a) == len(b) == n
    differ = (a != b).nonzero()
    if len(differ):
        i = int(differ[0])
        logits = full.logits[i][0]
        margin = float(logits[a[i]] - logits[b[i]])
        print(f"{method}-8 first differs at new token {i}: full-cache margin {margin:.3f}")
        assert margin < 0.15, (i, margin)


@pytest.fixture(scope="session")
def tiny_qwen2():
    """A randomly initialised Qwen2 built offline from a config: the other attention class
    squat.hf supports, with what Llama lacks (q/k/v biases) and 2 query heads per KV head.
    Weights at std 0.2 (not transformers' 0.02) so that attention moves the logits."""
    import squat.hf
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=0.2,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    squat.hf.attach(model)
    return model


def test_qwen2_attention_equals_transformers_attention(tiny_qwen2):
    """As the Llama test above, on Qwen2: a float32 store of pre-RoPE keys read by the "squat"
    attention function gives transformers' sdpa logits over DynamicCache (measured 4e-5 at
    most), while a 2-bit cache moves them by O(1) (measured 15), so the comparison can fail."""
    import squat.hf

    rng = np.random.default_rng(1)
    ids, p = [int(t) for t in rng.integers(0, 512, 96)], 64
    full = hf_logits(tiny_qwen2, ids, p, torch_cache(None))[p:]
    cache = squat.hf.SquatCache(tiny_qwen2.config, method="f32", key_rope="pre")
    assert cache.fused
    assert np.abs(hf_logits(tiny_qwen2, ids, p, cache)[p:] - full).max() < 1e-3
    two_bit = squat.hf.SquatCache(tiny_qwen2.config, method="kivi", k_bits=2, v_bits=2)
    assert np.abs(hf_logits(tiny_qwen2, ids, p, two_bit)[p:] - full).max() > 0.5


def test_bad_use_raises_clear_errors(hf):
    import squat.hf

    model, tok = hf
    two = tok(["Hello there", "Hi you"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="batch size 1 only"):
        model.generate(**two, max_new_tokens=2,
                       past_key_values=squat.hf.SquatCache(model.config, method="kivi"))
    with pytest.raises(ValueError, match="k_bits does not apply to method 'f16'"):
        squat.hf.SquatCache(model.config, method="f16", k_bits=2)
