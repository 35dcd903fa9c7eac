#!/usr/bin/env python3
"""scripts/quality-report without running a measurement: McNemar's exact test against a
hand-computed case, the per-model defaults of --model, and the order of the planned
measurements (the fp16 base, KL of kivi-2/squat-2, then GSM8K f16/kivi-2/squat-2 first)."""
import importlib.machinery
import importlib.util
import math
import os
import sys
import tempfile

script = sys.argv[1]
loader = importlib.machinery.SourceFileLoader("quality_report", script)
spec = importlib.util.spec_from_loader("quality_report", loader)
qr = importlib.util.module_from_spec(spec)
loader.exec_module(qr)

# 13 paired problems: 2 right with both, 3 wrong with both, 1 right only with A, 7 only with B.
# Exact two-sided p = 2 * P(X <= 1), X ~ Binomial(8, 1/2) = 2 * (1 + 8) / 256 = 0.0703125.
a = {i: v for i, v in enumerate([True] * 2 + [False] * 3 + [True] + [False] * 7)}
b = {i: v for i, v in enumerate([True] * 2 + [False] * 3 + [False] + [True] * 7)}
n, only_a, only_b, p = qr.mcnemar(a, b)
assert (n, only_a, only_b) == (13, 1, 7), (n, only_a, only_b)
assert math.isclose(p, 0.0703125, rel_tol=1e-12), p
assert qr.mcnemar(b, a)[3] == p
assert qr.mcnemar({0: True, 1: False}, {0: True, 1: False})[3] == 1.0  # no discordant pair
assert qr.mcnemar({0: True, 1: False}, {0: False, 1: True})[3] == 1.0  # b = c


def args(*argv):
    old = sys.argv
    sys.argv = ["quality-report"] + list(argv)
    try:
        return qr.parse_args()
    finally:
        sys.argv = old


with tempfile.TemporaryDirectory() as out:
    q = args("--model", "qwen2.5-coder-1.5b", "--out", out, "--render-only", "--ctx", "2048")
    assert q.ctx == 2048, "an explicit flag wins over the model's default"
    assert (q.ppl_chunks, q.gsm8k_limit, q.passkey_trials) == (16, 200, 3)
    assert q.passkey_lengths == "2048,4096,8192,16384"
    assert q.model.endswith("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf")
    default = args("--model", "qwen2.5-coder-1.5b", "--render-only")
    assert default.out == os.path.join(qr.ROOT, "docs", "measurements", "quality-qwen2.5-coder-1.5b")
    assert default.scratch == os.path.expanduser("~/.cache/squat/quality-qwen"), \
        "the 5 GB fp16 logits and the logs are not committed"
    assert q.scratch == out, "--out holds everything"
    with open(os.path.join(out, f"diag-prompt-{q.diag_chars}.txt"), "w") as f:
        f.write("x")
    methods = [(m, qr.with_pin(f, q.profile["pin"])) for m, f in qr.METHODS]
    tasks, base = qr.plan(q, methods)
    names = [os.path.basename(t[0]) for t in tasks]
    assert names[:6] == ["f16-c2048-n16.logits", "ppl-c2048-n16-kivi-2.json",
                         "ppl-c2048-n16-squat-2.json", "gsm8k-200-f16.json",
                         "gsm8k-200-kivi-2.json", "gsm8k-200-squat-2.json"], names[:6]
    assert base == tasks[0][0] and not tasks[0][2] and tasks[1][2]
    squat2 = dict(zip(names, tasks))["ppl-c2048-n16-squat-2.json"][1]
    assert "--quant-group-size" not in squat2, "head_dim 128 runs the engine's default block"
    assert "--parallel" in dict(zip(names, tasks))["gsm8k-200-squat-2.json"][1]
    assert names[-1] == "ppl-c2048-n16-f16.json"

    s = args("--out", out, "--render-only", "--diag", "")
    smethods = [(m, qr.with_pin(f, s.profile["pin"])) for m, f in qr.METHODS]
    stasks, _ = qr.plan(s, smethods)
    snames = [os.path.basename(t[0]) for t in stasks]
    sq = dict(zip(snames, stasks))["ppl-c512-n16-squat-2.json"][1]
    i = sq.index("--quant-group-size")
    assert sq[i + 1] == "32", "SmolLM2's rows keep block 32"
    assert dict(qr.diag_variants(args("--model", "qwen2.5-coder-1.5b", "--render-only")))["g32"] \
        == ["--quant-group-size=32"]
print("ok")
