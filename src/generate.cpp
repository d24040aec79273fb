// Batched text generation: left padding + attention mask, one prefill, per-token decode through the
// KV cache, transformers' logits processors, greedy or inverse-CDF sampling from a local
// std::mt19937_64.
#include "peft/generate.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "peft/error.h"

namespace peft {
namespace {

void validate(const GenerationConfig& c) {
  PEFT_CHECK(c.max_new_tokens >= 0, ConfigError, "generate",
             "max_new_tokens must be >= 0; got " << c.max_new_tokens);
  PEFT_CHECK(
      c.repetition_penalty > 0 && std::isfinite(c.repetition_penalty), ConfigError, "generate",
      "repetition_penalty has to be a strictly positive float; got " << c.repetition_penalty);
  if (!c.do_sample) return;
  PEFT_CHECK(c.temperature > 0 && std::isfinite(c.temperature), ConfigError, "generate",
             "temperature has to be a strictly positive float; got "
                 << c.temperature << " (hint: use do_sample = false for greedy)");
  PEFT_CHECK(c.top_k >= 0, ConfigError, "generate",
             "top_k has to be >= 0 (0 disables it); got " << c.top_k);
  PEFT_CHECK(c.top_p > 0 && c.top_p <= 1, ConfigError, "generate",
             "top_p has to be in (0, 1]; got " << c.top_p);
}

// First index whose cumulative probability exceeds u * total (inverse CDF); probs: (vocab,) double
// on the CPU.
int64_t sample_index(const at::Tensor& probs, double u) {
  const double* p = probs.data_ptr<double>();
  const int64_t n = probs.numel();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += p[i];
  const double target = u * total;
  double cum = 0;
  int64_t last_positive = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] <= 0) continue;
    cum += p[i];
    last_positive = i;
    if (target < cum) return i;
  }
  return last_positive;  // only reached through rounding at u close to 1
}

// A uniform double in [0, 1) from the top 53 bits (the same on every platform, unlike
// std::uniform_real_distribution whose algorithm the standard leaves open).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

at::Tensor process_logits(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& seen,
                          const GenerationConfig& config) {
  PEFT_CHECK(logits.dim() == 2 && static_cast<size_t>(logits.size(0)) == seen.size(),
             ShapeMismatchError, "generate",
             "logits must be (batch, vocab) with one seen-token list per row; got "
                 << logits.sizes() << " and " << seen.size() << " lists");
  at::Tensor scores = logits.to(at::kFloat).clone();
  const int64_t vocab = scores.size(1);
  if (config.repetition_penalty != 1.0) {
    for (size_t row = 0; row < seen.size(); ++row) {
      if (seen[row].empty()) continue;
      at::Tensor ids =
          at::tensor(seen[row], at::TensorOptions().dtype(at::kLong)).to(scores.device());
      at::Tensor r = scores[static_cast<int64_t>(row)];
      at::Tensor s = r.gather(0, ids);
      s = at::where(s < 0, s * config.repetition_penalty, s / config.repetition_penalty);
      r.scatter_(0, ids, s);
    }
  }
  if (!config.do_sample) return scores;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (config.temperature != 1.0) scores = scores / config.temperature;
  if (config.top_k > 0) {
    const int64_t k = std::min(config.top_k, vocab);
    at::Tensor kth = std::get<0>(scores.topk(k, -1)).narrow(-1, k - 1, 1);
    scores = scores.masked_fill(scores < kth, neg_inf);
  }
  if (config.top_p < 1.0) {
    auto [sorted, order] = scores.sort(-1, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(-1).cumsum(-1);
    at::Tensor remove_sorted = cumulative <= (1 - config.top_p);
    remove_sorted.narrow(-1, vocab - 1, 1).fill_(false);  // keep at least one token
    at::Tensor remove = remove_sorted.scatter(1, order, remove_sorted);
    scores = scores.masked_fill(remove, neg_inf);
  }
  return scores;
}

std::vector<std::vector<int64_t>> generate(
    models::PretrainedModel& model, const std::vector<std::vector<int64_t>>& prompts,
    const GenerationConfig& config, std::function<void(size_t row, int64_t token)> on_token) {
  PEFT_CHECK(model.task() == models::ModelTask::kCausalLm, UnsupportedError, "generate",
             model.class_name() << " is not a causal language model");
  validate(config);
  const auto batch = static_cast<int64_t>(prompts.size());
  const int64_t vocab = model.vocab_size();
  size_t longest = 0;
  for (size_t row = 0; row < prompts.size(); ++row) {
    PEFT_CHECK(!prompts[row].empty(), ShapeMismatchError, "generate",
               "prompt " << row << " is empty (hint: start it with the BOS token)");
    for (int64_t t : prompts[row]) {
      PEFT_CHECK(t >= 0 && t < vocab, ShapeMismatchError, "generate",
                 "prompt " << row << " holds token id " << t << "; the vocabulary has " << vocab
                           << " entries");
    }
    longest = std::max(longest, prompts[row].size());
  }
  for (int64_t t : config.eos_token_ids) {
    PEFT_CHECK(t >= 0 && t < vocab, ConfigError, "generate",
               "eos_token_ids holds " << t << "; the vocabulary has " << vocab << " entries");
  }
  std::vector<std::vector<int64_t>> out(prompts.size());
  if (batch == 0 || config.max_new_tokens == 0) return out;

  const int64_t pad =
      config.pad_token_id.value_or(config.eos_token_ids.empty() ? 0 : config.eos_token_ids.front());
  const auto length = static_cast<int64_t>(longest);
  at::Tensor ids = at::full({batch, length}, pad, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::ones({batch, length}, at::TensorOptions().dtype(at::kLong));
  bool padded = false;
  for (size_t row = 0; row < prompts.size(); ++row) {
    const auto n = static_cast<int64_t>(prompts[row].size());
    const auto r = static_cast<int64_t>(row);
    ids[r]
        .narrow(0, length - n, n)
        .copy_(at::tensor(prompts[row], at::TensorOptions().dtype(at::kLong)));
    if (n < length) {
      mask[r].narrow(0, 0, length - n).fill_(0);
      padded = true;
    }
  }
  const auto params = model.parameters();
  const c10::Device device = params.empty() ? c10::Device(c10::kCPU) : params.front().device();
  ids = ids.to(device);
  mask = mask.to(device);

  torch::NoGradGuard no_grad;
  models::KVCache cache;
  at::Tensor logits =
      model.forward({ids, padded ? mask : at::Tensor(), {}, &cache}).select(1, length - 1);
  std::vector<std::vector<int64_t>> seen = prompts;
  std::vector<bool> done(prompts.size(), false);
  std::mt19937_64 rng(config.seed);
  auto is_stop = [&](int64_t t) {
    return std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), t) !=
           config.eos_token_ids.end();
  };
  for (int64_t step = 0; step < config.max_new_tokens; ++step) {
    at::Tensor scores = process_logits(logits, seen, config);
    at::Tensor choice;  // (batch,) int64 on the CPU (greedy)
    at::Tensor probs;   // (batch, vocab) double on the CPU (sampling)
    if (config.do_sample) {
      probs = scores.softmax(-1).to(at::kCPU, at::kDouble).contiguous();
    } else {
      choice = scores.argmax(-1).to(at::kCPU).contiguous();
    }
    std::vector<int64_t> next(prompts.size(), pad);
    for (size_t row = 0; row < prompts.size(); ++row) {
      if (done[row]) continue;
      const auto r = static_cast<int64_t>(row);
      const int64_t t =
          config.do_sample ? sample_index(probs[r], uniform01(rng)) : choice[r].item<int64_t>();
      next[row] = t;
      out[row].push_back(t);
      seen[row].push_back(t);
      if (on_token) on_token(row, t);
      if (is_stop(t)) done[row] = true;
    }
    if (step + 1 == config.max_new_tokens ||
        std::all_of(done.begin(), done.end(), [](bool d) { return d; }))
      break;
    // Finished rows keep decoding a pad token (as transformers) so the batch keeps its shape; their
    // output is ignored.
    at::Tensor step_ids =
        at::tensor(next, at::TensorOptions().dtype(at::kLong)).to(device).view({batch, 1});
    if (padded) mask = at::cat({mask, at::ones({batch, 1}, mask.options())}, 1);
    logits = model.forward({step_ids, padded ? mask : at::Tensor(), {}, &cache}).select(1, 0);
  }
  return out;
}

}  // namespace peft
