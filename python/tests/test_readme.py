"""The README's Python example runs as written (so README and package cannot drift apart).

The block is taken from the README itself. Its model path is the place `make model` puts the
test model; the only change made here is to point that path at SQUAT_TEST_MODEL when the tests
run with another copy (conftest.py). It needs transformers for its squat.hf part.
"""

import contextlib
import io
import re

import pytest

from conftest import ROOT

README_MODEL = '"~/.cache/squat/models/SmolLM2-135M-Instruct.Q4_1.gguf"'


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) == 1, "README's Python section should hold one ```python block"
    return blocks[0]


def test_readme_example_runs_as_written(model_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    code = readme_python_block()
    assert README_MODEL in code, "the example's model path changed; update this test"
    code = code.replace(README_MODEL, repr(model_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Python)", "exec"), {"__name__": "readme"})
    lines = {line.split(":")[0]: line.split() for line in out.getvalue().splitlines()}
    # The engine's cache, the quantizer's figures (2-bit codes + fp16 scale and min per 32),
    # and the transformers cache's bytes.
    assert int(lines["cache bytes"][-1]) > 0
    quant = lines["bits per element"]
    assert float(quant[3]) == pytest.approx(3.0) and 0 < float(quant[-1]) < 1
    assert int(lines["SquatCache bytes"][-1]) > 0
