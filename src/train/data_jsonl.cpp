// JSONL reading: one example per line, in TRL's dataset formats or pre-tokenized.
#include <fstream>
#include <nlohmann/json.hpp>

#include "../strings.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"
#include "peft/tokenizer.h"
#include "peft/train/data.h"

namespace peft::train {

namespace {

using json = nlohmann::json;

constexpr const char* kFormats =
    "{\"text\"}, {\"prompt\",\"completion\"}, {\"messages\":[{\"role\",\"content\"}...]} or "
    "{\"input_ids\"[,\"labels\"]}";

struct LineContext {
  const std::string& path;
  int64_t line;
  [[noreturn]] void fail(const std::string& what, const std::string& hint = "") const {
    std::string msg = path + ":" + std::to_string(line) + ": " + what;
    if (!hint.empty()) msg += " (hint: " + hint + ")";
    throw FormatError("data", msg);
  }
};

std::string keys_of(const json& obj) {
  std::vector<std::string> keys;
  for (const auto& item : obj.items()) keys.push_back(item.key());
  return "[" + detail::join(keys, ", ", "\"") + "]";
}

const std::string& string_field(const json& obj, const char* key, const LineContext& at) {
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) {
    at.fail(std::string("\"") + key + "\" must be a string; found " +
            (it == obj.end() ? "nothing" : it->type_name()));
  }
  return it->get_ref<const std::string&>();
}

std::vector<int64_t> int_array(const json& obj, const char* key, const LineContext& at) {
  const json& v = obj.at(key);
  if (!v.is_array())
    at.fail(std::string("\"") + key + "\" must be an array of integers; found " + v.type_name());
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer()) {
      at.fail(std::string("\"") + key + "\"[" + std::to_string(i) + "] must be an integer; found " +
              v[i].dump());
    }
    out.push_back(v[i].get<int64_t>());
  }
  return out;
}

const Tokenizer& need_tokenizer(const Tokenizer* tokenizer, const LineContext& at) {
  if (!tokenizer)
    at.fail("a text example needs a tokenizer", "give the model folder a tokenizer.json");
  return *tokenizer;
}

void append_eos(std::vector<int64_t>& ids, const Tokenizer& tokenizer) {
  const auto eos = tokenizer.eos_token_id();
  if (eos && (ids.empty() || ids.back() != *eos)) ids.push_back(*eos);
}

Example parse_line(const json& obj, const Tokenizer* tokenizer, const DataOptions& options,
                   const LineContext& at) {
  Example ex;
  ex.line = at.line;
  if (!obj.is_object())
    at.fail(std::string("expected a JSON object; found ") + obj.type_name(), kFormats);
  if (obj.contains("input_ids")) {
    ex.input_ids = int_array(obj, "input_ids", at);
    if (ex.input_ids.empty()) at.fail("\"input_ids\" is empty");
    if (options.classification) {
      if (!obj.contains("label") || !obj["label"].is_number_integer())
        at.fail("\"label\" must be an integer");
      ex.label = obj["label"].get<int64_t>();
    } else if (obj.contains("labels")) {
      ex.labels = int_array(obj, "labels", at);
      if (ex.labels.size() != ex.input_ids.size()) {
        at.fail("\"labels\" has " + std::to_string(ex.labels.size()) +
                " entries but \"input_ids\" has " + std::to_string(ex.input_ids.size()));
      }
    } else {
      ex.labels = ex.input_ids;
    }
    if (obj.contains("token_type_ids")) ex.token_type_ids = int_array(obj, "token_type_ids", at);
    return ex;
  }
  if (options.classification) {
    const std::string& text = string_field(obj, "text", at);
    const auto label = obj.find("label");
    if (label == obj.end() || !label->is_number_integer()) {
      at.fail("a classification example needs an integer \"label\"; found keys " + keys_of(obj));
    }
    ex.label = label->get<int64_t>();
    const Tokenizer& tok = need_tokenizer(tokenizer, at);
    ex.input_ids = obj.contains("text_pair")
                       ? tok.encode_pair(text, string_field(obj, "text_pair", at))
                       : tok.encode(text);
    return ex;
  }
  if (obj.contains("messages")) {
    const json& msgs = obj["messages"];
    if (!msgs.is_array() || msgs.empty())
      at.fail("\"messages\" must be a non-empty array of {\"role\",\"content\"}");
    std::vector<std::pair<std::string, std::string>> conversation;
    for (const auto& m : msgs) {
      if (!m.is_object()) at.fail("each message must be an object with \"role\" and \"content\"");
      conversation.emplace_back(string_field(m, "role", at), string_field(m, "content", at));
    }
    const Tokenizer& tok = need_tokenizer(tokenizer, at);
    try {
      Example c = tokenize_conversation(conversation, tok);
      c.line = at.line;
      return c;
    } catch (const ConfigError& e) {
      at.fail(std::string("chat template: ") + e.what());
    }
  }
  if (obj.contains("prompt") || obj.contains("completion")) {
    const std::string& prompt = string_field(obj, "prompt", at);
    const std::string& completion = string_field(obj, "completion", at);
    const Tokenizer& tok = need_tokenizer(tokenizer, at);
    const auto prompt_ids = tok.encode(prompt);
    ex.input_ids = tok.encode(prompt + completion);
    append_eos(ex.input_ids, tok);
    // TRL masks the first len(prompt_ids) tokens of the joint encoding; when a merge crosses the
    // boundary the prompt's last token is not a prefix (TRL warns too).
    const bool prefix = prompt_ids.size() <= ex.input_ids.size() &&
                        std::equal(prompt_ids.begin(), prompt_ids.end(), ex.input_ids.begin());
    if (!prefix) {
      warn("data", at.path + ":" + std::to_string(at.line) +
                       ": the tokenized prompt is not a prefix of the tokenized prompt + "
                       "completion; the loss mask "
                       "uses the prompt's token count");
    }
    ex.labels = ex.input_ids;
    const size_t masked = std::min(prompt_ids.size(), ex.labels.size());
    std::fill(ex.labels.begin(), ex.labels.begin() + static_cast<std::ptrdiff_t>(masked),
              int64_t{-100});
    return ex;
  }
  if (obj.contains("text")) {
    const Tokenizer& tok = need_tokenizer(tokenizer, at);
    ex.input_ids = tok.encode(string_field(obj, "text", at));
    append_eos(ex.input_ids, tok);
    ex.labels = ex.input_ids;
    return ex;
  }
  at.fail("unrecognised example with keys " + keys_of(obj) + "; expected " + kFormats);
}

}  // namespace

std::vector<Example> load_jsonl(const std::string& path, const Tokenizer* tokenizer,
                                const DataOptions& options) {
  io::RegularFile(path, "data");  // a FIFO or a directory is refused before the stream opens it
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw FormatError("data",
                      "cannot open \"" + path + "\" (hint: check the --data / --eval-data path)");
  std::vector<Example> out;
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    const LineContext at{path, line};
    json obj;
    try {
      io::check_json_depth(text, "data", path + ":" + std::to_string(line));
      obj = json::parse(text);
    } catch (const json::exception& e) {
      at.fail(std::string("not valid JSON: ") + e.what(), "one JSON object per line");
    }
    Example ex = parse_line(obj, tokenizer, options, at);
    if (!options.packing && options.max_length <= 0 && options.max_tokens > 0 &&
        static_cast<int64_t>(ex.input_ids.size()) > options.max_tokens) {
      // Divergence from transformers: an over-long sequence would run (RoPE models) or fail in
      // the position embedding; here it is refused before training allocates for it.
      at.fail(std::to_string(ex.input_ids.size()) + " tokens, more than the model's " +
                  std::to_string(options.max_tokens) + " positions (max_position_embeddings)",
              "pass --max-length N to truncate longer examples, or split them");
    }
    if (!options.packing && options.max_length > 0 &&
        static_cast<int64_t>(ex.input_ids.size()) > options.max_length) {
      const auto n = static_cast<size_t>(options.max_length);
      ex.input_ids.resize(n);
      if (!ex.labels.empty()) ex.labels.resize(n);
      if (!ex.token_type_ids.empty()) ex.token_type_ids.resize(n);
    }
    out.push_back(std::move(ex));
  }
  if (out.empty())
    throw FormatError("data",
                      "\"" + path + "\" holds no examples (hint: one JSON object per line)");
  if (options.packing) {
    if (options.max_length <= 0) throw ConfigError("data", "packing needs max_length > 0");
    if (options.classification)
      throw ConfigError("data", "packing does not apply to sequence classification");
    out = pack_examples(out, options.max_length);
  }
  return out;
}

}  // namespace peft::train
