#include "post_processors.h"

#include <map>
#include <optional>

namespace peft::detail::tok {
namespace {

Ids concat(const std::vector<Ids>& parts) {
  Ids out;
  for (const Ids& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

class PassThrough : public PostProcessor {  // ByteLevel only trims offsets
 public:
  std::vector<Ids> process(std::vector<Ids> sequences, bool) const override { return sequences; }
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  std::vector<Ids> process(std::vector<Ids> sequences, bool add) const override {
    for (const auto& p : parts_) sequences = p->process(std::move(sequences), add);
    return sequences;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

// A template piece: a sequence ($A = 0, $B = 1) or the ids of a special token.
struct TemplatePiece {
  int sequence = -1;
  Ids special;
};
using Template = std::vector<TemplatePiece>;

class TemplateProcessing : public PostProcessor {
 public:
  TemplateProcessing(Template single, Template pair)
      : single_(std::move(single)), pair_(std::move(pair)) {}
  std::vector<Ids> process(std::vector<Ids> sequences, bool add) const override {
    const Template& t = sequences.size() == 2 ? pair_ : single_;
    Ids out;
    for (const TemplatePiece& piece : t) {
      if (piece.sequence >= 0) {
        const Ids& s = sequences.at(static_cast<size_t>(piece.sequence));
        out.insert(out.end(), s.begin(), s.end());
      } else if (add) {
        out.insert(out.end(), piece.special.begin(), piece.special.end());
      }
    }
    return {std::move(out)};
  }

 private:
  Template single_, pair_;
};

// Bert: [CLS] A [SEP] (B [SEP]); Roberta: <s> A </s> (</s> B </s>).
class ClsSepProcessing : public PostProcessor {
 public:
  ClsSepProcessing(int64_t cls, int64_t sep, bool double_sep)
      : cls_(cls), sep_(sep), double_sep_(double_sep) {}
  std::vector<Ids> process(std::vector<Ids> sequences, bool add) const override {
    if (!add) return {concat(sequences)};
    Ids out{cls_};
    out.insert(out.end(), sequences[0].begin(), sequences[0].end());
    out.push_back(sep_);
    if (sequences.size() == 2) {
      if (double_sep_) out.push_back(sep_);
      out.insert(out.end(), sequences[1].begin(), sequences[1].end());
      out.push_back(sep_);
    }
    return {std::move(out)};
  }

 private:
  int64_t cls_, sep_;
  bool double_sep_;
};

using SpecialTokens = std::map<std::string, Ids>;

// One piece: {"Sequence": {"id": "A"}} / {"SpecialToken": {"id": "[CLS]"}} or the string form
// "$A", "$B:1", "[CLS]:0".
TemplatePiece read_piece(const json& p, const SpecialTokens& specials, const Where& where) {
  std::string special;
  TemplatePiece out;
  if (p.is_string()) {
    std::string s = p.get<std::string>();
    const size_t colon = s.rfind(':');
    if (colon != std::string::npos && colon + 1 < s.size() &&
        s.find_first_not_of("0123456789", colon + 1) == std::string::npos) {
      s.resize(colon);  // drop the type id
    }
    if (s == "$" || s == "$A" || s == "$B") {
      out.sequence = s == "$B" ? 1 : 0;
      return out;
    }
    special = s;
  } else if (p.is_object() && p.contains("Sequence")) {
    const std::string id = get_string(p["Sequence"], "id", where / "Sequence");
    if (id != "A" && id != "B")
      format_error(where / "Sequence" / "id", "is \"" + id + "\"; expected A or B");
    out.sequence = id == "B" ? 1 : 0;
    return out;
  } else if (p.is_object() && p.contains("SpecialToken")) {
    special = get_string(p["SpecialToken"], "id", where / "SpecialToken");
  } else {
    format_error(where,
                 "is " + p.dump() + "; expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
  }
  auto it = specials.find(special);
  if (it == specials.end()) {
    format_error(where, "special token \"" + special + "\" is not defined in special_tokens");
  }
  out.special = it->second;
  return out;
}

Template read_template(const json& spec, const char* key, const SpecialTokens& specials,
                       const Where& where) {
  const json& t = field(spec, key, where);
  json list = t;
  if (t.is_string()) {  // "[CLS] $A [SEP]"
    list = json::array();
    std::string s = t.get<std::string>();
    size_t pos = 0;
    while ((pos = s.find_first_not_of(' ', pos)) != std::string::npos) {
      const size_t end = s.find(' ', pos);
      list.push_back(s.substr(pos, end - pos));
      pos = end;
    }
  }
  if (!list.is_array()) format_error(where / key, "is " + type_name(t) + "; expected an array");
  Template out;
  for (size_t i = 0; i < list.size(); ++i) {
    out.push_back(read_piece(list[i], specials, (where / key).at(i)));
  }
  return out;
}

// ["[SEP]", 102]
int64_t read_token_pair(const json& spec, const char* key, const Where& where) {
  const json& v = field(spec, key, where);
  if (!v.is_array() || v.size() != 2 || !v[0].is_string() || !v[1].is_number_integer()) {
    format_error(where / key, "is " + v.dump() + "; expected [\"token\", id]");
  }
  return v[1].get<int64_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& spec, const Where& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = get_type(spec, where);
  if (type == "ByteLevel") return std::make_unique<PassThrough>();
  if (type == "Sequence") {
    const json& list = field(spec, "processors", where);
    if (!list.is_array()) format_error(where / "processors", "expected an array");
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      if (auto p = make_post_processor(list[i], (where / "processors").at(i))) {
        parts.push_back(std::move(p));
      }
    }
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  if (type == "TemplateProcessing") {
    SpecialTokens specials;
    const json& map = field(spec, "special_tokens", where);
    if (!map.is_object()) format_error(where / "special_tokens", "expected an object");
    for (auto it = map.begin(); it != map.end(); ++it) {
      const Where w = where / "special_tokens" / it.key();
      const json& ids = field(it.value(), "ids", w);
      if (!ids.is_array()) format_error(w / "ids", "expected an array of ids");
      Ids v;
      for (const json& id : ids) {
        if (!id.is_number_integer())
          format_error(w / "ids", "is " + ids.dump() + "; expected integers");
        v.push_back(id.get<int64_t>());
      }
      specials.emplace(get_string(it.value(), "id", w, it.key()), std::move(v));
    }
    return std::make_unique<TemplateProcessing>(read_template(spec, "single", specials, where),
                                                read_template(spec, "pair", specials, where));
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    return std::make_unique<ClsSepProcessing>(read_token_pair(spec, "cls", where),
                                              read_token_pair(spec, "sep", where),
                                              type == "RobertaProcessing");
  }
  unknown_type(
      where, "post-processor", type,
      {"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel", "Sequence"});
}

std::unique_ptr<PostProcessor> make_bos_eos_processor(std::optional<int64_t> bos,
                                                      std::optional<int64_t> eos) {
  Template single, pair;
  for (int seq = 0; seq < 2; ++seq) {
    Template& t = seq == 0 ? single : pair;
    for (int s = 0; s <= seq; ++s) {
      if (bos) t.push_back({-1, {*bos}});
      t.push_back({s, {}});
      if (eos) t.push_back({-1, {*eos}});
    }
  }
  return std::make_unique<TemplateProcessing>(std::move(single), std::move(pair));
}

}  // namespace peft::detail::tok
