// Writes the trained BPE as Hugging Face files (tokenizer.json in the `tokenizers` format,
// tokenizer_config.json for transformers' PreTrainedTokenizerFast) and checks that peft.cpp's own
// tokenizer loads them and round-trips text exactly.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "make_demo.h"
#include "peft/io/atomic_write.h"
#include "peft/tokenizer.h"

namespace make_demo {
namespace {

using ojson = nlohmann::ordered_json;

// ChatML, with the BOS the post-processor would add (apply_chat_template tokenizes without
// special tokens).
constexpr const char* kChatTemplate =
    R"({{ bos_token }}{% for message in messages %})"
    R"({{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }})"
    R"({% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";

void write_json(const std::string& path, const ojson& j) {
  peft::io::write_file_atomically(path, j.dump(2, ' ', false) + "\n", "make-demo");
}

ojson added_token(const std::string& content) {
  ojson t;
  t["content"] = content;
  t["single_word"] = false;
  t["lstrip"] = false;
  t["rstrip"] = false;
  t["normalized"] = false;
  t["special"] = true;
  return t;
}

int64_t id_of(const BpeModel& bpe, const std::string& token) {
  for (size_t i = 0; i < bpe.vocab.size(); ++i) {
    if (bpe.vocab[i] == token) return static_cast<int64_t>(i);
  }
  throw std::logic_error("token not in the vocabulary: " + token);
}

ojson byte_level(bool add_prefix_space) {
  ojson j;
  j["type"] = "ByteLevel";
  j["add_prefix_space"] = add_prefix_space;
  j["trim_offsets"] = true;
  j["use_regex"] = true;
  return j;
}

}  // namespace

void write_tokenizer(const std::string& model_dir, const BpeModel& bpe, const SpecialTokens& sp) {
  const int64_t bos = id_of(bpe, sp.bos);
  ojson tok;
  tok["version"] = "1.0";
  tok["truncation"] = nullptr;
  tok["padding"] = nullptr;
  tok["added_tokens"] = ojson::array();
  for (const auto& s : bpe.specials) {
    ojson t;
    t["id"] = id_of(bpe, s);
    const ojson fields = added_token(s);
    for (const auto& [k, v] : fields.items()) t[k] = v;
    tok["added_tokens"].push_back(t);
  }
  tok["normalizer"] = nullptr;
  tok["pre_tokenizer"] = byte_level(false);
  // BOS before every sequence (and before the second of a pair, as Llama 3's template does).
  ojson bos_piece = {{"SpecialToken", {{"id", sp.bos}, {"type_id", 0}}}};
  ojson post;
  post["type"] = "TemplateProcessing";
  post["single"] = {bos_piece, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}};
  ojson bos_b = {{"SpecialToken", {{"id", sp.bos}, {"type_id", 1}}}};
  post["pair"] = {bos_piece,
                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  bos_b,
                  {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}};
  post["special_tokens"][sp.bos] = {{"id", sp.bos}, {"ids", {bos}}, {"tokens", {sp.bos}}};
  tok["post_processor"] = post;
  tok["decoder"] = byte_level(true);
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  model["vocab"] = ojson::object();
  for (size_t i = 0; i < bpe.vocab.size(); ++i) model["vocab"][bpe.vocab[i]] = i;
  model["merges"] = ojson::array();
  for (const auto& [a, b] : bpe.merges) model["merges"].push_back(a + " " + b);
  tok["model"] = model;
  write_json(model_dir + "/tokenizer.json", tok);

  ojson cfg;
  cfg["added_tokens_decoder"] = ojson::object();
  for (const auto& s : bpe.specials)
    cfg["added_tokens_decoder"][std::to_string(id_of(bpe, s))] = added_token(s);
  cfg["additional_special_tokens"] = {sp.im_start, sp.im_end};
  cfg["bos_token"] = sp.bos;
  cfg["chat_template"] = kChatTemplate;
  cfg["clean_up_tokenization_spaces"] = false;
  cfg["eos_token"] = sp.eos;
  cfg["model_max_length"] = 256;
  cfg["pad_token"] = sp.pad;
  cfg["padding_side"] = "right";
  cfg["tokenizer_class"] = "PreTrainedTokenizerFast";
  write_json(model_dir + "/tokenizer_config.json", cfg);
}

void check_tokenizer(const std::string& model_dir, const std::vector<std::string>& texts,
                     const SpecialTokens& sp) {
  const auto tok = peft::Tokenizer::from_dir(model_dir);
  auto fail = [&](const std::string& what) {
    throw std::runtime_error("[make-demo] tokenizer in " + model_dir + ": " + what);
  };
  std::vector<std::string> specials = sp.all();
  for (size_t i = 0; i < specials.size(); ++i) {
    const auto ids = tok.encode(specials[i], false);
    if (ids.size() != 1 || ids[0] != static_cast<int64_t>(i))
      fail("\"" + specials[i] + "\" does not encode to the single id " + std::to_string(i));
  }
  if (tok.pad_token_id() != 0 || tok.bos_token_id() != 1 || tok.eos_token_id() != 2)
    fail("pad / bos / eos ids are not 0 / 1 / 2");
  if (!tok.chat_template()) fail("no chat_template");
  size_t tokens = 0, chars = 0;
  for (const auto& text : texts) {
    const auto ids = tok.encode(text, false);
    if (tok.decode(ids) != text) fail("encode -> decode changes \"" + text + "\"");
    const auto with_bos = tok.encode(text, true);
    if (with_bos.size() != ids.size() + 1 || with_bos[0] != 1)
      fail("encode(add_special_tokens) does not prepend BOS to \"" + text + "\"");
    tokens += ids.size();
    chars += text.size();
  }
  std::printf("tokenizer: vocab %lld, %zu texts round-trip exactly, %.2f chars per token\n",
              static_cast<long long>(tok.vocab_size()), texts.size(),
              static_cast<double>(chars) / static_cast<double>(std::max<size_t>(tokens, 1)));
}

}  // namespace make_demo
