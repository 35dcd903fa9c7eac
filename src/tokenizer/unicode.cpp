#include "tokenizer/unicode.h"

namespace squat::unicode {

std::size_t claimed_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xc2) return 0;  // continuation byte, or overlong 2-byte lead (C0, C1)
  if (lead < 0xe0) return 2;
  if (lead < 0xf0) return 3;
  if (lead < 0xf5) return 4;
  return 0;
}

std::size_t sequence_length_at(std::string_view text, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  const std::size_t n = claimed_length(lead);
  if (n <= 1) return n;
  if (pos + n > text.size()) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    if ((byte(pos + i) & 0xc0) != 0x80) return 0;
  }
  const unsigned char second = byte(pos + 1);
  if (lead == 0xe0 && second < 0xa0) return 0;   // overlong 3-byte form
  if (lead == 0xed && second >= 0xa0) return 0;  // UTF-16 surrogate
  if (lead == 0xf0 && second < 0x90) return 0;   // overlong 4-byte form
  if (lead == 0xf4 && second >= 0x90) return 0;  // above U+10FFFF
  return n;
}

std::size_t first_invalid(std::string_view text) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const std::size_t n = sequence_length_at(text, pos);
    if (n == 0) return pos;
    pos += n;
  }
  return kValid;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3f));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

uint32_t next_codepoint(std::string_view text, std::size_t& pos) {
  const auto byte = [&](std::size_t i) { return uint32_t(static_cast<unsigned char>(text[i])); };
  const uint32_t lead = byte(pos);
  std::size_t n = claimed_length(static_cast<unsigned char>(lead));
  if (n == 0 || pos + n > text.size()) n = 1;  // caller promised well-formed; stay in bounds
  uint32_t cp;
  switch (n) {
    case 2:
      cp = lead & 0x1f;
      break;
    case 3:
      cp = lead & 0x0f;
      break;
    case 4:
      cp = lead & 0x07;
      break;
    default:
      ++pos;
      return lead;
  }
  for (std::size_t i = 1; i < n; ++i) cp = (cp << 6) | (byte(pos + i) & 0x3f);
  pos += n;
  return cp;
}

namespace {

struct ByteMap {
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 512> to_byte;  // every mapped codepoint is below U+0144
  ByteMap() {
    to_byte.fill(-1);
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
      const uint32_t cp = printable ? b : next_extra++;
      append_utf8(to_utf8[b], cp);
      to_byte[cp] = int16_t(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

}  // namespace

const std::array<std::string, 256>& byte_to_utf8() { return byte_map().to_utf8; }

int codepoint_to_byte(uint32_t codepoint) {
  if (codepoint >= 512) return -1;
  return byte_map().to_byte[codepoint];
}

}  // namespace squat::unicode
