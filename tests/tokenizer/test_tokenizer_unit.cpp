// Tokenizer algorithms on small vocabularies built in memory, with expectations worked out by
// hand from the definitions (GPT-2 byte mapping, BPE merge order, SentencePiece scores).
#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace squat {
namespace {

using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------------------------
// UTF-8 and the GPT-2 byte mapping

TEST(Unicode, ByteMappingIsTheGpt2One) {
  const auto& map = unicode::byte_to_utf8();
  EXPECT_EQ(map['A'], "A");
  EXPECT_EQ(map['!'], "!");
  EXPECT_EQ(map['~'], "~");
  EXPECT_EQ(map[0xa1], "\xc2\xa1");  // printable Latin-1 stays: U+00A1
  EXPECT_EQ(map[0x00], "\xc4\x80");  // first unprintable byte -> U+0100
  EXPECT_EQ(map[' '], "\xc4\xa0");   // space -> U+0120 "Ġ" (33rd unprintable byte)
  EXPECT_EQ(map['\n'], "\xc4\x8a");  // newline -> U+010A "Ċ"
  EXPECT_EQ(map[0xad], "\xc5\x83");  // soft hyphen, the last unprintable byte -> U+0143
  std::set<std::string> distinct(map.begin(), map.end());
  EXPECT_EQ(distinct.size(), 256u);
  for (int b = 0; b < 256; ++b) {
    std::size_t pos = 0;
    const uint32_t cp = unicode::next_codepoint(map[b], pos);
    EXPECT_EQ(unicode::codepoint_to_byte(cp), b);
  }
  EXPECT_EQ(unicode::codepoint_to_byte(0x20), -1);  // space itself stands for no byte
  EXPECT_EQ(unicode::codepoint_to_byte(0x4e00), -1);
}

TEST(Unicode, Validation) {
  EXPECT_EQ(unicode::first_invalid("plain"), unicode::kValid);
  EXPECT_EQ(unicode::first_invalid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"), unicode::kValid);
  EXPECT_EQ(unicode::first_invalid("ab\xff"), 2u);
  EXPECT_EQ(unicode::first_invalid("a\x80"), 1u);             // stray continuation
  EXPECT_EQ(unicode::first_invalid("\xc0\x80"), 0u);          // overlong NUL
  EXPECT_EQ(unicode::first_invalid("x\xe0\x80\x80"), 1u);     // overlong 3-byte
  EXPECT_EQ(unicode::first_invalid("\xed\xa0\x80"), 0u);      // surrogate U+D800
  EXPECT_EQ(unicode::first_invalid("\xf4\x90\x80\x80"), 0u);  // U+110000
  EXPECT_EQ(unicode::first_invalid("ok\xe2\x82"), 2u);        // truncated at the end
  EXPECT_EQ(unicode::first_invalid(std::string("a\0b", 3)), unicode::kValid);
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

std::vector<std::string> split(const std::string& pre, const std::string& text) {
  const PretokenizerSpec spec = pretokenizer_spec(pre, "test");
  Pretokenizer pretokenizer(spec.regexes);
  std::vector<std::string_view> pieces;
  pretokenizer.split(text, pieces);
  return {pieces.begin(), pieces.end()};
}

using Pieces = std::vector<std::string>;

TEST(Pretokenizer, Gpt2) {
  EXPECT_EQ(split("gpt-2", "Hello world"), (Pieces{"Hello", " world"}));
  // A run of spaces leaves its last space to the word after it.
  EXPECT_EQ(split("gpt-2", "   Hello"), (Pieces{"  ", " Hello"}));
  EXPECT_EQ(split("gpt-2", "it's 42!!"), (Pieces{"it", "'s", " 42", "!!"}));
  EXPECT_EQ(split("gpt-2", "IT'S"), (Pieces{"IT", "'", "S"}));  // contractions: lower case only
  EXPECT_EQ(split("gpt-2", "a\n\nb"), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(split("gpt-2", "x  "), (Pieces{"x", "  "}));
  EXPECT_EQ(split("gpt-2", "\xc3\xa9t\xc3\xa9 12"), (Pieces{"\xc3\xa9t\xc3\xa9", " 12"}));
}

TEST(Pretokenizer, SmolLmSplitsEveryDigit) {
  EXPECT_EQ(split("smollm", "x 123"), (Pieces{"x", " ", "1", "2", "3"}));
  EXPECT_EQ(split("smollm", "Hello world"), (Pieces{"Hello", " world"}));
}

TEST(Pretokenizer, Llama3) {
  EXPECT_EQ(split("llama-bpe", "12345"), (Pieces{"123", "45"}));
  EXPECT_EQ(split("llama-bpe", "IT'S ok"), (Pieces{"IT", "'S", " ok"}));
  EXPECT_EQ(split("llama-bpe", "Hi!\n\nyes"), (Pieces{"Hi", "!\n\n", "yes"}));
  EXPECT_EQ(split("llama-bpe", "a  \n b"), (Pieces{"a", "  \n", " b"}));
  EXPECT_EQ(split("llama-bpe", "$hello"), (Pieces{"$hello"}));  // one non-letter prefix
}

TEST(Pretokenizer, Qwen2SplitsEveryDigit) {
  EXPECT_EQ(split("qwen2", "12345"), (Pieces{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(split("qwen2", "I'D go"), (Pieces{"I", "'D", " go"}));
}

TEST(Pretokenizer, DefaultSplitsPunctuationAndNumbers) {
  EXPECT_EQ(split("default", "a,b"), (Pieces{"a", ",", "b"}));
  EXPECT_EQ(split("default", "x 1234"), (Pieces{"x", " ", "123", "4"}));
}

TEST(Pretokenizer, LongRunsSplitWithoutErrors) {
  // Long runs exercise backtracking (\s+(?!\S), \s*[\r\n]+) and PCRE2's JIT stack.
  const std::vector<std::string> texts = {
      std::string(200000, ' ') + "x", std::string(200000, '\n'), std::string(100000, '7'),
      std::string(200000, 'a'), std::string(50000, '!') + " \n" + std::string(50000, '\t')};
  for (const std::string pre : {"default", "gpt-2", "llama-bpe", "qwen2", "smollm"}) {
    for (const std::string& text : texts) {
      std::string joined;
      for (const std::string& piece : split(pre, text)) joined += piece;
      EXPECT_EQ(joined, text) << pre;
    }
  }
  EXPECT_EQ(split("llama-bpe", std::string(5, ' ') + "x"), (Pieces{"    ", " x"}));
  EXPECT_EQ(split("llama-bpe", std::string(4, '\n')), (Pieces{"\n\n\n\n"}));
}

TEST(Pretokenizer, UnknownNameIsAClearError) {
  try {
    pretokenizer_spec("made-up", "model.gguf");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("model.gguf"), std::string::npos) << message;
    EXPECT_NE(message.find("\"made-up\""), std::string::npos) << message;
    EXPECT_NE(message.find("smollm"), std::string::npos) << message;
    EXPECT_NE(message.find("llama-bpe"), std::string::npos) << message;
  }
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE

// 256 byte characters (ids 0..255 in byte order), then merged tokens, then specials.
Vocab small_bpe_vocab() {
  Vocab vocab;
  vocab.kind = VocabKind::BytePairGpt2;
  vocab.pre = "gpt-2";
  for (const auto& text : unicode::byte_to_utf8()) vocab.tokens.push_back(text);
  const std::string G = unicode::byte_to_utf8()[' '];  // "Ġ"
  // id: 256 "bc", 257 "ab", 258 "abc", 259 "aa", 260 "Ġa", 261 "Ġab"
  for (const std::string& t : {std::string("bc"), std::string("ab"), std::string("abc"),
                               std::string("aa"), G + "a", G + "ab"}) {
    vocab.tokens.push_back(t);
  }
  // Ranks: 0 "b c", 1 "Ġ a", 2 "a b", 3 "a a", 4 "Ġa b", 5 "ab c".
  vocab.merges = {"b c", G + " a", "a b", "a a", G + "a b", "ab c"};
  vocab.tokens.push_back("<|im_start|>");  // 262
  vocab.tokens.push_back("<|im_end|>");    // 263
  vocab.tokens.push_back("<tool>");        // 264
  vocab.types.assign(vocab.tokens.size(), TokenType::Normal);
  vocab.types[262] = TokenType::Control;
  vocab.types[263] = TokenType::Control;
  vocab.types[264] = TokenType::UserDefined;
  vocab.bos = 262;
  vocab.eos = 263;
  vocab.name = "small-bpe";
  return vocab;
}

TEST(BytePairEncoding, MergesApplyInRankOrder) {
  const Tokenizer tok = Tokenizer::from_vocab(small_bpe_vocab());
  // "b c" outranks "a b": abc -> a + bc, and "ab c" can never apply.
  EXPECT_EQ(tok.encode("abc", false, false), (Ids{'a', 256}));
  EXPECT_EQ(tok.encode("ab", false, false), (Ids{257}));
  // Equal ranks merge leftmost first: aaa -> aa + a, aaaa -> aa + aa.
  EXPECT_EQ(tok.encode("aaa", false, false), (Ids{259, 'a'}));
  EXPECT_EQ(tok.encode("aaaa", false, false), (Ids{259, 259}));
  // " ab" is one word (space first): "Ġ a" outranks "a b", then "Ġa b" gives "Ġab".
  EXPECT_EQ(tok.encode("x ab", false, false), (Ids{'x', 261}));
  // A byte with no merges is its own mapped character.
  EXPECT_EQ(tok.encode("\n", false, false), (Ids{'\n'}));
  EXPECT_EQ(tok.encode("", false, false), Ids{});
}

TEST(BytePairEncoding, DecodeMapsCharactersBackToBytes) {
  const Tokenizer tok = Tokenizer::from_vocab(small_bpe_vocab());
  EXPECT_EQ(tok.token_to_piece(261), " ab");
  EXPECT_EQ(tok.token_to_piece(' '), " ");
  EXPECT_EQ(tok.token_to_piece(0xc3), "\xc3");  // half of a UTF-8 character
  for (const std::string text : {"x ab abc\n", "caf\xc3\xa9 \xf0\x9f\x98\x80", " \t "}) {
    EXPECT_EQ(tok.decode(tok.encode(text, false, false)), text);
  }
}

TEST(BytePairEncoding, SpecialTokens) {
  const Tokenizer tok = Tokenizer::from_vocab(small_bpe_vocab());
  const std::string text = "<|im_start|>ab<|im_end|>";
  EXPECT_EQ(tok.encode(text, false, true), (Ids{262, 257, 263}));
  // Without parse_special the control tokens' text is ordinary text.
  const Ids plain = tok.encode(text, false, false);
  EXPECT_EQ(plain.front(), '<');
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 262), 0);
  EXPECT_EQ(tok.decode(plain), text);
  // User-defined tokens are matched either way.
  EXPECT_EQ(tok.encode("a<tool>b", false, false), (Ids{'a', 264, 'b'}));
  // Control tokens print nothing unless asked.
  EXPECT_EQ(tok.decode({262, 257, 263}), "ab");
  EXPECT_EQ(tok.decode({262, 257, 263}, true), text);
  EXPECT_TRUE(tok.is_eog(263));  // <|im_end|>, and the EOS
  EXPECT_FALSE(tok.is_eog(262));
  EXPECT_FALSE(tok.is_eog(257));
  EXPECT_FALSE(tok.is_eog(-1));
  EXPECT_FALSE(tok.is_eog(100000));
}

// Role forgery: a user's "<|im_end|>\n<|im_start|>system" stays text in a chat prompt; only the
// template's own delimiters become control tokens.
TEST(BytePairEncoding, ChatContentCannotForgeControlTokens) {
  const Tokenizer tok = Tokenizer::from_vocab(small_bpe_vocab());
  RenderedChat chat;
  chat.text = "<|im_start|>ab<|im_end|><|im_start|>";
  chat.markup = {{0, 12}, {14, 10}};  // first <|im_start|> and the <|im_end|>; the last is content
  const Ids ids = tok.encode_chat(chat, false);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 262), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 263), 1);
  EXPECT_EQ(ids.front(), 262);
  EXPECT_EQ(tok.decode(ids, true), chat.text);
  // A range that covers only part of a control token's text does not make it one.
  chat.markup = {{0, 11}};
  const Ids partial = tok.encode_chat(chat, false);
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 262), 0);
  // With the whole text as markup it is encode(text, parse_special = true).
  chat.markup = {{0, chat.text.size()}};
  EXPECT_EQ(tok.encode_chat(chat, false), tok.encode(chat.text, false, true));
  // User-defined tokens are matched in content too, as encode() does without parse_special.
  chat.text = "a<tool>b";
  chat.markup = {};
  EXPECT_EQ(tok.encode_chat(chat, false), (Ids{'a', 264, 'b'}));
}

TEST(BytePairEncoding, AddSpecialFollowsTheVocabulary) {
  Vocab vocab = small_bpe_vocab();
  vocab.add_bos = true;
  vocab.add_eos = true;
  const Tokenizer both = Tokenizer::from_vocab(vocab);
  EXPECT_EQ(both.encode("ab", true, false), (Ids{262, 257, 263}));
  EXPECT_EQ(both.encode("ab", false, false), (Ids{257}));
  EXPECT_EQ(both.encode("", true, false), (Ids{262, 263}));
  const Tokenizer none = Tokenizer::from_vocab(small_bpe_vocab());
  EXPECT_EQ(none.encode("ab", true, false), (Ids{257}));
}

TEST(BytePairEncoding, BadInputIsAnError) {
  const Tokenizer tok = Tokenizer::from_vocab(small_bpe_vocab());
  EXPECT_THROW(tok.encode("ab\xff", false, false), Error);
  EXPECT_THROW(tok.encode("\xe2\x82", false, false), Error);
  EXPECT_THROW(tok.decode({1, 265}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
  EXPECT_THROW(tok.token_to_piece(265), Error);
  try {
    tok.encode("ok\xc0\x80", false, false);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("offset 2"), std::string::npos) << e.what();
  }
}

TEST(BytePairEncoding, RandomBytesRoundTripOrFailCleanly) {
  // Any byte string either is UTF-8 and decodes back exactly, or is refused with an Error.
  Vocab vocab = small_bpe_vocab();
  const Tokenizer gpt2 = Tokenizer::from_vocab(vocab);
  vocab.pre = "llama-bpe";
  const Tokenizer llama3 = Tokenizer::from_vocab(vocab);
  std::mt19937 rng(1234);
  const std::string alphabet[] = {"a",
                                  "b",
                                  "c",
                                  " ",
                                  "\n",
                                  "\t",
                                  "'s",
                                  "7",
                                  "!",
                                  "<|im_end|>",
                                  "\xc3\xa9",
                                  "\xe2\x82\xac",
                                  "\xf0\x9f\xa6\x99",
                                  "\xff",
                                  "\x80",
                                  "\xe2\x82"};
  int valid = 0, refused = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int length = int(rng() % 24);
    for (int i = 0; i < length; ++i) text += alphabet[rng() % std::size(alphabet)];
    const bool is_utf8 = unicode::first_invalid(text) == unicode::kValid;
    for (const Tokenizer* tok : {&gpt2, &llama3}) {
      if (is_utf8) {
        const Ids ids = tok->encode(text, false, false);
        EXPECT_EQ(tok->decode(ids), text);
        const Ids special = tok->encode(text, true, true);
        EXPECT_EQ(tok->decode(special, true), text);
      } else {
        EXPECT_THROW(tok->encode(text, false, true), Error);
      }
    }
    is_utf8 ? ++valid : ++refused;
  }
  EXPECT_GT(valid, 100);
  EXPECT_GT(refused, 100);
}

TEST(BytePairEncoding, MalformedVocabulariesAreErrors) {
  Vocab vocab = small_bpe_vocab();
  vocab.pre = "nope";
  EXPECT_THROW(Tokenizer::from_vocab(vocab), Error);
  vocab = small_bpe_vocab();
  vocab.merges.push_back("nospace");
  EXPECT_THROW(Tokenizer::from_vocab(vocab), Error);
  vocab = small_bpe_vocab();
  vocab.types.pop_back();
  EXPECT_THROW(Tokenizer::from_vocab(vocab), Error);
  vocab = small_bpe_vocab();
  vocab.bos = 5000;
  EXPECT_THROW(Tokenizer::from_vocab(vocab), Error);
  vocab = small_bpe_vocab();
  vocab.bos = -1;
  vocab.add_bos = true;
  EXPECT_THROW(Tokenizer::from_vocab(vocab), Error);
  EXPECT_THROW(Tokenizer::from_vocab(Vocab{}), Error);
}

TEST(BytePairEncoding, IgnoreMergesTakesWholeWordTokens) {
  // Llama 3 style: a word that is a token is used as is, even when merges cannot build it.
  Vocab vocab = small_bpe_vocab();
  vocab.pre = "llama-bpe";
  vocab.add_bos = false;
  vocab.tokens.push_back("abca");  // 265, no merge produces it
  vocab.types.push_back(TokenType::Normal);
  const Tokenizer tok = Tokenizer::from_vocab(vocab);
  EXPECT_EQ(tok.encode("abca", false, false), (Ids{265}));
  vocab.pre = "gpt-2";
  const Tokenizer gpt2 = Tokenizer::from_vocab(vocab);
  EXPECT_EQ(gpt2.encode("abca", false, false), (Ids{'a', 256, 'a'}));
}

// ---------------------------------------------------------------------------------------------
// SentencePiece BPE

// <unk> <s> </s>, 256 byte tokens (3..258), then pieces with scores.
Vocab small_spm_vocab() {
  Vocab vocab;
  vocab.kind = VocabKind::SentencePiece;
  vocab.tokens = {"<unk>", "<s>", "</s>"};
  vocab.types = {TokenType::Unknown, TokenType::Control, TokenType::Control};
  for (int b = 0; b < 256; ++b) {
    vocab.tokens.push_back(fmt::format("<0x{:02X}>", b));
    vocab.types.push_back(TokenType::Byte);
  }
  const std::vector<std::pair<std::string, float>> pieces = {
      {"\xe2\x96\x81", -1.0f},  // 259 "▁"
      {"a", -2.0f},             // 260
      {"b", -2.0f},             // 261
      {"\xe2\x96\x81"
       "a",
       -3.0f},        // 262 "▁a"
      {"ab", -1.5f},  // 263
      {"\xe2\x96\x81"
       "ab",
       -4.0f},        // 264 "▁ab"
      {"c", -2.0f},   // 265
      {"bc", -0.5f},  // 266
  };
  vocab.scores.assign(vocab.tokens.size(), 0.0f);
  for (const auto& [text, score] : pieces) {
    vocab.tokens.push_back(text);
    vocab.types.push_back(TokenType::Normal);
    vocab.scores.push_back(score);
  }
  vocab.bos = 1;
  vocab.eos = 2;
  vocab.unk = 0;
  vocab.add_bos = true;
  vocab.add_space_prefix = true;
  vocab.name = "small-spm";
  return vocab;
}

TEST(SentencePiece, HighestScoreMergesFirst) {
  const Tokenizer tok = Tokenizer::from_vocab(small_spm_vocab());
  // "▁ab": candidates ▁a (-3) and ab (-1.5): ab first, then ▁+ab = ▁ab (-4).
  EXPECT_EQ(tok.encode("ab", false, false), (Ids{264}));
  // "▁abc": bc (-0.5) beats ab (-1.5) and ▁a (-3); then ▁a merges; "▁abc" is no token.
  EXPECT_EQ(tok.encode("abc", false, false), (Ids{262, 266}));
  EXPECT_EQ(tok.encode("ab", true, false), (Ids{1, 264}));
  // Inner spaces become ▁ too.
  EXPECT_EQ(tok.encode("a ab", false, false), (Ids{262, 264}));
  EXPECT_EQ(tok.encode("", true, false), (Ids{1}));
  EXPECT_EQ(tok.encode("", false, false), Ids{});
}

TEST(SentencePiece, ByteFallbackAndDecode) {
  const Tokenizer tok = Tokenizer::from_vocab(small_spm_vocab());
  // é is not a piece: its two UTF-8 bytes become <0xC3> <0xA9>.
  EXPECT_EQ(tok.encode("\xc3\xa9", false, false), (Ids{259, 3 + 0xc3, 3 + 0xa9}));
  EXPECT_EQ(tok.token_to_piece(3 + 0xc3), "\xc3");
  EXPECT_EQ(tok.token_to_piece(262), " a");
  EXPECT_EQ(tok.token_to_piece(1), "");
  EXPECT_EQ(tok.token_to_piece(0), "\xef\xbf\xbd");  // unknown -> U+FFFD
  // decode removes the space the encoder put in front.
  for (const std::string text : {"ab", " ab", "a ab c", "\xc3\xa9t\xc3\xa9", "\n"}) {
    EXPECT_EQ(tok.decode(tok.encode(text, true, false)), text);
  }
}

TEST(SentencePiece, SpaceAfterSpecialTokens) {
  const Tokenizer tok = Tokenizer::from_vocab(small_spm_vocab());
  // Like llama.cpp: text after a special token is prefixed with a space again.
  EXPECT_EQ(tok.encode("ab</s>ab", false, true), (Ids{264, 2, 264}));
  // Without parse_special "</s>" is text (byte tokens here) and no space follows it.
  EXPECT_EQ(tok.encode("ab</s>ab", false, false),
            (Ids{264, 3 + '<', 3 + '/', 3 + 's', 3 + '>', 263}));
  Vocab vocab = small_spm_vocab();
  vocab.add_space_prefix = false;
  const Tokenizer no_prefix = Tokenizer::from_vocab(vocab);
  EXPECT_EQ(no_prefix.encode("ab", false, false), (Ids{263}));
  EXPECT_EQ(no_prefix.decode({262}), " a");
}

TEST(SentencePiece, RandomTextRoundTrips) {
  const Tokenizer tok = Tokenizer::from_vocab(small_spm_vocab());
  std::mt19937 rng(99);
  const std::string alphabet[] = {"a", "b", "c", " ", "  ", "\n", "\xc3\xa9", "\xf0\x9f\xa6\x99",
                                  "x"};
  for (int trial = 0; trial < 1000; ++trial) {
    std::string text;
    const int length = int(rng() % 20);
    for (int i = 0; i < length; ++i) text += alphabet[rng() % std::size(alphabet)];
    const Ids ids = tok.encode(text, true, false);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(tok.decode(ids), text);
  }
}

TEST(SentencePiece, MissingByteTokenFallsBackToUnknown) {
  Vocab vocab = small_spm_vocab();
  vocab.tokens[3 + 0xa9] = "<reserved>";  // no <0xA9> any more
  vocab.types[3 + 0xa9] = TokenType::Unused;
  const Tokenizer tok = Tokenizer::from_vocab(vocab);
  EXPECT_EQ(tok.encode("\xc3\xa9", false, false), (Ids{259, 3 + 0xc3, 0}));
}

// ---------------------------------------------------------------------------------------------
// Streaming

TEST(StreamDecoder, HoldsBackIncompleteCharacters) {
  const Tokenizer tok = Tokenizer::from_vocab(small_bpe_vocab());
  const Ids ids = tok.encode("a\xe2\x82\xac!", false, false);  // a € !
  ASSERT_EQ(ids, (Ids{'a', 0xe2, 0x82, 0xac, '!'}));
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.push(ids[0]), "a");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "\xe2\x82\xac");
  EXPECT_EQ(stream.push(263), "");  // <|im_end|> prints nothing
  EXPECT_EQ(stream.push(ids[4]), "!");
  EXPECT_EQ(stream.finish(), "");
  StreamDecoder cut(tok);
  EXPECT_EQ(cut.push(0xe2), "");
  EXPECT_EQ(cut.finish(), "\xef\xbf\xbd");
}

TEST(StreamDecoder, DropsTheSentencePieceLeadingSpaceOnce) {
  const Tokenizer tok = Tokenizer::from_vocab(small_spm_vocab());
  const Ids ids = tok.encode("ab ab", true, false);
  ASSERT_EQ(ids, (Ids{1, 264, 264}));
  StreamDecoder stream(tok);
  std::string text;
  for (const int32_t id : ids) text += stream.push(id);
  text += stream.finish();
  EXPECT_EQ(text, "ab ab");
  EXPECT_EQ(text, tok.decode(ids));
}

}  // namespace
}  // namespace squat
