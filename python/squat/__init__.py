"""squat: SQuat KV-cache quantization from Python.

- squat.Model: the C++ engine over a GGUF model (tokenize, generate, logits, cache bytes).
- squat.CacheConfig: the KV cache options, named as the command line's flags.
- squat.quantize_keys, squat.Store: the KV-cache library on NumPy arrays.
- squat.hf: a KV cache for Hugging Face transformers stored through the same C++ store
  (imported on its own: `import squat.hf`, needs torch and transformers).
"""

from .config import METHODS, CacheConfig
from .engine import Model
from .library import Store, key_error, quantize_keys, rope_inv_freq

__all__ = ["METHODS", "CacheConfig", "Model", "Store", "key_error", "quantize_keys",
           "rope_inv_freq"]
__version__ = "0.1.0"
