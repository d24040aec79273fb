// HF's BPE model (models/bpe/model.rs + word.rs): characters (with continuing_subword_prefix /
// end_of_word_suffix) become symbols, unknown characters fall back to <0xXX> byte tokens or
// unk_token, then the lowest-ranked merge is applied first, ties going left, exactly as HF's
// queue of (rank, position) does. No cache: nothing mutable, so encode is thread-safe.
#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <queue>
#include <unordered_map>

#include "models.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

struct MergeInfo {
  uint32_t rank;
  int64_t new_id;
};

uint64_t pair_key(int64_t a, int64_t b) {
  return static_cast<uint64_t>(a) << 32 | static_cast<uint64_t>(b);
}

class Bpe : public Model {
 public:
  Bpe(Vocab vocab, std::unordered_map<uint64_t, MergeInfo> merges, std::optional<int64_t> unk,
      std::string prefix, std::string suffix, bool fuse_unk, bool byte_fallback, bool ignore_merges)
      : Model(std::move(vocab)),
        merges_(std::move(merges)),
        unk_(unk),
        prefix_(std::move(prefix)),
        suffix_(std::move(suffix)),
        fuse_unk_(fuse_unk),
        byte_fallback_(byte_fallback),
        ignore_merges_(ignore_merges) {
    if (byte_fallback_) {
      for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        byte_ids_[static_cast<size_t>(b)] = vocab_.find(name);
      }
    }
  }

  void tokenize(std::string_view word, std::vector<int64_t>& out) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (auto id = vocab_.find(word)) {
        out.push_back(*id);
        return;
      }
    }
    std::vector<Symbol> symbols = initial_symbols(word);
    merge_all(symbols);
    for (const Symbol& s : symbols) {
      if (s.alive) out.push_back(s.id);
    }
  }

 private:
  struct Symbol {
    int64_t id;
    ptrdiff_t prev, next;
    bool alive;
  };

  std::vector<Symbol> initial_symbols(std::string_view word) const {
    std::vector<Symbol> symbols;
    auto add = [&](int64_t id) {
      const auto n = static_cast<ptrdiff_t>(symbols.size());
      if (n > 0) symbols.back().next = n;
      symbols.push_back({id, n - 1, -1, true});
    };
    std::optional<int64_t> pending_unk;
    std::string piece;
    size_t pos = 0;
    while (pos < word.size()) {
      const size_t begin = pos;
      next_codepoint(word, pos);
      piece.clear();
      if (begin > 0) piece += prefix_;
      piece.append(word.substr(begin, pos - begin));
      if (pos == word.size()) piece += suffix_;
      if (auto id = vocab_.find(piece)) {
        if (pending_unk) add(*pending_unk);
        pending_unk.reset();
        add(*id);
        continue;
      }
      if (byte_fallback_ && add_bytes(piece, add)) continue;
      if (!unk_) continue;  // HF drops the character when there is no unk_token
      if (pending_unk && !fuse_unk_) add(*pending_unk);
      pending_unk = unk_;
    }
    if (pending_unk) add(*pending_unk);
    return symbols;
  }

  // Adds one <0xXX> symbol per byte when all of them are in the vocabulary.
  template <typename Add>
  bool add_bytes(const std::string& piece, Add& add) const {
    for (char b : piece) {
      if (!byte_ids_[static_cast<unsigned char>(b)]) return false;
    }
    for (char b : piece) add(*byte_ids_[static_cast<unsigned char>(b)]);
    return true;
  }

  struct Candidate {
    uint32_t rank;
    size_t pos;
    int64_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };

  const MergeInfo* find_merge(int64_t a, int64_t b) const {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  void merge_all(std::vector<Symbol>& symbols) const {
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      if (const MergeInfo* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
        queue.push({m->rank, i, m->new_id});
      }
    }
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      const auto right_pos = static_cast<size_t>(left.next);
      Symbol& right = symbols[right_pos];
      // Skip entries made stale by earlier merges.
      const MergeInfo* m = find_merge(left.id, right.id);
      if (m == nullptr || m->new_id != top.new_id) continue;
      left.id = top.new_id;
      left.next = right.next;
      right.alive = false;
      if (right.next >= 0)
        symbols[static_cast<size_t>(right.next)].prev = static_cast<ptrdiff_t>(top.pos);
      if (left.prev >= 0) {
        const auto p = static_cast<size_t>(left.prev);
        if (const MergeInfo* pm = find_merge(symbols[p].id, left.id)) {
          queue.push({pm->rank, p, pm->new_id});
        }
      }
      if (left.next >= 0) {
        if (const MergeInfo* nm = find_merge(left.id, symbols[static_cast<size_t>(left.next)].id)) {
          queue.push({nm->rank, top.pos, nm->new_id});
        }
      }
    }
  }

  std::unordered_map<uint64_t, MergeInfo> merges_;
  std::optional<int64_t> unk_;
  std::string prefix_, suffix_;
  bool fuse_unk_, byte_fallback_, ignore_merges_;
  std::array<std::optional<int64_t>, 256> byte_ids_{};
};

// "a b" strings or ["a", "b"] pairs.
std::pair<std::string, std::string> read_merge(const json& m, const Where& where) {
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
      format_error(where, "is \"" + s + "\"; expected two tokens separated by one space");
    }
    return {s.substr(0, space), s.substr(space + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  }
  format_error(where, "is " + m.dump() + "; expected \"a b\" or [\"a\", \"b\"]");
}

}  // namespace

std::unique_ptr<Model> make_bpe(const json& spec, const Where& where) {
  Vocab vocab = read_vocab(spec, where);
  if (spec.contains("dropout") && !spec["dropout"].is_null() && spec["dropout"].get<double>() > 0) {
    unsupported(where / "dropout", "is " + spec["dropout"].dump() +
                                       "; BPE dropout makes tokenization random (expected null or "
                                       "0, as for inference)");
  }
  const std::string prefix = get_string(spec, "continuing_subword_prefix", where, std::string());
  const std::string suffix = get_string(spec, "end_of_word_suffix", where, std::string());
  std::optional<int64_t> unk;
  if (auto unk_token = get_optional_string(spec, "unk_token", where)) {
    unk = vocab.find(*unk_token);
    if (!unk) format_error(where / "unk_token", "\"" + *unk_token + "\" is not in the vocabulary");
  }
  const json& list = field(spec, "merges", where);
  if (!list.is_array())
    format_error(where / "merges", "is " + type_name(list) + "; expected an array");
  std::unordered_map<uint64_t, MergeInfo> merges;
  merges.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w = (where / "merges").at(i);
    const auto [a, b] = read_merge(list[i], w);
    const auto a_id = vocab.find(a), b_id = vocab.find(b);
    const std::string merged = a + b.substr(std::min(prefix.size(), b.size()));
    const auto new_id = vocab.find(merged);
    for (const auto& [tok, id] :
         {std::pair{a, a_id}, std::pair{b, b_id}, std::pair{merged, new_id}}) {
      if (!id) format_error(w, "token \"" + tok + "\" is not in the vocabulary");
    }
    // Like HF, a pair listed twice keeps its last rank.
    merges[pair_key(*a_id, *b_id)] = MergeInfo{static_cast<uint32_t>(i), *new_id};
  }
  return std::make_unique<Bpe>(std::move(vocab), std::move(merges), unk, prefix, suffix,
                               get_bool(spec, "fuse_unk", where, false),
                               get_bool(spec, "byte_fallback", where, false),
                               get_bool(spec, "ignore_merges", where, false));
}

}  // namespace peft::detail::tok
