// Whole-file helpers. Writes go to a temporary file beside the target and are renamed into
// place, so a failed or interrupted write never leaves a half-written file under the name.
#pragma once

#include <string>
#include <string_view>

namespace squat {

void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace squat
