#include "models.h"
#include "peft/error.h"

namespace peft::detail::tok {

std::optional<int64_t> Vocab::find(std::string_view token) const {
  auto it = by_token.find(token);
  if (it == by_token.end()) return std::nullopt;
  return it->second;
}

Vocab read_vocab(const json& spec, const Where& where) {
  const json& v = field(spec, "vocab", where);
  if (!v.is_object()) {
    format_error(where / "vocab", "is " + type_name(v) + "; expected an object {token: id}");
  }
  Vocab out;
  out.by_token.reserve(v.size());
  out.by_id.reserve(v.size());
  std::vector<std::string> duplicates;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
      format_error(where / "vocab", "token \"" + it.key() + "\" has id " + it.value().dump() +
                                        "; expected a non-negative integer");
    }
    const int64_t id = it.value().get<int64_t>();
    out.by_token.emplace(it.key(), id);
    if (!out.by_id.emplace(id, it.key()).second && duplicates.size() < 5) {
      duplicates.push_back(std::to_string(id));
    }
  }
  if (!duplicates.empty()) {
    // HF keeps one of the tokens for decoding as well; say so instead of choosing silently.
    warn("tokenizer", where.str() + ": ids shared by several tokens (" + duplicates.front() +
                          ", ...); decoding such an id gives one of them");
  }
  return out;
}

std::unique_ptr<Model> make_model(const json& spec, const Where& where) {
  if (!spec.is_object()) format_error(where, "is " + type_name(spec) + "; expected an object");
  std::string type;
  if (spec.contains("type")) {
    type = get_type(spec, where);
  } else if (spec.contains("merges")) {
    type = "BPE";  // files written before models carried a type tag
  } else if (spec.contains("max_input_chars_per_word")) {
    type = "WordPiece";
  } else {
    format_error(where / "type", "missing; expected \"BPE\" or \"WordPiece\"");
  }
  if (type == "BPE") return make_bpe(spec, where);
  if (type == "WordPiece") return make_wordpiece(spec, where);
  unknown_type(where, "model", type, {"BPE", "WordPiece"});
}

}  // namespace peft::detail::tok
