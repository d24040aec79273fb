// A line-by-line port of the fold in HF's NormalizedString::split, so that every behaviour merges
// exactly the same neighbours (e.g. MergedWithPrevious keeps a second consecutive match apart).
#include "split.h"

#include <algorithm>

namespace peft::detail::tok {

std::vector<Span> spans_from_matches(size_t size,
                                     const std::vector<std::pair<size_t, size_t>>& matches) {
  if (size == 0) return {{0, 0, false}};
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [begin, end] : matches) {
    if (prev != begin) spans.push_back({prev, begin, false});
    spans.push_back({begin, end, true});
    prev = end;
  }
  if (prev != size) spans.push_back({prev, size, false});
  return spans;
}

void invert(std::vector<Span>& spans) {
  for (Span& s : spans) s.is_match = !s.is_match;
}

void split_piece(const Piece& piece, const std::vector<Span>& spans, SplitBehavior behavior,
                 Pieces& out) {
  // (begin, end, remove)
  struct Cut {
    size_t begin, end;
    bool remove;
  };
  std::vector<Cut> cuts;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) cuts.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) cuts.push_back({s.begin, s.end, s.is_match});
      break;
    case SplitBehavior::kContiguous: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.is_match == previous && !cuts.empty()) {
          cuts.back().end = s.end;
        } else {
          cuts.push_back({s.begin, s.end, false});
        }
        previous = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous && !cuts.empty()) {
          cuts.back().end = s.end;
        } else {
          cuts.push_back({s.begin, s.end, false});
        }
        previous = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous && !cuts.empty()) {
          cuts.back().begin = it->begin;
        } else {
          cuts.push_back({it->begin, it->end, false});
        }
        previous = it->is_match;
      }
      std::reverse(cuts.begin(), cuts.end());
      break;
    }
  }
  for (const Cut& c : cuts) {
    if (c.remove || c.begin == c.end) continue;
    out.push_back(Piece{piece.text.substr(c.begin, c.end - c.begin), piece.at_start && c.begin == 0,
                        std::nullopt});
  }
}

}  // namespace peft::detail::tok
