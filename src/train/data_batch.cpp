// Packing, padding (collate) and the per-epoch order of examples.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <random>

#include "peft/error.h"
#include "peft/train/data.h"

namespace peft::train {

std::vector<Example> pack_examples(const std::vector<Example>& examples, int64_t block) {
  PEFT_CHECK(block > 0, ConfigError, "data", "packing needs a block size > 0; got " << block);
  std::vector<Example> out;
  Example cur;
  for (const auto& ex : examples) {
    for (size_t i = 0; i < ex.input_ids.size(); ++i) {
      if (cur.input_ids.empty()) cur.line = ex.line;
      cur.input_ids.push_back(ex.input_ids[i]);
      cur.labels.push_back(ex.labels.empty() ? ex.input_ids[i] : ex.labels[i]);
      if (static_cast<int64_t>(cur.input_ids.size()) == block) {
        out.push_back(std::move(cur));
        cur = Example();
      }
    }
  }
  if (!cur.input_ids.empty()) out.push_back(std::move(cur));
  return out;
}

void check_token_ids(const std::vector<Example>& examples, int64_t vocab_size,
                     const std::string& path) {
  int64_t learned = 0;  // label tokens that enter the loss
  bool causal = false;
  for (const auto& ex : examples) {
    const std::string at = path + ":" + std::to_string(ex.line) + ": ";
    for (const int64_t id : ex.input_ids) {
      if (id < 0 || id >= vocab_size) {
        throw FormatError("data", at + "token id " + std::to_string(id) +
                                      " is outside the model's vocabulary [0, " +
                                      std::to_string(vocab_size) +
                                      ") (hint: data tokenized for another model?)");
      }
    }
    if (ex.label) continue;  // sequence classification
    causal = true;
    for (size_t i = 0; i < ex.labels.size(); ++i) {
      const int64_t id = ex.labels[i];
      if (id == -100) continue;
      if (id < 0 || id >= vocab_size) {
        throw FormatError("data", at + "label " + std::to_string(id) +
                                      " is outside the model's vocabulary [0, " +
                                      std::to_string(vocab_size) +
                                      "); expected a token id or -100 (no loss) (hint: labels "
                                      "tokenized for another model?)");
      }
      if (i > 0) ++learned;  // the loss predicts token i from tokens < i: label 0 never counts
    }
  }
  if (causal && learned == 0 && !examples.empty()) {
    throw FormatError("data", path +
                                  ": no example has a label token to learn (every label after "
                                  "the first is -100), so the loss would be NaN (hint: check the "
                                  "labels / the prompt-completion split)");
  }
}

Batch collate(const std::vector<const Example*>& examples, int64_t pad_id) {
  PEFT_CHECK(!examples.empty(), Error, "data", "cannot collate an empty batch");
  const auto n = static_cast<int64_t>(examples.size());
  int64_t seq = 0;
  bool classification = false, types = false;
  for (const auto* ex : examples) {
    seq = std::max(seq, static_cast<int64_t>(ex->input_ids.size()));
    classification = classification || ex->label.has_value();
    types = types || !ex->token_type_ids.empty();
  }
  std::vector<int64_t> ids(static_cast<size_t>(n * seq), pad_id),
      mask(static_cast<size_t>(n * seq), 0),
      labels(classification ? static_cast<size_t>(n) : static_cast<size_t>(n * seq), -100),
      type_ids(static_cast<size_t>(n * seq), 0);
  Batch b;
  for (int64_t r = 0; r < n; ++r) {
    const Example& ex = *examples[static_cast<size_t>(r)];
    const auto base = static_cast<size_t>(r * seq);
    for (size_t i = 0; i < ex.input_ids.size(); ++i) {
      ids[base + i] = ex.input_ids[i];
      mask[base + i] = 1;
      if (!ex.token_type_ids.empty() && i < ex.token_type_ids.size())
        type_ids[base + i] = ex.token_type_ids[i];
      if (!classification && !ex.labels.empty()) {
        labels[base + i] = ex.labels[i];
        if (i > 0 && ex.labels[i] != -100)
          ++b.num_label_tokens;  // the loss shifts labels left by one
      }
    }
    if (classification) labels[static_cast<size_t>(r)] = ex.label.value_or(-100);
    b.num_tokens += static_cast<int64_t>(ex.input_ids.size());
  }
  if (classification) b.num_label_tokens = n;
  auto to_tensor = [](const std::vector<int64_t>& v, std::vector<int64_t> shape) {
    return torch::tensor(v, torch::kLong).reshape(shape);
  };
  b.input_ids = to_tensor(ids, {n, seq});
  b.attention_mask = to_tensor(mask, {n, seq});
  b.labels = classification ? to_tensor(labels, {n}) : to_tensor(labels, {n, seq});
  if (types) b.token_type_ids = to_tensor(type_ids, {n, seq});
  return b;
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  if (!shuffle) return order;
  // Fisher-Yates with explicit modulo reduction: std::shuffle and uniform_int_distribution are
  // implementation-defined, this is not.
  std::mt19937_64 rng(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

}  // namespace peft::train
