// Pieces of the input between pipeline stages and HF's split behaviours
// (NormalizedString::split): how the parts matched by a pattern are kept, removed or merged.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "unicode.h"

namespace peft::detail::tok {

struct Piece {
  std::string text;
  // Whether the piece starts at offset 0 of the original input (HF: offsets_original().0 == 0);
  // Metaspace's prepend_scheme "first" depends on it.
  bool at_start = false;
  // Set when the piece is an added token: later stages leave it alone.
  std::optional<int64_t> id;
};
using Pieces = std::vector<Piece>;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Consecutive spans [begin, end) covering a string, each flagged as a pattern match or not.
struct Span {
  size_t begin, end;
  bool is_match;
};

// HF Pattern::find_matches for a regex: the matches and the gaps between them.
std::vector<Span> spans_from_matches(size_t size,
                                     const std::vector<std::pair<size_t, size_t>>& matches);
// HF Pattern::find_matches for a character predicate: each matching character is one match.
template <typename Pred>
std::vector<Span> spans_from_predicate(std::string_view s, Pred&& pred);
void invert(std::vector<Span>& spans);

// Cuts `piece` along `spans` as `behavior` says and appends the non-empty parts to `out`.
void split_piece(const Piece& piece, const std::vector<Span>& spans, SplitBehavior behavior,
                 Pieces& out);

// Replaces every piece that is not an added token by the pieces `fn(piece, out)` appends.
template <typename Fn>
void split_each(Pieces& pieces, Fn&& fn) {
  Pieces out;
  out.reserve(pieces.size());
  for (Piece& piece : pieces) {
    if (piece.id) {
      out.push_back(std::move(piece));
      continue;
    }
    const size_t first = out.size();
    fn(piece, out);
    // HF drops empty splits.
    for (size_t i = first; i < out.size();) {
      if (out[i].text.empty() && !out[i].id) {
        out.erase(out.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }
  pieces = std::move(out);
}

template <typename Pred>
std::vector<Span> spans_from_predicate(std::string_view s, Pred&& pred) {
  std::vector<Span> spans;
  if (s.empty()) return {{0, 0, false}};
  size_t last = 0, pos = 0;
  while (pos < s.size()) {
    const size_t begin = pos;
    const char32_t c = next_codepoint(s, pos);
    if (!pred(c)) continue;
    if (last < begin) spans.push_back({last, begin, false});
    spans.push_back({begin, pos, true});
    last = pos;
  }
  if (last < s.size()) spans.push_back({last, s.size(), false});
  return spans;
}

}  // namespace peft::detail::tok
