"""Checks that turn a wrong array into one clear exception before it reaches the C++ side.

The native functions read NumPy arrays in place (no copy), so they take only C-contiguous
float32 arrays of the stated number of dimensions; anything else is refused here with a message
that names the argument, what it got and what it expected, instead of nanobind's generic
"incompatible function arguments".
"""

from __future__ import annotations

import numpy as np


def float_array(name: str, a, ndim: int, layout: str, *, finite: bool = True) -> np.ndarray:
    """Returns `a` itself when it is a C-contiguous float32 ndarray of `ndim` dimensions."""
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of float32 {layout}, got {type(a).__name__}"
            + (" (convert a torch tensor with .detach().float().cpu().numpy())"
               if type(a).__module__.startswith("torch") else "")
        )
    if a.dtype != np.float32:
        raise TypeError(
            f"{name} must have dtype float32, got {a.dtype} (use {name}.astype(np.float32))"
        )
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (row-major) {layout}; got a strided view "
            f"(use np.ascontiguousarray({name}))"
        )
    if finite and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(
            f"{name} holds a non-finite value ({a[tuple(bad)]}) at index {tuple(int(i) for i in bad)}"
        )
    return a


def int_option(name: str, value, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def float_option(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def str_option(name: str, value, choices) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(choices)}; got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
