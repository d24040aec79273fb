// A protobuf wire-format reader for the few ModelProto fields that matter, SentencePiece's
// identity normalizer (normalizer.cc) and its BPE encoder (bpe_model.cc): repeatedly merge the
// adjacent pair whose concatenation is the highest-scoring piece, leftmost on ties.
#include "sentencepiece_model.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "peft/error.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

constexpr std::string_view kSpace = "\u2581";

// Minimal protobuf reader: varints, fixed32 and length-delimited fields.
class Reader {
 public:
  Reader(std::string_view data, const std::string& file) : data_(data), file_(file) {}
  bool done() const { return pos_ >= data_.size(); }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail("truncated varint");
      const auto b = static_cast<unsigned char>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    fail("varint longer than 10 bytes");
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > data_.size() - pos_) fail("length-delimited field past the end");
    std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  float fixed32() {
    if (data_.size() - pos_ < 4) fail("truncated fixed32");
    uint32_t bits = 0;
    for (int k = 3; k >= 0; --k)
      bits = bits << 8 | static_cast<unsigned char>(data_[pos_ + static_cast<size_t>(k)]);
    pos_ += 4;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0:
        varint();
        return;
      case 1:
        if (data_.size() - pos_ < 8) fail("truncated fixed64");
        pos_ += 8;
        return;
      case 2:
        bytes();
        return;
      case 5:
        fixed32();
        return;
      default:
        fail("unsupported wire type " + std::to_string(wire_type));
    }
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError("tokenizer", "\"" + file_ + "\": not a SentencePiece model: " + what +
                                       " at byte " + std::to_string(pos_) +
                                       " (hint: tokenizer.model files come from SentencePiece)");
  }

 private:
  std::string_view data_;
  const std::string& file_;
  size_t pos_ = 0;
};

// Reads fields of one message: fn(field_number, wire_type, reader) returns false to skip.
template <typename Fn>
void read_message(std::string_view data, const std::string& file, Fn&& fn) {
  Reader r(data, file);
  while (!r.done()) {
    const uint64_t key = r.varint();
    const auto field = static_cast<uint32_t>(key >> 3), wire = static_cast<uint32_t>(key & 7);
    if (!fn(field, wire, r)) r.skip(wire);
  }
}

}  // namespace

SentencePieceModel::SentencePieceModel(std::string_view bytes, const std::string& file) {
  int64_t model_type = 1;  // UNIGRAM is the proto default
  std::string charsmap, normalizer_name;
  std::string bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  read_message(bytes, file, [&](uint32_t field, uint32_t wire, Reader& r) {
    if (field == 1 && wire == 2) {
      Piece p;
      read_message(r.bytes(), file, [&](uint32_t f, uint32_t w, Reader& pr) {
        if (f == 1 && w == 2)
          p.text = std::string(pr.bytes());
        else if (f == 2 && w == 5)
          p.score = pr.fixed32();
        else if (f == 3 && w == 0)
          p.type = static_cast<PieceType>(pr.varint());
        else
          return false;
        return true;
      });
      pieces_.push_back(std::move(p));
      return true;
    }
    if (field == 2 && wire == 2) {  // TrainerSpec
      read_message(r.bytes(), file, [&](uint32_t f, uint32_t w, Reader& tr) {
        if (f == 3 && w == 0)
          model_type = static_cast<int64_t>(tr.varint());
        else if (f == 35 && w == 0)
          byte_fallback_ = tr.varint() != 0;
        else if (f == 24 && w == 0)
          whitespace_as_suffix_ = tr.varint() != 0;
        else if (f == 46 && w == 2)
          bos_piece = std::string(tr.bytes());
        else if (f == 47 && w == 2)
          eos_piece = std::string(tr.bytes());
        else if (f == 48 && w == 2)
          pad_piece = std::string(tr.bytes());
        else
          return false;
        return true;
      });
      return true;
    }
    if (field == 3 && wire == 2) {  // NormalizerSpec
      read_message(r.bytes(), file, [&](uint32_t f, uint32_t w, Reader& nr) {
        if (f == 1 && w == 2)
          normalizer_name = std::string(nr.bytes());
        else if (f == 2 && w == 2)
          charsmap = std::string(nr.bytes());
        else if (f == 3 && w == 0)
          add_dummy_prefix_ = nr.varint() != 0;
        else if (f == 4 && w == 0)
          remove_extra_whitespaces_ = nr.varint() != 0;
        else if (f == 5 && w == 0)
          escape_whitespaces_ = nr.varint() != 0;
        else
          return false;
        return true;
      });
      return true;
    }
    return false;
  });
  const Where where{file, ""};
  if (pieces_.empty()) format_error(where, "no pieces; expected a SentencePiece model");
  if (model_type != 2) {
    unsupported(where, "SentencePiece model type " + std::to_string(model_type) +
                           (model_type == 1 ? " (Unigram)" : "") +
                           " is not supported; supported: 2 (BPE) (hint: use the model's "
                           "tokenizer.json)");
  }
  if (!charsmap.empty()) {
    unsupported(where, "SentencePiece normalization rule \"" + normalizer_name +
                           "\" (a precompiled_charsmap) is not supported; supported: identity "
                           "(hint: use the model's tokenizer.json)");
  }
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const Piece& p = pieces_[i];
    const auto id = static_cast<int64_t>(i);
    const bool normal = p.type == PieceType::kNormal || p.type == PieceType::kUserDefined ||
                        p.type == PieceType::kUnused;
    if (p.text.empty() || !(normal ? index_ : reserved_).emplace(p.text, id).second) {
      format_error(where,
                   "piece " + std::to_string(i) + " (\"" + p.text + "\") is empty or repeated");
    }
    if (p.type == PieceType::kUnused) {
      unsupported(where, "piece " + std::to_string(i) + " (\"" + p.text +
                             "\") is UNUSED, which SentencePiece re-splits; not supported");
    }
    if (p.type == PieceType::kUserDefined) user_defined_.push_back(p.text);
    if (p.type == PieceType::kUnknown) unk_id_ = id;
  }
  if (!unk_id_) format_error(where, "no piece of type UNKNOWN; expected an <unk> piece");
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  auto control = [&](const std::string& name) -> std::optional<int64_t> {
    auto it = reserved_.find(name);
    if (it == reserved_.end() ||
        pieces_[static_cast<size_t>(it->second)].type != PieceType::kControl) {
      return std::nullopt;
    }
    return it->second;
  };
  bos_id_ = control(bos_piece);
  eos_id_ = control(eos_piece);
  pad_id_ = control(pad_piece);
  if (byte_fallback_) {
    byte_ids_.assign(256, -1);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const int b = byte_of(static_cast<int64_t>(i));
      if (b >= 0) byte_ids_[static_cast<size_t>(b)] = static_cast<int64_t>(i);
    }
    if (std::count(byte_ids_.begin(), byte_ids_.end(), -1) != 0) {
      format_error(where, "byte_fallback is set but some of the 256 <0xXX> pieces are missing");
    }
  }
}

std::optional<int64_t> SentencePieceModel::find(std::string_view piece) const {
  auto it = index_.find(piece);
  if (it != index_.end()) return it->second;
  it = reserved_.find(piece);
  if (it != reserved_.end()) return it->second;
  return std::nullopt;
}

int SentencePieceModel::byte_of(int64_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return -1;
  const Piece& p = pieces_[static_cast<size_t>(id)];
  if (p.type != PieceType::kByte || p.text.size() != 6 || p.text.compare(0, 3, "<0x") != 0)
    return -1;
  return static_cast<int>(std::stoi(p.text.substr(3, 2), nullptr, 16));
}

// normalizer.cc with an empty charsmap: optional removal of extra spaces, the dummy "▁" prefix
// (or suffix) and spaces written as "▁".
std::string SentencePieceModel::normalize(std::string_view text) const {
  if (remove_extra_whitespaces_) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  }
  if (text.empty()) return {};
  const std::string space = escape_whitespaces_ ? std::string(kSpace) : std::string(" ");
  std::string out;
  if (add_dummy_prefix_ && !whitespace_as_suffix_) out += space;
  bool prev_space = remove_extra_whitespaces_;
  for (char c : text) {
    if (c == ' ') {
      if (!prev_space) out += space;
      prev_space = remove_extra_whitespaces_;
    } else {
      out.push_back(c);
      prev_space = false;
    }
  }
  if (remove_extra_whitespaces_) {
    while (out.size() >= space.size() &&
           out.compare(out.size() - space.size(), space.size(), space) == 0) {
      out.resize(out.size() - space.size());
    }
  }
  if (add_dummy_prefix_ && whitespace_as_suffix_) out += space;
  return out;
}

void SentencePieceModel::encode(std::string_view text, std::vector<int64_t>& out) const {
  const std::string normalized = normalize(text);
  struct Symbol {
    size_t begin, size;
    ptrdiff_t prev, next;
    bool freeze;
  };
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < normalized.size();) {
    size_t len = 0;
    bool freeze = false;
    for (const std::string& u : user_defined_) {
      if (normalized.compare(pos, u.size(), u) == 0) {
        len = u.size();
        freeze = true;
        break;
      }
    }
    if (len == 0)
      len = std::min(utf8_length(static_cast<unsigned char>(normalized[pos])),
                     normalized.size() - pos);
    const auto n = static_cast<ptrdiff_t>(symbols.size());
    symbols.push_back({pos, len, n - 1, pos + len < normalized.size() ? n + 1 : -1, freeze});
    pos += len;
  }
  struct Pair {
    float score;
    ptrdiff_t left, right;
    size_t size;
    bool operator<(const Pair& o) const {  // priority_queue top: highest score, then leftmost
      return score < o.score || (score == o.score && left > o.left);
    }
  };
  std::priority_queue<Pair> agenda;
  auto maybe_add = [&](ptrdiff_t left, ptrdiff_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    if (l.freeze || r.freeze) return;
    const size_t size = l.size + r.size;
    auto it = index_.find(std::string_view(normalized).substr(l.begin, size));
    if (it == index_.end()) return;
    agenda.push({pieces_[static_cast<size_t>(it->second)].score, left, right, size});
  };
  for (size_t i = 1; i < symbols.size(); ++i)
    maybe_add(static_cast<ptrdiff_t>(i - 1), static_cast<ptrdiff_t>(i));
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[static_cast<size_t>(top.left)];
    Symbol& r = symbols[static_cast<size_t>(top.right)];
    if (l.size == 0 || r.size == 0 || l.size + r.size != top.size) continue;  // stale
    l.size += r.size;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = top.left;
    r.size = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }
  for (ptrdiff_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    const Symbol& s = symbols[static_cast<size_t>(i)];
    const std::string_view piece = std::string_view(normalized).substr(s.begin, s.size);
    if (auto id = find(piece)) {
      out.push_back(*id);
    } else if (byte_fallback_) {
      for (char b : piece) out.push_back(byte_ids_[static_cast<unsigned char>(b)]);
    } else {
      out.push_back(*unk_id_);
    }
  }
}

}  // namespace peft::detail::tok
