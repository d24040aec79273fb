// Tokenizer tests. Reference ids come from independent data: the npm packages' own test cases
// and documented examples (tests/fixtures/tokenizers/README.md says which), and ids derived by
// hand from the algorithms for the small synthetic tokenizers built here.
#include "peft/tokenizer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "peft/error.h"
#include "test_util.h"

namespace {

using json = nlohmann::json;
using Ids = std::vector<int64_t>;
using peft::Tokenizer;

std::string tok_fixture(const std::string& rel) { return peft::test::fixture("tokenizers/" + rel); }

json read_json(const std::string& path) { return json::parse(peft::test::read_file(path)); }

// Writes `spec` as tokenizer.json in `dir` and loads it.
Tokenizer load(const peft::test::TempDir& dir, const json& spec) {
  peft::test::write_file(dir.str("tokenizer.json"), spec.dump());
  return Tokenizer::from_file(dir.str("tokenizer.json"));
}

json added(int64_t id, const std::string& content, bool special = true, bool normalized = false) {
  return {{"id", id},        {"content", content},       {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", normalized}, {"special", special}};
}

json bos_template(const std::string& bos, int64_t id) {
  return {{"type", "TemplateProcessing"},
          {"single", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
          {"pair", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {id}}, {"tokens", {bos}}}}}}};
}

json tokenizer_json(json model, json normalizer = nullptr, json pre_tokenizer = nullptr,
                    json post_processor = nullptr, json decoder = nullptr,
                    json added_tokens = json::array()) {
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added_tokens},
          {"normalizer", normalizer},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", post_processor},
          {"decoder", decoder},
          {"model", model}};
}

// A BPE model whose vocabulary is `tokens` (ids in order) with the given merges.
json bpe(const std::vector<std::string>& tokens, const std::vector<std::string>& merges = {},
         json extra = json::object()) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  json model = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  model.update(extra);
  return model;
}

// ---------------------------------------------------------------- real vocabularies (npm data)

struct CaseFile {
  std::string name;      // fixture directory
  bool lossless_decode;  // decode(encode(text), skip_special) == text
};

class TokenizerReference : public ::testing::TestWithParam<CaseFile> {};

TEST_P(TokenizerReference, EncodeMatchesReferenceIds) {
  const auto& param = GetParam();
  const Tokenizer tok = Tokenizer::from_file(tok_fixture(param.name + "/tokenizer.json"));
  const json cases = read_json(tok_fixture(param.name + "/cases.json"));
  ASSERT_FALSE(cases["cases"].empty());
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    const Ids expected = c["ids"].get<Ids>();
    const Ids ids = tok.encode(text, c["add_special_tokens"].get<bool>());
    EXPECT_EQ(ids, expected) << param.name << ": \"" << text << "\"";
    if (param.lossless_decode) {
      EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), text) << param.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(NpmPackages, TokenizerReference,
                         ::testing::Values(CaseFile{"gpt2", true}, CaseFile{"llama2", true},
                                           CaseFile{"mistral", true}, CaseFile{"llama3", false},
                                           CaseFile{"bert", false}),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(TokenizerReference, Llama3DecodesCasesAndSpecialTokens) {
  const Tokenizer tok = Tokenizer::from_file(tok_fixture("llama3/tokenizer.json"));
  const json cases = read_json(tok_fixture("llama3/cases.json"));
  for (const json& c : cases["cases"]) {
    if (c["add_special_tokens"].get<bool>()) continue;
    // Special tokens stay in the text (skip_special_tokens = false), as llama3-tokenizer-js does.
    EXPECT_EQ(tok.decode(c["ids"].get<Ids>()), c["text"].get<std::string>());
  }
  // llama3-tokenizer-js testDecode cases.
  EXPECT_EQ(tok.decode({128006}), "<|start_header_id|>");
  EXPECT_EQ(tok.decode({128000, 2028, 374, 264, 1296, 11914, 13, 128001}),
            "<|begin_of_text|>This is a test sentence.<|end_of_text|>");
  EXPECT_EQ(tok.decode({128000, 2028, 374, 264, 1296, 11914, 13, 128001}, true),
            "This is a test sentence.");
}

TEST(TokenizerReference, Gpt2SpecialTokenAndVocabulary) {
  const Tokenizer tok = Tokenizer::from_file(tok_fixture("gpt2/tokenizer.json"));
  EXPECT_EQ(tok.vocab_size(), 50257);
  // "Hello" = [15496] and "World" = [10603] per gpt-3-encoder; <|endoftext|> is added token 50256.
  const Ids ids = tok.encode("Hello<|endoftext|>World");
  EXPECT_EQ(ids, (Ids{15496, 50256, 10603}));
  EXPECT_EQ(tok.decode(ids), "Hello<|endoftext|>World");
  EXPECT_EQ(tok.decode(ids, true), "HelloWorld");
  EXPECT_EQ(tok.token_to_id("Hello"), 15496);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 50256);
  EXPECT_EQ(tok.id_to_token(50256), "<|endoftext|>");
  EXPECT_EQ(tok.token_to_id("not a token"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(1 << 30), std::nullopt);
  EXPECT_EQ(tok.decode({15496, 1 << 30, 10603}), "HelloWorld");  // unknown ids skipped, as HF
  EXPECT_FALSE(tok.bos_token_id().has_value());  // from_file reads no tokenizer_config.json
}

TEST(TokenizerReference, Gpt2DecodesPartialUtf8Lossily) {
  const Tokenizer tok = Tokenizer::from_file(tok_fixture("gpt2/tokenizer.json"));
  // " 🦙!" is [12520, 99, 247, 0] (the end of a gpt-3-encoder case); dropping a byte token
  // leaves " " F0 9F 99 "!", whose invalid part HF's ByteLevel decoder (String::from_utf8_lossy)
  // turns into one U+FFFD.
  ASSERT_EQ(tok.encode(" \U0001F999!"), (Ids{12520, 99, 247, 0}));
  EXPECT_EQ(tok.decode({12520, 247, 0}), " \xEF\xBF\xBD!");
}

TEST(TokenizerReference, BertDecodeAndPair) {
  const Tokenizer tok = Tokenizer::from_file(tok_fixture("bert/tokenizer.json"));
  EXPECT_EQ(tok.vocab_size(), 30522);
  const Ids ids = tok.encode("Hello, my dog is cute");
  EXPECT_EQ(tok.decode(ids), "[CLS] hello, my dog is cute [SEP]");
  EXPECT_EQ(tok.decode(ids, true), "hello, my dog is cute");
  // [CLS] A [SEP] B [SEP]
  EXPECT_EQ(tok.encode_pair("i like", "strawberries"),
            (Ids{101, 1045, 2066, 102, 13137, 20968, 102}));
  EXPECT_EQ(tok.encode_pair("i like", "strawberries", false), (Ids{1045, 2066, 13137, 20968}));
  EXPECT_EQ(tok.encode(""), (Ids{101, 102}));
  EXPECT_EQ(tok.encode("", false), Ids{});
  // A word longer than max_input_chars_per_word (100) is [UNK].
  EXPECT_EQ(tok.encode(std::string(101, 'a'), false), Ids{100});
}

TEST(TokenizerReference, Llama2SentencePieceModelMatchesReferenceIds) {
  const Tokenizer tok = Tokenizer::from_dir(tok_fixture("llama2_sp"));
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_token_id(), 1);
  EXPECT_EQ(tok.eos_token_id(), 2);
  EXPECT_EQ(tok.pad_token_id(), std::nullopt);
  EXPECT_EQ(tok.token_to_id("<s>"), 1);
  EXPECT_EQ(tok.token_to_id("\u2581t"), 260);
  EXPECT_EQ(tok.token_to_id("no such piece"), std::nullopt);
  const json cases = read_json(tok_fixture("llama2/cases.json"));
  for (const json& c : cases["cases"]) {
    const std::string text = c["text"];
    const Ids ids = tok.encode(text);
    EXPECT_EQ(ids, c["ids"].get<Ids>()) << text;
    EXPECT_EQ(tok.decode(ids, true), text);
  }
  // Special tokens in the text are split off, as transformers does for its added tokens.
  Ids expected = tok.encode("Hello");
  expected.push_back(2);
  EXPECT_EQ(tok.encode("Hello</s>"), expected);
  // Decoding as HF's Llama decoder does (special tokens kept as text, one leading space stripped).
  EXPECT_EQ(tok.decode(expected), "<s> Hello</s>");
  EXPECT_EQ(tok.decode(expected, true), "Hello");
}

TEST(TokenizerReference, Llama2TokenizerJsonAndModelAgree) {
  const Tokenizer json_tok = Tokenizer::from_dir(tok_fixture("llama2"));
  const Tokenizer sp_tok = Tokenizer::from_dir(tok_fixture("llama2_sp"));
  for (const std::string& text :
       std::vector<std::string>{"Hello world", "  two  spaces", "caf\u00e9 \u65e5\u672c \U0001F600",
                                "line\nbreak\ttab", "x", ""}) {
    EXPECT_EQ(json_tok.encode(text), sp_tok.encode(text)) << text;
    EXPECT_EQ(json_tok.encode(text, false), sp_tok.encode(text, false)) << text;
    const Ids ids = json_tok.encode(text + "</s>");
    EXPECT_EQ(json_tok.decode(ids), sp_tok.decode(ids)) << text;
    EXPECT_EQ(json_tok.decode(ids, true), sp_tok.decode(ids, true)) << text;
  }
}

TEST(TokenizerReference, Llama3DirectoryConfig) {
  const Tokenizer tok = Tokenizer::from_dir(tok_fixture("llama3"));
  EXPECT_EQ(tok.bos_token_id(), 128000);
  EXPECT_EQ(tok.eos_token_id(), 128001);
  EXPECT_EQ(tok.pad_token_id(), std::nullopt);
  ASSERT_TRUE(tok.chat_template().has_value());
  EXPECT_EQ(tok.chat_template()->rfind("{% set loop_messages = messages %}", 0), 0u);
  // llama3-tokenizer-js: encode("I", {bos: true, eos: false}) = [128000, 40].
  EXPECT_EQ(tok.encode("I"), (Ids{128000, 40}));
  EXPECT_EQ(tok.encode("I", false), (Ids{40}));
  EXPECT_EQ(tok.encode(""), (Ids{128000}));
}

// ---------------------------------------------------------------- synthetic tokenizers

// Llama 2 shape: BPE with byte_fallback, Metaspace, BOS template, SentencePiece decoders.
json llama_like() {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    tokens.push_back(name);
  }
  // 259..
  for (const char* t : {"\u2581", "h", "e", "l", "o", "\u2581h", "ll", "\u2581he", "\u2581hell",
                        "\u2581hello", "w"}) {
    tokens.push_back(t);
  }
  const json metaspace = {{"type", "Metaspace"},
                          {"replacement", "\u2581"},
                          {"prepend_scheme", "always"},
                          {"split", true}};
  const json decoder = {
      {"type", "Sequence"},
      {"decoders",
       json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}},
                    {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  return tokenizer_json(bpe(tokens, {"\u2581 h", "l l", "\u2581h e", "\u2581he ll", "\u2581hell o"},
                            {{"unk_token", "<unk>"}, {"byte_fallback", true}, {"fuse_unk", true}}),
                        nullptr, metaspace, bos_template("<s>", 1), decoder,
                        json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")}));
}

TEST(TokenizerSynthetic, BpeByteFallbackMetaspace) {
  peft::test::TempDir dir;
  const Tokenizer tok = load(dir, llama_like());
  // "▁hello": (▁,h) rank 0, (l,l) 1, (▁h,e) 2, (▁he,ll) 3, (▁hell,o) 4 -> ▁hello (268).
  EXPECT_EQ(tok.encode("hello"), (Ids{1, 268}));
  // Metaspace splits before each ▁; 😀 (F0 9F 98 80) is not in the vocabulary: byte tokens 3 + b.
  EXPECT_EQ(tok.encode("hello \U0001F600", false),
            (Ids{268, 259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
  EXPECT_EQ(tok.decode(tok.encode("hello \U0001F600"), true), "hello \U0001F600");
  // Equal ranks go left first: "▁lll" -> ▁, ll, l.
  EXPECT_EQ(tok.encode("lll", false), (Ids{259, 265, 262}));
  // Whitespace runs: each extra space is its own ▁ piece.
  EXPECT_EQ(tok.encode("w  w", false), (Ids{259, 269, 259, 259, 269}));
  // Empty text: only the BOS of the template.
  EXPECT_EQ(tok.encode(""), (Ids{1}));
  EXPECT_EQ(tok.encode("", false), Ids{});
  // Invalid byte sequences decode to one U+FFFD per byte token (HF ByteFallback).
  EXPECT_EQ(tok.decode({3 + 0xF0, 3 + 0x9F}), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerSynthetic, BpeUnknownCharactersFuseIntoUnk) {
  peft::test::TempDir dir;
  json spec = llama_like();
  spec["model"]["byte_fallback"] = false;
  const Tokenizer tok = load(dir, spec);
  // Without byte fallback "é" and "ß" are unknown; fuse_unk merges the adjacent <unk>s.
  EXPECT_EQ(tok.encode("h\u00e9\u00dfo", false), (Ids{264, 0, 263}));
  spec["model"]["fuse_unk"] = false;
  const Tokenizer unfused = load(dir, spec);
  EXPECT_EQ(unfused.encode("h\u00e9\u00dfo", false), (Ids{264, 0, 0, 263}));
}

TEST(TokenizerSynthetic, MetaspacePrependSchemeFirst) {
  peft::test::TempDir dir;
  json spec = llama_like();
  spec["pre_tokenizer"] = {{"type", "Metaspace"},
                           {"replacement", "\u2581"},
                           {"prepend_scheme", "first"},
                           {"split", false}};
  const Tokenizer tok = load(dir, spec);
  // Only the piece at the start of the input gets the ▁; text after an added token does not.
  EXPECT_EQ(tok.encode("hello", false), (Ids{268}));
  EXPECT_EQ(tok.encode("<s>hello", false), (Ids{1, 260, 261, 265, 263}));
  EXPECT_EQ(tok.encode("hello</s>hello", false), (Ids{268, 2, 260, 261, 265, 263}));
}

TEST(TokenizerSynthetic, WordPieceLikeBert) {
  peft::test::TempDir dir;
  json vocab = json::object();
  const std::vector<std::string> tokens = {"[PAD]", "[UNK]",  "[CLS]",  "[SEP]", "un",
                                           "##aff", "##able", "play",   "##ing", ",",
                                           "!",     "a",      "\u65e5", "e",     "cafe"};
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  const json spec = tokenizer_json(
      {{"type", "WordPiece"},
       {"unk_token", "[UNK]"},
       {"continuing_subword_prefix", "##"},
       {"max_input_chars_per_word", 10},
       {"vocab", vocab}},
      {{"type", "BertNormalizer"},
       {"clean_text", true},
       {"handle_chinese_chars", true},
       {"strip_accents", nullptr},
       {"lowercase", true}},
      {{"type", "BertPreTokenizer"}},
      {{"type", "BertProcessing"}, {"sep", {"[SEP]", 3}}, {"cls", {"[CLS]", 2}}},
      {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}},
      json::array({added(0, "[PAD]"), added(1, "[UNK]"), added(2, "[CLS]"), added(3, "[SEP]")}));
  const Tokenizer tok = load(dir, spec);
  // lowercase + punctuation split + greedy longest match with ## continuations.
  EXPECT_EQ(tok.encode("Unaffable, playing!"), (Ids{2, 4, 5, 6, 9, 7, 8, 10, 3}));
  EXPECT_EQ(tok.decode(tok.encode("Unaffable, playing!"), true), "unaffable, playing!");
  // A word with an uncovered part, or longer than 10 characters, is one [UNK].
  EXPECT_EQ(tok.encode("unknown", false), (Ids{1}));
  EXPECT_EQ(tok.encode("unaffableaa", false), (Ids{1}));
  // Accents are stripped (strip_accents follows lowercase), CJK characters stand alone.
  EXPECT_EQ(tok.encode("Caf\u00e9\u65e5A", false), (Ids{14, 12, 11}));
  // Control characters are dropped, whitespace runs separate words.
  EXPECT_EQ(tok.encode("a\u0007 \t\n a", false), (Ids{11, 11}));
  // BertProcessing pair: [CLS] A [SEP] B [SEP].
  EXPECT_EQ(tok.encode_pair("a", "play"), (Ids{2, 11, 3, 7, 3}));
}

// Llama 3 / Qwen2 shape: Split with the Llama 3 regex, ByteLevel without regex, ignore_merges.
json byte_level_like() {
  const std::string pattern =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  std::vector<std::string> tokens;
  for (const char* t :
       {"H", "i",  "\u0120",      "t",  "h",   "e", "r", "1",  "2",      "3",
        "4", "Hi", "\u0120there", "12", "123", "'", "S", "'S", "\u00c3", "\u00a9"}) {
    tokens.push_back(t);  // "Ġ" (U+0120) is the byte-level space, "Ã©" spells é (C3 A9)
  }
  const json pre = {{"type", "Sequence"},
                    {"pretokenizers", json::array({{{"type", "Split"},
                                                    {"pattern", {{"Regex", pattern}}},
                                                    {"behavior", "Isolated"},
                                                    {"invert", false}},
                                                   {{"type", "ByteLevel"},
                                                    {"add_prefix_space", false},
                                                    {"trim_offsets", true},
                                                    {"use_regex", false}}})}};
  return tokenizer_json(
      bpe(tokens, {"H i", "1 2", "12 3"}, {{"ignore_merges", true}}), nullptr, pre,
      {{"type", "Sequence"},
       {"processors", json::array({{{"type", "ByteLevel"}, {"trim_offsets", false}},
                                   bos_template("<|bos|>", 20)})}},
      {{"type", "ByteLevel"}}, json::array({added(20, "<|bos|>")}));
}

TEST(TokenizerSynthetic, ByteLevelBpeWithSplitRegex) {
  peft::test::TempDir dir;
  const Tokenizer tok = load(dir, byte_level_like());
  // Split: "Hi" " " " there" "123" "4" (\p{N}{1,3}); each is a whole vocabulary entry, taken as
  // is (ignore_merges) although no merge builds "Ġthere".
  EXPECT_EQ(tok.encode("Hi  there1234"), (Ids{20, 11, 2, 12, 14, 10}));
  // "Hii" is not in the vocabulary: merges H i -> Hi, then i stays.
  EXPECT_EQ(tok.encode("Hii", false), (Ids{11, 1}));
  EXPECT_EQ(tok.decode(tok.encode("Hi  there1234"), true), "Hi  there1234");
  // (?i:'s) matches "'S"; é is two byte-level characters.
  EXPECT_EQ(tok.encode("'S\u00e9", false), (Ids{17, 18, 19}));
  EXPECT_EQ(tok.decode({17, 18, 19}), "'S\u00e9");
}

// Vocabulary of whole pieces: each piece a pre-tokenizer emits is one id (ignore_merges), so the
// ids show where the pre-tokenizer cut.
Tokenizer split_tokenizer(const peft::test::TempDir& dir, const json& pre_tokenizer) {
  return load(dir, tokenizer_json(bpe({"a", "b", "-", "a-", "b-", "-b", "-a", "--", "1", "2", "12",
                                       "x", " ", "x y", "y", ",", "x,"},
                                      {}, {{"ignore_merges", true}}),
                                  nullptr, pre_tokenizer));
}

TEST(TokenizerSynthetic, SplitBehaviors) {
  peft::test::TempDir dir;
  auto split = [&](const std::string& behavior, bool invert = false) {
    return split_tokenizer(dir, {{"type", "Split"},
                                 {"pattern", {{"String", "-"}}},
                                 {"behavior", behavior},
                                 {"invert", invert}})
        .encode("a-b--a");
  };
  // a=0 b=1 -=2 a-=3 b-=4 -b=5 -a=6 --=7
  EXPECT_EQ(split("Removed"), (Ids{0, 1, 0}));
  EXPECT_EQ(split("Isolated"), (Ids{0, 2, 1, 2, 2, 0}));
  EXPECT_EQ(split("MergedWithPrevious"), (Ids{3, 4, 2, 0}));
  EXPECT_EQ(split("MergedWithNext"), (Ids{0, 5, 2, 6}));
  EXPECT_EQ(split("Contiguous"), (Ids{0, 2, 1, 7, 0}));
  EXPECT_EQ(split("Removed", true), (Ids{2, 2, 2}));  // inverted: the letters are removed
}

TEST(TokenizerSynthetic, ACatastrophicSplitPatternIsAFormatErrorNotAHang) {
  peft::test::TempDir dir;
  const auto tok = split_tokenizer(dir, {{"type", "Split"},
                                         {"pattern", {{"Regex", "(a|a)*$"}}},
                                         {"behavior", "Isolated"},
                                         {"invert", false}});
  try {
    tok.encode(std::string(40, 'a') + "!");
    ADD_FAILURE() << "a catastrophic pattern ran to its end";
  } catch (const peft::FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("(a|a)*$"), std::string::npos) << what;
    EXPECT_NE(what.find("backtracking steps"), std::string::npos) << what;
    EXPECT_NE(what.find("tokenizer.json"), std::string::npos) << what;
  }
}

TEST(TokenizerSynthetic, WordLevelPreTokenizers) {
  peft::test::TempDir dir;
  // Digits: individual (1, 2) or contiguous (12).
  EXPECT_EQ(split_tokenizer(dir, {{"type", "Digits"}, {"individual_digits", true}}).encode("12"),
            (Ids{8, 9}));
  EXPECT_EQ(split_tokenizer(dir, {{"type", "Digits"}, {"individual_digits", false}}).encode("12"),
            (Ids{10}));
  // WhitespaceSplit drops whitespace; Whitespace also splits punctuation from words.
  EXPECT_EQ(split_tokenizer(dir, {{"type", "WhitespaceSplit"}}).encode(" x  x,\ty "),
            (Ids{11, 16, 14}));
  EXPECT_EQ(split_tokenizer(dir, {{"type", "Whitespace"}}).encode("x, y"), (Ids{11, 15, 14}));
  // Punctuation isolates ",", a Sequence chains pre-tokenizers.
  EXPECT_EQ(split_tokenizer(dir, {{"type", "Sequence"},
                                  {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}},
                                                                 {{"type", "Punctuation"}}})}})
                .encode("x, y"),
            (Ids{11, 15, 14}));
  // Without a pre-tokenizer the whole text is one word.
  EXPECT_EQ(split_tokenizer(dir, nullptr).encode("x y"), (Ids{13}));
}

// Single-character vocabulary: the ids spell the normalized text.
Tokenizer char_tokenizer(const peft::test::TempDir& dir, const json& normalizer) {
  return load(dir, tokenizer_json(
                       bpe({"e", "\u0301", "\u00e9", "f", "i", "\ufb01", "\u1112", "\u1161",
                            "\u11ab", "\ud55c", "E", "\u00c9", " ", "x", "y", "\u0130", "\u0307"}),
                       normalizer));
}

TEST(TokenizerSynthetic, UnicodeNormalizers) {
  peft::test::TempDir dir;
  auto norm = [&](const std::string& type, const std::string& text) {
    return char_tokenizer(dir, {{"type", type}}).encode(text);
  };
  EXPECT_EQ(norm("NFD", "\u00e9"), (Ids{0, 1}));   // é -> e + combining acute
  EXPECT_EQ(norm("NFC", "e\u0301"), (Ids{2}));     // and back
  EXPECT_EQ(norm("NFKC", "\ufb01"), (Ids{3, 4}));  // ligature fi -> f i
  EXPECT_EQ(norm("NFC", "\ufb01"), (Ids{5}));      // NFC keeps it
  EXPECT_EQ(norm("NFKD", "\ufb01\u00e9"), (Ids{3, 4, 0, 1}));
  EXPECT_EQ(norm("NFD", "\ud55c"), (Ids{6, 7, 8}));        // Hangul syllable -> jamo
  EXPECT_EQ(norm("NFC", "\u1112\u1161\u11ab"), (Ids{9}));  // jamo -> syllable
  EXPECT_EQ(norm("Lowercase", "E\u00c9"), (Ids{0, 2}));
  EXPECT_EQ(norm("Lowercase", "\u0130"), (Ids{4, 16}));  // İ -> i + combining dot (full mapping)
  EXPECT_EQ(norm("StripAccents", "e\u0301"), (Ids{0}));
  EXPECT_EQ(char_tokenizer(dir, {{"type", "Sequence"},
                                 {"normalizers", json::array({{{"type", "NFD"}},
                                                              {{"type", "StripAccents"}},
                                                              {{"type", "Lowercase"}}})}})
                .encode("\u00c9e"),
            (Ids{0, 0}));
  EXPECT_EQ(char_tokenizer(dir, {{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}})
                .encode("  x  "),
            (Ids{13, 12, 12}));
  EXPECT_EQ(
      char_tokenizer(dir, {{"type", "Replace"}, {"pattern", {{"Regex", "x+"}}}, {"content", "y"}})
          .encode("xxex"),
      (Ids{14, 0, 14}));
  EXPECT_EQ(char_tokenizer(dir, {{"type", "Prepend"}, {"prepend", "x"}}).encode("e"), (Ids{13, 0}));
  EXPECT_EQ(char_tokenizer(dir, {{"type", "Prepend"}, {"prepend", "x"}}).encode(""), Ids{});
}

TEST(TokenizerSynthetic, AddedTokensOptions) {
  peft::test::TempDir dir;
  json tokens = json::array({added(17, "<mask>", false, false), added(18, "Yes", false, true),
                             added(19, "[SP]", true, false)});
  tokens[0]["lstrip"] = true;
  tokens[0]["rstrip"] = true;
  json word = added(20, "ab", false, false);
  word["single_word"] = true;
  tokens.push_back(word);
  json spec = tokenizer_json(bpe({"e", "\u0301", "\u00e9", "f", "i", "\ufb01", "\u1100", "\u1161",
                                  "\u11ab", "\ud55c", "E", "\u00c9", " ", "x", "y", "a", "b"}),
                             {{"type", "Lowercase"}}, nullptr, nullptr, nullptr, tokens);
  const Tokenizer tok = load(dir, spec);
  // lstrip/rstrip swallow the spaces around <mask>; "Yes" is normalized, so it matches "YES" after
  // lowercasing; [SP] is matched in the raw text before the normalizer runs.
  EXPECT_EQ(tok.encode("x <mask> yYES[SP]E"), (Ids{13, 17, 14, 18, 19, 0}));
  // single_word: "ab" inside a word is not the added token.
  EXPECT_EQ(tok.encode("ab xab ab"), (Ids{20, 12, 13, 15, 16, 12, 20}));
  EXPECT_EQ(tok.decode({19, 13}, true), "x");
  EXPECT_EQ(tok.decode({19, 18, 13}), "[SP] Yes x");  // no decoder: tokens joined by spaces
  EXPECT_EQ(tok.vocab_size(), 17 + 4);
}

TEST(TokenizerSynthetic, PostProcessors) {
  peft::test::TempDir dir;
  auto with = [&](const json& post) {
    return load(dir, tokenizer_json(bpe({"<s>", "</s>", "x", "y"}), nullptr, nullptr, post));
  };
  const json roberta = {{"type", "RobertaProcessing"},
                        {"sep", {"</s>", 1}},
                        {"cls", {"<s>", 0}},
                        {"trim_offsets", true},
                        {"add_prefix_space", true}};
  EXPECT_EQ(with(roberta).encode("x"), (Ids{0, 2, 1}));
  EXPECT_EQ(with(roberta).encode_pair("x", "y"), (Ids{0, 2, 1, 1, 3, 1}));
  EXPECT_EQ(with(roberta).encode_pair("x", "y", false), (Ids{2, 3}));
  const json string_template = {{"type", "TemplateProcessing"},
                                {"single", "<s> $A </s>"},
                                {"pair", "<s> $A </s> $B:1 </s>:1"},
                                {"special_tokens",
                                 {{"<s>", {{"id", "<s>"}, {"ids", {0}}, {"tokens", {"<s>"}}}},
                                  {"</s>", {{"id", "</s>"}, {"ids", {1}}, {"tokens", {"</s>"}}}}}}};
  EXPECT_EQ(with(string_template).encode_pair("x", "y"), (Ids{0, 2, 1, 3, 1}));
  EXPECT_EQ(with(bos_template("<s>", 0)).encode("xy", false), (Ids{2, 3}));
}

TEST(TokenizerSynthetic, DirectoryConfigFiles) {
  peft::test::TempDir dir;
  json spec = llama_like();
  spec["post_processor"] = nullptr;
  peft::test::write_file(dir.str("tokenizer.json"), spec.dump());
  // A Llama tokenizer class rebuilds the post-processor from add_bos_token / add_eos_token;
  // special_tokens_map.json overrides the config's tokens; chat_template.jinja wins.
  peft::test::write_file(dir.str("tokenizer_config.json"),
                         json{{"tokenizer_class", "LlamaTokenizerFast"},
                              {"add_bos_token", true},
                              {"add_eos_token", true},
                              {"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}}},
                              {"eos_token", "<unk>"},
                              {"pad_token", nullptr},
                              {"chat_template", "config template"}}
                             .dump());
  peft::test::write_file(dir.str("special_tokens_map.json"),
                         json{{"eos_token", {{"content", "</s>"}}}, {"pad_token", "<unk>"}}.dump());
  const Tokenizer tok = Tokenizer::from_dir(dir.str());
  EXPECT_EQ(tok.bos_token_id(), 1);
  EXPECT_EQ(tok.eos_token_id(), 2);
  EXPECT_EQ(tok.pad_token_id(), 0);
  EXPECT_EQ(tok.chat_template(), "config template");
  EXPECT_EQ(tok.encode("hello"), (Ids{1, 268, 2}));
  EXPECT_EQ(tok.encode_pair("hello", "hello"), (Ids{1, 268, 2, 1, 268, 2}));
  peft::test::write_file(dir.str("chat_template.jinja"), "{{ messages }}");
  EXPECT_EQ(Tokenizer::from_dir(dir.str()).chat_template(), "{{ messages }}");
}

// ---------------------------------------------------------------- errors

template <typename E>
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

TEST(TokenizerErrors, MalformedFilesThrowFormatError) {
  peft::test::TempDir dir;
  const std::string path = dir.str("tokenizer.json");
  auto load_text = [&](const std::string& text) {
    return error_of<peft::FormatError>([&] {
      peft::test::write_file(path, text);
      Tokenizer::from_file(path);
    });
  };
  EXPECT_NE(load_text("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_text("{}").find("model: missing"), std::string::npos);
  EXPECT_NE(load_text(tokenizer_json(bpe({"a"}, {"a b"})).dump()).find("model.merges[0]"),
            std::string::npos);
  json bad_vocab = tokenizer_json(bpe({"a"}));
  bad_vocab["model"]["vocab"]["b"] = "one";
  EXPECT_NE(load_text(bad_vocab.dump()).find("token \"b\" has id \"one\""), std::string::npos);
  json bad_regex = tokenizer_json(bpe({"a"}), nullptr,
                                  {{"type", "Split"},
                                   {"pattern", {{"Regex", "(unclosed"}}},
                                   {"behavior", "Isolated"},
                                   {"invert", false}});
  const std::string msg = load_text(bad_regex.dump());
  EXPECT_NE(msg.find("pre_tokenizer.pattern: regex \"(unclosed\" does not compile"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  json bad_behavior = bad_regex;
  bad_behavior["pre_tokenizer"]["pattern"] = {{"String", "-"}};
  bad_behavior["pre_tokenizer"]["behavior"] = "Sideways";
  EXPECT_NE(load_text(bad_behavior.dump()).find("expected one of Removed"), std::string::npos);
  json missing_unk = tokenizer_json(bpe({"a"}, {}, {{"unk_token", "<unk>"}}));
  EXPECT_NE(load_text(missing_unk.dump()).find("\"<unk>\" is not in the vocabulary"),
            std::string::npos);
  // Invalid UTF-8 input text.
  const Tokenizer tok = Tokenizer::from_file(tok_fixture("gpt2/tokenizer.json"));
  EXPECT_NE(
      error_of<peft::FormatError>([&] { tok.encode("ab\xC3"); }).find("not valid UTF-8 at byte 2"),
      std::string::npos);
  // A directory without tokenizer files.
  EXPECT_NE(error_of<peft::FormatError>([&] {
              Tokenizer::from_dir(dir.str("empty_dir_parent"));
            }).find("wrong exception type"),
            std::string::npos);  // not a directory: a plain peft::Error
  std::filesystem::create_directories(dir.str("empty"));
  EXPECT_NE(error_of<peft::FormatError>([&] {
              Tokenizer::from_dir(dir.str("empty"));
            }).find("neither tokenizer.json nor tokenizer.model"),
            std::string::npos);
  EXPECT_NE(error_of<peft::Error>([&] {
              Tokenizer::from_file(dir.str("missing.json"));
            }).find("cannot open"),
            std::string::npos);
  peft::test::write_file(dir.str("sp/tokenizer.model"), "not a protobuf");
  EXPECT_NE(error_of<peft::FormatError>([&] {
              Tokenizer::from_dir(dir.str("sp"));
            }).find("not a SentencePiece model"),
            std::string::npos);
}

TEST(TokenizerErrors, UnknownComponentsThrowUnsupportedError) {
  peft::test::TempDir dir;
  const std::string path = dir.str("tokenizer.json");
  auto load_spec = [&](const json& spec) {
    return error_of<peft::UnsupportedError>([&] {
      peft::test::write_file(path, spec.dump());
      Tokenizer::from_file(path);
    });
  };
  const std::string n = load_spec(tokenizer_json(bpe({"a"}), {{"type", "Precompiled"}}));
  EXPECT_NE(n.find("normalizer.type: normalizer \"Precompiled\" is not supported"),
            std::string::npos)
      << n;
  EXPECT_NE(n.find(path), std::string::npos);
  EXPECT_NE(n.find("supported: Sequence, NFC"), std::string::npos);
  EXPECT_NE(
      load_spec(tokenizer_json(bpe({"a"}), nullptr,
                               {{"type", "Sequence"},
                                {"pretokenizers", json::array({{{"type", "UnicodeScripts"}}})}}))
          .find("pre_tokenizer.pretokenizers[0].type: pre-tokenizer \"UnicodeScripts\""),
      std::string::npos);
  EXPECT_NE(load_spec(tokenizer_json({{"type", "Unigram"}, {"vocab", json::array()}}))
                .find("model \"Unigram\" is not supported"),
            std::string::npos);
  EXPECT_NE(load_spec(tokenizer_json(bpe({"a"}), nullptr, nullptr, nullptr, {{"type", "CTC"}}))
                .find("decoder \"CTC\""),
            std::string::npos);
  EXPECT_NE(load_spec(tokenizer_json(bpe({"a"}, {}, {{"dropout", 0.1}}))).find("dropout"),
            std::string::npos);
}

// ---------------------------------------------------------------- concurrency

TEST(TokenizerConcurrency, ThreadsEncodeAndDecodeAtOnce) {
  const Tokenizer gpt2 = Tokenizer::from_file(tok_fixture("gpt2/tokenizer.json"));
  const Tokenizer llama3 = Tokenizer::from_file(tok_fixture("llama3/tokenizer.json"));
  const Tokenizer sp = Tokenizer::from_dir(tok_fixture("llama2_sp"));
  std::vector<std::pair<const Tokenizer*, json>> work = {
      {&gpt2, read_json(tok_fixture("gpt2/cases.json"))["cases"]},
      {&llama3, read_json(tok_fixture("llama3/cases.json"))["cases"]},
      {&sp, read_json(tok_fixture("llama2/cases.json"))["cases"]}};
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        const auto& [tok, cases] = work[static_cast<size_t>((t + round) % 3)];
        for (const json& c : cases) {
          const Ids ids =
              tok->encode(c["text"].get<std::string>(), c["add_special_tokens"].get<bool>());
          if (ids != c["ids"].get<Ids>()) ++mismatches;
          tok->decode(ids);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
