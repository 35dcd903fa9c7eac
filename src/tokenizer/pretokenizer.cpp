#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <utility>

#include "core/error.h"

namespace squat {

namespace {

// The expressions are those llama.cpp applies for each pre value (they restate the
// pre-tokenizers of the Hugging Face tokenizer.json files, with case-insensitive groups
// written out as character classes).
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct NamedSpec {
  const char* names;  // space-separated pre values
  PretokenizerSpec spec;
};

const std::vector<NamedSpec>& specs() {
  static const std::vector<NamedSpec> table = {
      {"default",
       {{R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}, false, false}},
      {"gpt-2 mpt olmo phi-2", {{kGpt2}, false, false}},
      {"llama-bpe llama3 llama-v3 falcon3", {{kLlama3}, true, true}},
      {"dbrx smaug-bpe", {{kLlama3}, false, false}},
      {"qwen2 deepseek-r1-qwen megrez stablelm2", {{kQwen2}, false, false}},
      {"smollm starcoder refact codeshell", {{R"(\p{N})", kGpt2}, false, false}},
  };
  return table;
}

bool name_in(std::string_view names, std::string_view pre) {
  while (!names.empty()) {
    const std::size_t space = names.find(' ');
    if (names.substr(0, space) == pre) return true;
    if (space == std::string_view::npos) break;
    names.remove_prefix(space + 1);
  }
  return false;
}

}  // namespace

std::string supported_pretokenizers() {
  std::string out;
  for (const auto& entry : specs()) {
    std::string_view names = entry.names;
    while (!names.empty()) {
      const std::size_t space = names.find(' ');
      if (!out.empty()) out += ", ";
      out += names.substr(0, space);
      if (space == std::string_view::npos) break;
      names.remove_prefix(space + 1);
    }
  }
  return out;
}

PretokenizerSpec pretokenizer_spec(const std::string& pre, const std::string& source) {
  const std::string key = pre.empty() ? "default" : pre;
  for (const auto& entry : specs()) {
    if (name_in(entry.names, key)) return entry.spec;
  }
  fail("{}: unsupported pre-tokenizer tokenizer.ggml.pre = \"{}\" (supported: {})", source, pre,
       supported_pretokenizers());
}

struct Pretokenizer::Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Regex() { pcre2_code_free(code); }
};

Pretokenizer::Pretokenizer(const std::vector<std::string>& regexes) {
  for (const auto& pattern : regexes) {
    auto regex = std::make_unique<Regex>();
    int error = 0;
    PCRE2_SIZE offset = 0;
    regex->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (!regex->code) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      fail("pre-tokenizer regex /{}/ does not compile at offset {}: {}", pattern, offset,
           reinterpret_cast<const char*>(message.data()));
    }
    regex->jit = pcre2_jit_compile(regex->code, PCRE2_JIT_COMPLETE) == 0;
    regexes_.push_back(std::move(regex));
  }
}

Pretokenizer::~Pretokenizer() = default;

void Pretokenizer::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  if (text.empty()) return;
  std::vector<std::string_view> current{text};
  std::vector<std::string_view> next;
  for (const auto& regex : regexes_) {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(regex->code, nullptr);
    if (!match) throw std::bad_alloc();
    next.clear();
    for (const std::string_view piece : current) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      std::size_t offset = 0;
      while (offset < piece.size()) {
        // The text was checked once for UTF-8 and pieces start and end on characters, so
        // PCRE2 need not re-check the subject on every call (that would be quadratic).
        uint32_t options = PCRE2_NO_UTF_CHECK | PCRE2_NOTEMPTY;
        int rc = pcre2_match(regex->code, subject, piece.size(), offset, options, match, nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
          options |= PCRE2_NO_JIT;
          rc = pcre2_match(regex->code, subject, piece.size(), offset, options, match, nullptr);
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          pcre2_match_data_free(match);
          std::array<PCRE2_UCHAR, 256> message{};
          pcre2_get_error_message(rc, message.data(), message.size());
          fail("pre-tokenizer regex failed on a piece of {} bytes: {}", piece.size(),
               reinterpret_cast<const char*>(message.data()));
        }
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
        const std::size_t start = ovector[0], end = ovector[1];
        if (start > offset) next.push_back(piece.substr(offset, start - offset));
        next.push_back(piece.substr(start, end - start));
        offset = end;
      }
      if (offset < piece.size()) next.push_back(piece.substr(offset));
    }
    pcre2_match_data_free(match);
    current.swap(next);
  }
  pieces.insert(pieces.end(), current.begin(), current.end());
}

}  // namespace squat
