"""squat.Model against the `squat` command on the test model, and its bad inputs."""

import subprocess
import threading

import numpy as np
import pytest

import squat

PROMPT = "The capital of France is"


@pytest.mark.parametrize("kv", [squat.CacheConfig("f16"),
                                squat.CacheConfig("squat", k_bits=2, v_bits=2)],
                         ids=["f16", "squat-2"])
def test_greedy_generation_equals_squat_run(engine, cli, model_path, kv):
    text = engine.generate(PROMPT, max_tokens=40, temperature=0, kv=kv)
    run = subprocess.run(
        [cli, "run", "-m", model_path, "-p", PROMPT, "-n", "40", "--temp", "0", "-t", "2",
         "--no-display-prompt", *kv.flags()], check=True, capture_output=True, text=True)
    # squat run ends its text with a newline when the text has none.
    assert run.stdout == (text if text.endswith("\n") else text + "\n") or run.stdout == text
    stats = engine.last_stats
    assert stats["prompt_tokens"] == len(engine.tokenize(PROMPT))
    assert stats["cache_bytes"] > 0


def test_streaming_stop_and_stats(engine):
    full = engine.generate(PROMPT, max_tokens=24, temperature=0)
    pieces = list(engine.generate(PROMPT, max_tokens=24, temperature=0, stream=True))
    assert "".join(pieces) == full and len(pieces) > 3
    cut = engine.generate(PROMPT, max_tokens=24, temperature=0, stop=".")
    assert full.startswith(cut) and "." not in cut and full[len(cut)] == "."
    assert engine.last_stats["stopped_at_stop"]


def test_cache_bytes_follow_the_method(engine):
    sizes = {}
    for name in ("f16", "int8", "squat-2"):
        engine.generate(PROMPT * 30, max_tokens=4, temperature=0, kv=name)
        sizes[name] = engine.last_stats["cache_bytes"]
        tokens = engine.last_stats["cache_tokens"]
    # f16: 30 layers x 3 KV heads x 64 x (key + value) x 2 bytes per token.
    assert sizes["f16"] == tokens * 30 * 3 * 64 * 2 * 2
    assert sizes["int8"] < 0.6 * sizes["f16"]
    assert sizes["squat-2"] < 0.5 * sizes["f16"]


def test_sampling_is_seeded(engine):
    a = engine.generate(PROMPT, max_tokens=16, temperature=1.0, seed=7)
    b = engine.generate(PROMPT, max_tokens=16, temperature=1.0, seed=7)
    assert a == b


def test_tokenize_detokenize_and_logits(engine):
    ids = engine.tokenize("Hello, world! Grüße")
    assert engine.detokenize(ids) == "Hello, world! Grüße"
    logits = engine.logits(ids)
    assert logits.shape == (len(ids), engine.config["vocab_size"]) and logits.dtype == np.float32
    # Feeding the tokens one at a time through the f16 cache (keys and values rounded to fp16,
    # other matrix shapes) predicts the same tokens with nearly the same distributions.
    step = engine.logits(ids, prompt_tokens=1)
    assert (step.argmax(1) == logits.argmax(1)).all()
    assert kl(logits, step).max() < 0.02


def kl(base, other):
    """Per-row KL(softmax(base) || softmax(other)) in double precision."""
    a = base - base.max(1, keepdims=True)
    b = other - other.max(1, keepdims=True)
    la = a - np.log(np.exp(a.astype(np.float64)).sum(1, keepdims=True))
    lb = b - np.log(np.exp(b.astype(np.float64)).sum(1, keepdims=True))
    return (np.exp(la) * (la - lb)).sum(1)


def test_generation_releases_the_gil(engine):
    # While one thread generates, another keeps running Python code.
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(1)
            done.wait(0.001)

    t = threading.Thread(target=tick)
    t.start()
    engine.generate(PROMPT * 40, max_tokens=2, temperature=0)
    done.set()
    t.join()
    assert len(ticks) > 5


def test_bad_inputs_raise_clear_errors(engine, model_path, tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.logits([1, 10**7])
    with pytest.raises(TypeError, match="token ids must be ints"):
        engine.logits([1, 2.5])
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate("")
    with pytest.raises(ValueError, match="must be >= 0"):
        engine.generate(PROMPT, max_tokens=-1)
    with pytest.raises(ValueError, match="k_bits does not apply to method 'f16'"):
        engine.generate(PROMPT, kv=squat.CacheConfig("f16", k_bits=4))
    with pytest.raises(ValueError, match="more than the context"):
        squat.Model(model_path, context=4).generate(PROMPT * 3)
    with pytest.raises(TypeError, match="must be a str"):
        engine.tokenize(b"bytes")
    with pytest.raises(RuntimeError, match="No such file|cannot open|not found"):
        squat.Model(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(RuntimeError, match="bad.gguf"):
        squat.Model(str(bad))
    closed = squat.Model(model_path, threads=1)
    closed.close()
    with pytest.raises(RuntimeError, match="is closed"):
        closed.generate(PROMPT)
