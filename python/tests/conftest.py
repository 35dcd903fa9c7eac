"""Shared fixtures. `make test` sets SQUAT_TEST_MODEL (the SmolLM2-135M GGUF) and SQUAT_CLI (the
`squat` command built beside); run by hand, they default to the usual places, and tests that
need one that is missing are skipped with the reason."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = os.environ.get(
    "SQUAT_TEST_MODEL",
    os.path.expanduser("~/.cache/squat/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
CLI = os.environ.get("SQUAT_CLI", str(ROOT / "build" / "squat"))


@pytest.fixture(scope="session")
def model_path():
    if not os.path.exists(MODEL):
        pytest.skip(f"test model {MODEL} not found (make model)")
    return MODEL


@pytest.fixture(scope="session")
def cli():
    if not os.path.exists(CLI):
        pytest.skip(f"squat command {CLI} not found (make build)")
    return CLI


@pytest.fixture(scope="session")
def engine(model_path):
    import squat

    m = squat.Model(model_path, threads=2, context=1024)
    yield m
    m.close()
