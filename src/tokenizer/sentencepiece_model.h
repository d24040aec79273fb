// SentencePiece tokenizer.model files, read and run without libsentencepiece: Debian's
// libsentencepiece embeds protobuf 3.14, which cannot share a process with LibTorch's
// libprotobuf 3.21 (measured: a segfault at load, or protobuf's version check aborting).
// Supported: BPE models with the identity normalizer (Llama, Mistral, Gemma); Unigram models,
// normalization rules (precompiled charsmaps) and UNUSED pieces throw UnsupportedError.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "models.h"

namespace peft::detail::tok {

class SentencePieceModel {
 public:
  enum class PieceType {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6
  };
  struct Piece {
    std::string text;
    float score = 0;
    PieceType type = PieceType::kNormal;
  };

  // Parses the ModelProto in `bytes`; `file` names it in errors.
  SentencePieceModel(std::string_view bytes, const std::string& file);

  // Ids of `text` (normalized, BPE-merged, byte fallback), as SentencePieceProcessor::Encode.
  void encode(std::string_view text, std::vector<int64_t>& out) const;

  const std::vector<Piece>& pieces() const { return pieces_; }
  std::optional<int64_t> find(std::string_view piece) const;  // any piece type
  std::optional<int64_t> unk_id() const { return unk_id_; }
  // A CONTROL piece named by the trainer spec (<s>, </s>, <pad> by default), if present.
  std::optional<int64_t> bos_id() const { return bos_id_; }
  std::optional<int64_t> eos_id() const { return eos_id_; }
  std::optional<int64_t> pad_id() const { return pad_id_; }
  bool add_dummy_prefix() const { return add_dummy_prefix_; }
  // The byte a <0xXX> piece stands for, or -1.
  int byte_of(int64_t id) const;

 private:
  std::string normalize(std::string_view text) const;

  std::vector<Piece> pieces_;
  TokenMap index_;     // NORMAL, USER_DEFINED and UNUSED pieces (SentencePiece's pieces_)
  TokenMap reserved_;  // CONTROL, UNKNOWN and BYTE pieces
  std::vector<std::string> user_defined_;  // matched whole, longest first
  std::vector<int64_t> byte_ids_;          // 256 entries when byte_fallback
  std::optional<int64_t> unk_id_, bos_id_, eos_id_, pad_id_;
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true, remove_extra_whitespaces_ = true, escape_whitespaces_ = true;
  bool whitespace_as_suffix_ = false;
};

}  // namespace peft::detail::tok
