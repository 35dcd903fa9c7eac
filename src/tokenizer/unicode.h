// UTF-8 helpers and the GPT-2 byte <-> character mapping used by byte-level BPE.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace squat::unicode {

inline constexpr std::size_t kValid = static_cast<std::size_t>(-1);

// Length of the well-formed UTF-8 sequence starting at text[pos] (1..4), or 0 when the bytes
// there are not one (stray continuation byte, overlong form, surrogate, above U+10FFFF,
// truncated sequence).
std::size_t sequence_length_at(std::string_view text, std::size_t pos);

// Byte offset of the first ill-formed sequence, or kValid when the whole text is UTF-8.
std::size_t first_invalid(std::string_view text);

// Length (1..4) a sequence starting with this lead byte claims to have; 0 for a byte that
// cannot start a sequence.
std::size_t claimed_length(unsigned char lead);

void append_utf8(std::string& out, uint32_t codepoint);

// Decodes the codepoint at text[pos] (which must be well formed) and advances pos.
uint32_t next_codepoint(std::string_view text, std::size_t& pos);

// GPT-2's reversible byte -> character mapping: printable Latin-1 bytes map to themselves,
// the 68 others to U+0100.. in byte order, so every byte string is a printable string.
const std::array<std::string, 256>& byte_to_utf8();
// Inverse of the mapping: the byte a character stands for, or -1 when it stands for none.
int codepoint_to_byte(uint32_t codepoint);

}  // namespace squat::unicode
