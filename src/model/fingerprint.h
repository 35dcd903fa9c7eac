// A short text that identifies a model's weights, stored in files made for one model (SQuat
// subspace files) so that loading them with another model is refused instead of silently
// producing a worse cache.
#pragma once

#include <string>

#include "gguf/gguf.h"

namespace squat {

// "model '<general.name>' (<architecture>, <n> tensors, weights <16 hex digits>)". The hash
// covers every tensor's name, type and shape and 16 samples of 64 bytes spread over each
// tensor's data: cheap (a few MB read at most) yet different for any two real models,
// including fine-tunes of one base that share every shape.
std::string model_fingerprint(const gguf::File& file);

}  // namespace squat
