// Training data: JSONL files in the formats TRL's SFTTrainer reads ({"text"},
// {"prompt","completion"},
// {"messages"}), pre-tokenized {"input_ids","labels"} and {"text","label"} for sequence
// classification; packing, padding and the seeded order of examples per epoch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "peft/batch.h"

namespace peft {
class Tokenizer;
}

namespace peft::train {

struct Example {
  std::vector<int64_t> input_ids;
  // Causal LM: one label per input id (-100 = no loss; transformers shifts them inside the loss).
  std::vector<int64_t> labels;
  // Sequence classification: the class index.
  std::optional<int64_t> label;
  std::vector<int64_t> token_type_ids;  // sequence pairs of BERT-style encoders; empty = zeros
  int64_t line = 0;                     // 1-based line in the source file (for error messages)
};

struct DataOptions {
  // Longer examples are truncated to their first max_length tokens (0 = no limit). With packing,
  // the block size.
  int64_t max_length = 0;
  // Without max_length (or packing): an example longer than this many tokens is a FormatError when
  // it is read, instead of a sequence no training step could hold (0 = no check). `peft train`
  // sets the model's max_position_embeddings.
  int64_t max_tokens = 0;
  // Concatenate all examples (labels included) and cut the stream into blocks of max_length tokens.
  bool packing = false;
  // Read {"text","label"} / {"text","text_pair","label"} lines for a sequence classifier.
  bool classification = false;
};

// Reads a JSONL file. Text formats need `tokenizer` (prompt / completion: labels -100 on the
// prompt; messages: rendered with the tokenizer's chat template (ChatML when it has none), loss on
// assistant turns only; text: loss on every token); an EOS id is appended to text / completion when
// the tokenizer has one. Pre-tokenized lines are taken as they are (labels default to input_ids).
// Empty lines are skipped. A malformed line throws FormatError naming the file and line, what was
// found and which formats are accepted.
std::vector<Example> load_jsonl(const std::string& path, const Tokenizer* tokenizer,
                                const DataOptions& options);

// The tokens of one {"messages": [...]} conversation with labels on the assistant turns.
Example tokenize_conversation(const std::vector<std::pair<std::string, std::string>>& messages,
                              const Tokenizer& tokenizer);

// Concatenates examples (ids and labels) and cuts them into blocks of `block` tokens; a shorter
// tail is kept.
std::vector<Example> pack_examples(const std::vector<Example>& examples, int64_t block);

// Throws FormatError naming `path` and the line of the first example with a token id or a label
// outside [0, vocab_size) (a label may be -100), and when no causal-LM example has a label the
// loss can learn from (all masked: the loss would be NaN).
void check_token_ids(const std::vector<Example>& examples, int64_t vocab_size,
                     const std::string& path);

// Pads `examples` into one Batch (peft/batch.h): right padding with pad_id, attention_mask 0 and
// label -100 on padding.
Batch collate(const std::vector<const Example*>& examples, int64_t pad_id);

// The order of example indices for `epoch`: 0..n-1, or a Fisher-Yates shuffle driven by
// std::mt19937_64 seeded with seed + epoch (the same on every platform, so a resumed run sees the
// same order).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

}  // namespace peft::train
