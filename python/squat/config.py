"""CacheConfig: the KV cache options, named as the command line's cache flags.

`--kv METHOD` is `method`, `--k-bits 2` is `k_bits=2`, `--lambda` is `lambda_` (a Python keyword
otherwise). As on the command line, an option that does not apply to the chosen method is
refused rather than ignored, and impossible combinations are refused by the same library check
(CacheConfig::validate) when the head dimension is known.
"""

from __future__ import annotations

from . import _squat
from ._arrays import float_option, int_option, str_option

METHODS = ("f32", "f16", "int8", "int4", "kivi", "squat")

# option: (default, methods it applies to, flag on the command line). The applicability column
# is the command line's (src/apps/model_options.cpp, kMethodFlags and --group-size).
_OPTIONS = {
    "k_bits": (2, ("kivi", "squat"), "--k-bits"),
    "v_bits": (2, ("kivi", "squat"), "--v-bits"),
    "group_size": (32, ("int8", "int4", "kivi", "squat"), "--group-size"),
    "residual_length": (32, ("kivi", "squat"), "--residual-length"),
    "quant_group_size": (0, ("squat",), "--quant-group-size"),
    "subspace_dim": (20, ("squat",), "--subspace-dim"),
    "lambda_": (0.001, ("squat",), "--lambda"),
    "key_quant": ("per-channel", ("kivi", "squat"), "--key-quant"),
    "key_rope": (None, METHODS, "--key-rope"),
    "query_rope": ("after", ("squat",), "--query-rope"),
    "power_method": (False, ("squat",), "--power-method"),
    "hadamard": (False, METHODS, "--hadamard"),
}


class CacheConfig:
    """How the KV cache is stored.

    CacheConfig("squat", k_bits=2, v_bits=2) is `--kv squat --k-bits 2 --v-bits 2`.
    "kivi-2", "squat-4", ... set both bit widths, as `squat bench --kv` does.
    quant_group_size=0 picks the engine's default block (64 from head_dim 128, else head_dim/4).
    """

    def __init__(self, method: str = "f16", **options):
        if not isinstance(method, str):
            raise TypeError(f"method must be a str ({', '.join(METHODS)}), got {method!r}")
        base, _, bits = method.partition("-")
        if bits:
            if base not in ("kivi", "squat") or bits not in ("2", "4", "8"):
                raise ValueError(
                    f"method {method!r}: a bit suffix is kivi-2/-4/-8 or squat-2/-4/-8"
                )
            for name in ("k_bits", "v_bits"):
                if name in options:
                    raise ValueError(f"method {method!r} already sets {name}; give one or the other")
                options[name] = int(bits)
        method = str_option("method", base, METHODS)
        self.method = method
        self._given = set()
        for name, value in options.items():
            if name not in _OPTIONS:
                raise TypeError(
                    f"unknown cache option {name!r}; options are {', '.join(_OPTIONS)}"
                )
            applies = _OPTIONS[name][1]
            if method not in applies:
                raise ValueError(
                    f"{name} does not apply to method {method!r} (it is for {', '.join(applies)})"
                )
            self._given.add(name)
        values = {name: options.get(name, default) for name, (default, _, _) in _OPTIONS.items()}
        for name in ("k_bits", "v_bits", "group_size", "residual_length"):
            values[name] = int_option(name, values[name], minimum=1)
        values["quant_group_size"] = int_option("quant_group_size", values["quant_group_size"],
                                                minimum=0)
        values["subspace_dim"] = int_option("subspace_dim", values["subspace_dim"], minimum=0)
        values["lambda_"] = float_option("lambda_", values["lambda_"])
        if values["lambda_"] < 0:
            raise ValueError(f"lambda_ must be >= 0, got {values['lambda_']}")
        values["key_quant"] = str_option("key_quant", values["key_quant"],
                                         ("per-channel", "per-token"))
        if values["key_rope"] is not None:
            values["key_rope"] = str_option("key_rope", values["key_rope"], ("pre", "post"))
        values["query_rope"] = str_option("query_rope", values["query_rope"], ("after", "before"))
        for name in ("power_method", "hadamard"):
            if not isinstance(values[name], bool):
                raise TypeError(f"{name} must be a bool, got {values[name]!r}")
        self.__dict__.update(values)

    def native(self, head_dim: int):
        """The library's configuration for a model with this head dimension (validated)."""
        return _squat.make_cache_config(
            self.method, self.k_bits, self.v_bits, self.group_size, self.residual_length,
            self.quant_group_size, self.subspace_dim, self.lambda_, self.key_quant,
            self.key_rope or "", self.query_rope, self.power_method, self.hadamard,
            int_option("head_dim", head_dim, minimum=1),
        )

    def flags(self) -> list[str]:
        """The command-line flags that ask for this cache (for `squat run` and friends)."""
        out = ["--kv", self.method]
        for name in sorted(self._given):
            flag, value = _OPTIONS[name][2], getattr(self, name)
            if isinstance(value, bool):
                if value:
                    out.append(flag)
            else:
                out += [flag, str(value)]
        return out

    def __repr__(self) -> str:
        given = ", ".join(f"{n}={getattr(self, n)!r}" for n in sorted(self._given))
        return f"CacheConfig({self.method!r}{', ' if given else ''}{given})"
