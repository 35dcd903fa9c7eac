#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <functional>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace squat {

namespace {

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";    // U+2581 "▁", SentencePiece's space
constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD

// Texts of control tokens that end a turn, whatever the metadata says (as llama.cpp does).
constexpr std::array<std::string_view, 10> kEndOfGenerationTexts = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<|eom_id|>",
    "_<EOT>",
    "<\xef\xbd\x9c"
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"};

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}

struct Merge {
  int32_t rank;
  int32_t result;
};

}  // namespace

struct Tokenizer::Impl {
  Vocab vocab;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids;
  std::vector<int32_t> specials;  // control / user-defined / unknown tokens, longest text first
  std::vector<int32_t> eog;
  std::vector<uint8_t> eog_flag;
  std::vector<std::string> pieces;  // token_to_piece(id, false)

  // Byte-level BPE.
  std::unique_ptr<Pretokenizer> pretokenizer;
  bool ignore_merges = false;
  std::unordered_map<uint64_t, Merge> merges;  // (left id, right id) -> rank, merged id
  // Byte-level BPE: the token of each byte's mapped character; SentencePiece: <0xXX>.
  std::array<int32_t, 256> byte_tokens{};

  int32_t id_of(std::string_view text) const {
    const auto it = ids.find(text);
    return it == ids.end() ? -1 : it->second;
  }

  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out, std::string& mapped) const;
  void encode_spm(std::string_view text, bool prefix_space, std::vector<int32_t>& out) const;
  void push_byte(unsigned char byte, std::vector<int32_t>& out) const;
  std::string piece(int32_t id, bool render_special) const;
  void check_id(int32_t id) const {
    if (id < 0 || std::size_t(id) >= vocab.tokens.size()) {
      fail("{}: token id {} is out of range (vocabulary has {} tokens)", vocab.name, id,
           vocab.tokens.size());
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Construction

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_vocab(Vocab vocab) {
  auto impl = std::make_shared<Impl>();
  const std::string& name = vocab.name;
  const std::size_t n = vocab.tokens.size();
  if (n == 0) fail("{}: the vocabulary has no tokens", name);
  if (n > std::size_t(INT32_MAX)) fail("{}: the vocabulary has too many tokens ({})", name, n);
  if (vocab.scores.empty()) vocab.scores.assign(n, 0.0f);
  if (vocab.types.empty()) vocab.types.assign(n, TokenType::Normal);
  if (vocab.scores.size() != n) {
    fail("{}: {} token scores for {} tokens", name, vocab.scores.size(), n);
  }
  if (vocab.types.size() != n) {
    fail("{}: {} token types for {} tokens", name, vocab.types.size(), n);
  }
  const auto check_special = [&](int32_t& id, const char* what, bool required) {
    if (id >= 0 && std::size_t(id) >= n) {
      if (required) fail("{}: {} token id {} is outside the vocabulary of {}", name, what, id, n);
      id = -1;  // an unused, out-of-range id (e.g. padding) is ignored, as llama.cpp does
    }
  };
  check_special(vocab.bos, "BOS", true);
  check_special(vocab.eos, "EOS", true);
  check_special(vocab.eot, "EOT", false);
  check_special(vocab.eom, "EOM", false);
  check_special(vocab.unk, "unknown", false);
  check_special(vocab.pad, "padding", false);
  if (vocab.add_bos && vocab.bos < 0) fail("{}: add_bos_token is set but there is no BOS", name);
  if (vocab.add_eos && vocab.eos < 0) fail("{}: add_eos_token is set but there is no EOS", name);

  impl->ids.reserve(n);
  for (std::size_t id = 0; id < n; ++id) {
    const std::string& text = vocab.tokens[id];
    if (text.empty()) continue;
    impl->ids.emplace(text, int32_t(id));  // on a duplicate text the first id wins
  }

  // End of generation.
  std::vector<int32_t> eog;
  for (const int32_t id : {vocab.eos, vocab.eot, vocab.eom}) {
    if (id >= 0) eog.push_back(id);
  }
  for (const std::string_view text : kEndOfGenerationTexts) {
    const int32_t id = impl->id_of(text);
    if (id < 0) continue;
    eog.push_back(id);
    // Some conversions leave these as normal tokens; they are control tokens in every model
    // that has them (llama.cpp overrides the type the same way).
    if (vocab.types[id] == TokenType::Normal || vocab.types[id] == TokenType::Undefined) {
      vocab.types[id] = TokenType::Control;
    }
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  impl->eog = eog;
  impl->eog_flag.assign(n, 0);
  for (const int32_t id : eog) impl->eog_flag[id] = 1;

  // Special tokens matched in the text before tokenizing, longest first.
  for (std::size_t id = 0; id < n; ++id) {
    const TokenType type = vocab.types[id];
    const std::string& text = vocab.tokens[id];
    if (type != TokenType::Control && type != TokenType::UserDefined &&
        type != TokenType::Unknown) {
      continue;
    }
    // A text that is not UTF-8 could split the input inside a character.
    if (text.empty() || unicode::first_invalid(text) != unicode::kValid) continue;
    impl->specials.push_back(int32_t(id));
  }
  std::stable_sort(impl->specials.begin(), impl->specials.end(), [&](int32_t a, int32_t b) {
    return vocab.tokens[a].size() > vocab.tokens[b].size();
  });

  impl->byte_tokens.fill(-1);
  if (vocab.kind == VocabKind::BytePairGpt2) {
    const PretokenizerSpec spec = pretokenizer_spec(vocab.pre, name);
    impl->pretokenizer = std::make_unique<Pretokenizer>(spec.regexes);
    impl->ignore_merges = spec.ignore_merges;
    const auto& mapped = unicode::byte_to_utf8();
    for (int b = 0; b < 256; ++b) impl->byte_tokens[b] = impl->id_of(mapped[b]);
    impl->merges.reserve(vocab.merges.size());
    for (std::size_t rank = 0; rank < vocab.merges.size(); ++rank) {
      const std::string& merge = vocab.merges[rank];
      const std::size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string::npos;
      if (space == std::string::npos) {
        fail("{}: merge {} (\"{}\") is not two tokens separated by a space", name, rank, merge);
      }
      const std::string_view left = std::string_view(merge).substr(0, space);
      const std::string_view right = std::string_view(merge).substr(space + 1);
      const int32_t left_id = impl->id_of(left), right_id = impl->id_of(right);
      const int32_t result = impl->id_of(std::string(left) + std::string(right));
      // A merge whose parts or result are not tokens can never be used to build a token.
      if (left_id < 0 || right_id < 0 || result < 0) continue;
      impl->merges.emplace(pair_key(left_id, right_id), Merge{int32_t(rank), result});
    }
  } else {
    for (int b = 0; b < 256; ++b) {
      int32_t id = impl->id_of(fmt::format("<0x{:02X}>", b));
      if (id < 0 && b < 0x80) id = impl->id_of(std::string(1, char(b)));
      impl->byte_tokens[b] = id;
    }
  }

  impl->vocab = std::move(vocab);
  impl->pieces.resize(n);
  for (std::size_t id = 0; id < n; ++id) impl->pieces[id] = impl->piece(int32_t(id), false);
  return Tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Encoding

namespace {

struct Fragment {
  int32_t token;  // -1: text
  std::size_t offset, length;
};

// Whether control token text at [offset, offset + length) lies wholly inside one range of
// `markup` (sorted, disjoint).
bool inside(const std::vector<TextRange>& markup, std::size_t offset, std::size_t length) {
  auto it = std::upper_bound(markup.begin(), markup.end(), offset,
                             [](std::size_t at, const TextRange& r) { return at < r.offset; });
  if (it == markup.begin()) return false;
  --it;
  return offset + length <= it->offset + it->length;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  return encode_impl(text, add_special, parse_special, nullptr);
}

std::vector<int32_t> Tokenizer::encode_chat(const RenderedChat& chat, bool add_special) const {
  return encode_impl(chat.text, add_special, true, &chat.markup);
}

std::vector<int32_t> Tokenizer::encode_impl(std::string_view text, bool add_special,
                                            bool parse_special,
                                            const std::vector<TextRange>* markup) const {
  const Impl& impl = *impl_;
  const Vocab& vocab = impl.vocab;
  if (text.size() > std::size_t(INT32_MAX)) {
    fail("text to tokenize is too long ({} bytes; at most {})", text.size(), INT32_MAX);
  }
  const std::size_t bad = unicode::first_invalid(text);
  if (bad != unicode::kValid) {
    fail(
        "text to tokenize is not valid UTF-8: byte 0x{:02x} at offset {} does not start a "
        "well-formed character",
        static_cast<unsigned char>(text[bad]), bad);
  }

  // Split out special tokens: each one in turn (longest first) splits every text fragment.
  std::vector<Fragment> fragments, next;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (const int32_t id : impl.specials) {
    const TokenType type = vocab.types[id];
    if (!parse_special && type != TokenType::UserDefined) continue;
    const std::string& special = vocab.tokens[id];
    bool found = false;
    next.clear();
    for (const Fragment& fragment : fragments) {
      if (fragment.token >= 0) {
        next.push_back(fragment);
        continue;
      }
      const std::string_view body = text.substr(fragment.offset, fragment.length);
      std::size_t pos = 0;
      while (true) {
        std::size_t hit = body.find(special, pos);
        // Control tokens outside the template's markup stay text (user-defined ones do not).
        while (hit != std::string_view::npos && markup && type != TokenType::UserDefined &&
               !inside(*markup, fragment.offset + hit, special.size())) {
          hit = body.find(special, hit + 1);
        }
        if (hit == std::string_view::npos) break;
        found = true;
        if (hit > pos) next.push_back({-1, fragment.offset + pos, hit - pos});
        next.push_back({id, 0, 0});
        pos = hit + special.size();
      }
      if (pos < body.size()) next.push_back({-1, fragment.offset + pos, body.size() - pos});
    }
    if (found) fragments.swap(next);
  }

  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special && vocab.add_bos) out.push_back(vocab.bos);
  bool previous_special = true;  // SentencePiece prefixes a space to text that follows one
  for (const Fragment& fragment : fragments) {
    if (fragment.token >= 0) {
      out.push_back(fragment.token);
      previous_special = true;
      continue;
    }
    const std::string_view body = text.substr(fragment.offset, fragment.length);
    if (vocab.kind == VocabKind::BytePairGpt2) {
      impl.encode_bpe(body, out);
    } else {
      impl.encode_spm(body, vocab.add_space_prefix && previous_special, out);
    }
    previous_special = false;
  }
  if (add_special && vocab.add_eos) out.push_back(vocab.eos);
  return out;
}

void Tokenizer::Impl::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string_view> words;
  pretokenizer->split(text, words);
  std::string mapped;
  for (const std::string_view word : words) encode_bpe_word(word, out, mapped);
}

void Tokenizer::Impl::encode_bpe_word(std::string_view word, std::vector<int32_t>& out,
                                      std::string& mapped) const {
  if (ignore_merges) {
    mapped.clear();
    const auto& byte_text = unicode::byte_to_utf8();
    for (const char c : word) mapped += byte_text[static_cast<unsigned char>(c)];
    const int32_t whole = id_of(mapped);
    if (whole >= 0) {
      out.push_back(whole);
      return;
    }
  }

  // One symbol per byte (each byte is one character of the mapped text); merge the adjacent
  // pair with the lowest rank, leftmost first, until no pair has a merge.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  struct Pair {
    int32_t rank;
    int32_t left, right;
    int32_t left_id, right_id;
  };
  const auto later = [](const Pair& a, const Pair& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Pair> queue;
  symbols.clear();
  queue.clear();
  const int32_t count = int32_t(word.size());
  for (int32_t i = 0; i < count; ++i) {
    const unsigned char byte = static_cast<unsigned char>(word[i]);
    const int32_t id = byte_tokens[byte];
    if (id < 0) {
      fail("{}: the vocabulary has no token for the byte 0x{:02x}", vocab.name, int(byte));
    }
    symbols.push_back({id, i - 1, i + 1 < count ? i + 1 : -1});
  }
  const auto add_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const auto it = merges.find(pair_key(symbols[left].id, symbols[right].id));
    if (it == merges.end()) return;
    queue.push_back({it->second.rank, left, right, symbols[left].id, symbols[right].id});
    std::push_heap(queue.begin(), queue.end(), later);
  };
  for (int32_t i = 0; i + 1 < count; ++i) add_pair(i, i + 1);
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), later);
    const Pair pair = queue.back();
    queue.pop_back();
    Symbol& left = symbols[pair.left];
    Symbol& right = symbols[pair.right];
    // Stale: one side has since been merged into something else (ids changed or removed).
    if (left.id != pair.left_id || right.id != pair.right_id || left.next != pair.right) continue;
    left.id = merges.at(pair_key(pair.left_id, pair.right_id)).result;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = pair.left;
    right.id = -1;
    right.prev = right.next = -1;
    add_pair(left.prev, pair.left);
    add_pair(pair.left, left.next);
  }
  for (int32_t i = 0; i >= 0 && i < count; i = symbols[i].next) out.push_back(symbols[i].id);
}

void Tokenizer::Impl::push_byte(unsigned char byte, std::vector<int32_t>& out) const {
  int32_t id = byte_tokens[byte];
  if (id < 0) id = vocab.unk;
  if (id < 0) {
    fail("{}: the vocabulary has neither a byte token <0x{:02X}> nor an unknown token", vocab.name,
         int(byte));
  }
  out.push_back(id);
}

void Tokenizer::Impl::encode_spm(std::string_view body, bool prefix_space,
                                 std::vector<int32_t>& out) const {
  // Spaces become "▁"; the vocabulary's merges are implied by its scores: repeatedly join the
  // adjacent pair whose concatenation is the token with the highest score (leftmost on ties).
  std::string text;
  text.reserve(body.size() + 8);
  if (prefix_space) text += kSpaceMark;
  for (const char c : body) {
    if (c == ' ') {
      text += kSpaceMark;
    } else {
      text += c;
    }
  }
  struct Symbol {
    uint32_t offset, length;
    int32_t prev, next;
  };
  struct Pair {
    float score;
    int32_t left, right;
    uint32_t length;
  };
  const auto worse = [](const Pair& a, const Pair& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  if (text.size() > std::size_t(INT32_MAX)) {
    fail("text to tokenize is too long once spaces become \"\u2581\" ({} bytes)", text.size());
  }
  std::vector<Symbol> symbols;
  std::vector<Pair> queue;
  symbols.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t n = std::max<std::size_t>(1, unicode::sequence_length_at(text, pos));
    const int32_t index = int32_t(symbols.size());
    symbols.push_back({uint32_t(pos), uint32_t(n), index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
    pos += n;
  }
  const auto add_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t length = symbols[left].length + symbols[right].length;
    const int32_t id = id_of(std::string_view(text).substr(symbols[left].offset, length));
    if (id < 0) return;
    queue.push_back({vocab.scores[id], left, right, length});
    std::push_heap(queue.begin(), queue.end(), worse);
  };
  for (int32_t i = 0; i + 1 < int32_t(symbols.size()); ++i) add_pair(i, i + 1);
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), worse);
    const Pair pair = queue.back();
    queue.pop_back();
    Symbol& left = symbols[pair.left];
    Symbol& right = symbols[pair.right];
    // Symbols only grow to the right, so a pair is current exactly when both sides still
    // have the lengths they had when it was queued.
    if (left.length == 0 || right.length == 0 || left.length + right.length != pair.length) {
      continue;
    }
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = pair.left;
    add_pair(left.prev, pair.left);
    add_pair(pair.left, left.next);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    const std::string_view piece =
        std::string_view(text).substr(symbols[i].offset, symbols[i].length);
    const int32_t id = id_of(piece);
    if (id >= 0) {
      out.push_back(id);
    } else {
      for (const char c : piece) push_byte(static_cast<unsigned char>(c), out);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding

std::string Tokenizer::Impl::piece(int32_t id, bool render_special) const {
  const std::string& text = vocab.tokens[id];
  switch (vocab.types[id]) {
    case TokenType::Control:
      return render_special ? text : std::string();
    case TokenType::Unknown:
      return render_special ? text : std::string(kReplacement);
    case TokenType::UserDefined:
      return text;
    case TokenType::Byte:
      if (text.size() == 6 && text.starts_with("<0x") && text.ends_with(">")) {
        const auto hex = [](char c) {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          return -1;
        };
        const int hi = hex(text[3]), lo = hex(text[4]);
        if (hi >= 0 && lo >= 0) return std::string(1, char(hi * 16 + lo));
      }
      break;  // not in <0xXX> form: decode like a normal token
    default:
      break;
  }
  std::string out;
  if (vocab.kind == VocabKind::SentencePiece) {
    out.reserve(text.size());
    for (std::size_t pos = 0; pos < text.size();) {
      if (text.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
        out += ' ';
        pos += kSpaceMark.size();
      } else {
        out += text[pos++];
      }
    }
    return out;
  }
  // Byte-level BPE: every character stands for one byte; keep any that does not.
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t start = pos;
    if (unicode::sequence_length_at(text, pos) == 0) {
      out += text[pos++];
      continue;
    }
    const int byte = unicode::codepoint_to_byte(unicode::next_codepoint(text, pos));
    if (byte >= 0) {
      out += char(byte);
    } else {
      out.append(text, start, pos - start);
    }
  }
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  impl_->check_id(id);
  return render_special ? impl_->piece(id, true) : impl_->pieces[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
  const Impl& impl = *impl_;
  for (const int32_t id : ids) impl.check_id(id);
  const bool strip_prefix =
      impl.vocab.kind == VocabKind::SentencePiece && impl.vocab.add_space_prefix;
  std::string out;
  bool first_text = true;
  for (const int32_t id : ids) {
    const std::string piece = render_special ? impl.piece(id, true) : impl.pieces[id];
    if (piece.empty()) continue;
    if (strip_prefix && first_text && piece.front() == ' ') {
      out.append(piece, 1);
    } else {
      out += piece;
    }
    first_text = false;
  }
  return out;
}

const std::string& Tokenizer::token_text(int32_t id) const {
  impl_->check_id(id);
  return impl_->vocab.tokens[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  impl_->check_id(id);
  return impl_->vocab.types[id];
}

int32_t Tokenizer::find_token(std::string_view text) const { return impl_->id_of(text); }
int32_t Tokenizer::bos() const { return impl_->vocab.bos; }
int32_t Tokenizer::eos() const { return impl_->vocab.eos; }
int32_t Tokenizer::eot() const { return impl_->vocab.eot; }
int32_t Tokenizer::unk() const { return impl_->vocab.unk; }
bool Tokenizer::add_bos() const { return impl_->vocab.add_bos; }
bool Tokenizer::add_eos() const { return impl_->vocab.add_eos; }
bool Tokenizer::add_space_prefix() const { return impl_->vocab.add_space_prefix; }
bool Tokenizer::is_eog(int32_t id) const {
  return id >= 0 && std::size_t(id) < impl_->eog_flag.size() && impl_->eog_flag[id];
}
const std::vector<int32_t>& Tokenizer::eog_ids() const { return impl_->eog; }
std::size_t Tokenizer::vocab_size() const { return impl_->vocab.tokens.size(); }
VocabKind Tokenizer::kind() const { return impl_->vocab.kind; }
const std::string& Tokenizer::pre() const { return impl_->vocab.pre; }

// ---------------------------------------------------------------------------------------------
// Streaming

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool render_special)
    : tokenizer_(&tokenizer), render_special_(render_special) {}

std::string StreamDecoder::push(int32_t id) {
  std::string piece = tokenizer_->token_to_piece(id, render_special_);
  if (piece.empty()) return {};
  if (!started_) {
    started_ = true;
    // Undo the space SentencePiece put before the text (see encode).
    const bool spm_prefix =
        tokenizer_->kind() == VocabKind::SentencePiece && tokenizer_->add_space_prefix();
    if (spm_prefix && piece.front() == ' ') piece.erase(0, 1);
  }
  pending_ += piece;
  // Emit everything up to an incomplete UTF-8 sequence at the very end.
  std::size_t keep = 0;
  const std::size_t size = pending_.size();
  for (std::size_t back = 1; back <= 3 && back <= size; ++back) {
    const unsigned char c = static_cast<unsigned char>(pending_[size - back]);
    if ((c & 0xc0) == 0x80) continue;  // continuation byte: look further back
    const std::size_t claimed = unicode::claimed_length(c);
    if (claimed > back) keep = back;  // its sequence is not complete yet
    break;
  }
  std::string ready = pending_.substr(0, size - keep);
  pending_.erase(0, size - keep);
  return ready;
}

std::string StreamDecoder::finish() {
  std::string rest;
  if (!pending_.empty()) rest = kReplacement;
  pending_.clear();
  return rest;
}

}  // namespace squat
