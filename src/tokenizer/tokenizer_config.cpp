#include "tokenizer_config.h"

#include <filesystem>

#include "backend.h"
#include "json_util.h"
#include "peft/error.h"
#include "peft/io/json.h"

namespace peft::detail::tok {
namespace {

namespace fs = std::filesystem;

json read_json(const fs::path& path) {
  try {
    const std::string text = read_text_file(path.string());
    io::check_json_depth(text, "tokenizer", "\"" + path.string() + "\"");
    return json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError("tokenizer", "\"" + path.string() + "\": not valid JSON: " + e.what());
  }
}

// A special token is a string, an AddedToken object {"content": ...} or null.
std::optional<std::string> token_string(const json& obj, const char* key, const Where& where) {
  if (!obj.contains(key) || obj[key].is_null()) return std::nullopt;
  const json& v = obj[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) return get_string(v, "content", where / key);
  format_error(where / key, "is " + type_name(v) + "; expected a string or {\"content\": ...}");
}

std::optional<bool> optional_bool(const json& obj, const char* key, const Where& where) {
  if (!obj.contains(key) || obj[key].is_null()) return std::nullopt;
  return get_bool(obj, key, where);
}

void read_special_tokens(const json& obj, const Where& where, TokenizerConfig& out) {
  if (auto v = token_string(obj, "bos_token", where)) out.bos_token = v;
  if (auto v = token_string(obj, "eos_token", where)) out.eos_token = v;
  if (auto v = token_string(obj, "pad_token", where)) out.pad_token = v;
  if (auto v = token_string(obj, "unk_token", where)) out.unk_token = v;
  if (obj.contains("additional_special_tokens") && obj["additional_special_tokens"].is_array()) {
    out.additional_special_tokens.clear();
    const json& list = obj["additional_special_tokens"];
    for (size_t i = 0; i < list.size(); ++i) {
      const Where w = (where / "additional_special_tokens").at(i);
      if (list[i].is_string()) {
        out.additional_special_tokens.push_back(list[i].get<std::string>());
      } else {
        out.additional_special_tokens.push_back(get_string(list[i], "content", w));
      }
    }
  }
}

std::optional<std::string> read_chat_template(const json& obj, const Where& where) {
  if (!obj.contains("chat_template") || obj["chat_template"].is_null()) return std::nullopt;
  const json& t = obj["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {  // named templates: [{"name": ..., "template": ...}]
    for (size_t i = 0; i < t.size(); ++i) {
      const Where w = (where / "chat_template").at(i);
      if (get_string(t[i], "name", w) == "default") return get_string(t[i], "template", w);
    }
    warn("tokenizer", where.str() +
                          ".chat_template: named templates without a \"default\" one; "
                          "chat_template() is unset");
    return std::nullopt;
  }
  format_error(where / "chat_template", "is " + type_name(t) + "; expected a string or a list");
}

}  // namespace

TokenizerConfig read_tokenizer_config(const std::string& dir) {
  TokenizerConfig out;
  const fs::path config_path = fs::path(dir) / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    const json cfg = read_json(config_path);
    const Where where{config_path.string(), ""};
    if (!cfg.is_object()) format_error(where, "is " + type_name(cfg) + "; expected an object");
    read_special_tokens(cfg, where, out);
    out.chat_template = read_chat_template(cfg, where);
    out.add_bos_token = optional_bool(cfg, "add_bos_token", where);
    out.add_eos_token = optional_bool(cfg, "add_eos_token", where);
    out.legacy = optional_bool(cfg, "legacy", where);
    out.tokenizer_class = get_string(cfg, "tokenizer_class", where, std::string());
    if (cfg.contains("added_tokens_decoder") && cfg["added_tokens_decoder"].is_object()) {
      const json& map = cfg["added_tokens_decoder"];
      for (auto it = map.begin(); it != map.end(); ++it) {
        const Where w = where / "added_tokens_decoder" / it.key();
        AddedToken t;
        try {
          t.id = std::stoll(it.key());
        } catch (const std::exception&) {
          format_error(w, "key is not an integer id");
        }
        t.content = get_string(it.value(), "content", w);
        t.single_word = get_bool(it.value(), "single_word", w, false);
        t.lstrip = get_bool(it.value(), "lstrip", w, false);
        t.rstrip = get_bool(it.value(), "rstrip", w, false);
        t.special = get_bool(it.value(), "special", w, false);
        t.normalized = get_bool(it.value(), "normalized", w, !t.special);
        out.added_tokens.push_back(std::move(t));
      }
    }
  }
  const fs::path map_path = fs::path(dir) / "special_tokens_map.json";
  if (fs::exists(map_path)) {
    const json map = read_json(map_path);
    const Where where{map_path.string(), ""};
    if (!map.is_object()) format_error(where, "is " + type_name(map) + "; expected an object");
    read_special_tokens(map, where, out);
  }
  const fs::path jinja = fs::path(dir) / "chat_template.jinja";
  if (fs::exists(jinja)) out.chat_template = read_text_file(jinja.string());
  return out;
}

bool uses_bos_eos_switches(const std::string& c) {
  return c == "LlamaTokenizer" || c == "LlamaTokenizerFast" || c == "CodeLlamaTokenizer" ||
         c == "CodeLlamaTokenizerFast" || c == "GemmaTokenizer" || c == "GemmaTokenizerFast";
}

}  // namespace peft::detail::tok
