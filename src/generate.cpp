// Batched text generation: left padding + attention mask, one prefill (optionally after a cached
// prefix), per-token decode through the KV cache, transformers' logits processors, greedy or
// inverse-CDF sampling from a local std::mt19937_64, aLoRA offsets kept for the whole call.
#include "peft/generate.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>

#include "peft/error.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/layer.h"
#include "peft/lora/mixed_batch.h"

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

namespace {

void check_causal_lm(models::PretrainedModel& model) {
  PEFT_CHECK(model.task() == models::ModelTask::kCausalLm, UnsupportedError, "generate",
             model.class_name() << " is not a causal language model");
}

// Every row holds at least one token, each in the vocabulary.
void check_rows(const std::vector<std::vector<int64_t>>& rows, int64_t vocab, const char* what) {
  for (size_t row = 0; row < rows.size(); ++row) {
    PEFT_CHECK(!rows[row].empty(), ShapeMismatchError, "generate",
               what << " " << row << " is empty (hint: start it with the BOS token)");
    for (int64_t t : rows[row]) {
      PEFT_CHECK(t >= 0 && t < vocab, ShapeMismatchError, "generate",
                 what << " " << row << " holds token id " << t << "; the vocabulary has " << vocab
                      << " entries");
    }
  }
}

std::string ids_text(const std::vector<int64_t>& ids) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < ids.size(); ++i) os << (i ? ", " : "") << ids[i];
  os << "]";
  return os.str();
}

c10::Device model_device(models::PretrainedModel& model) {
  const auto params = model.parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

// `rows` left-padded with `pad` to the longest: ids (batch, longest) int64 and the 1 / 0 attention
// mask, undefined when no row is padded. On the CPU.
std::pair<at::Tensor, at::Tensor> left_pad(const std::vector<std::vector<int64_t>>& rows,
                                           int64_t pad) {
  size_t longest = 0;
  for (const auto& r : rows) longest = std::max(longest, r.size());
  const auto batch = static_cast<int64_t>(rows.size());
  const auto length = static_cast<int64_t>(longest);
  const auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor ids = at::full({batch, length}, pad, opts);
  at::Tensor mask = at::ones({batch, length}, opts);
  bool padded = false;
  for (size_t row = 0; row < rows.size(); ++row) {
    const auto n = static_cast<int64_t>(rows[row].size());
    const auto r = static_cast<int64_t>(row);
    ids[r].narrow(0, length - n, n).copy_(at::tensor(rows[row], opts));
    if (n < length) {
      mask[r].narrow(0, 0, length - n).fill_(0);
      padded = true;
    }
  }
  return {ids, padded ? mask : at::Tensor()};
}

struct ActiveAlora {
  std::string adapter;
  std::vector<int64_t> tokens;
};

// The aLoRA adapter active in the model's enabled, unmerged LoRA layers (PEFT's
// is_alora_relevant_in_batch), if any.
std::optional<ActiveAlora> active_alora(models::PretrainedModel& model) {
  std::optional<ActiveAlora> found;
  for (const auto& [name, layer] : nn::lora_layers(model)) {
    if (!layer->adapters_enabled() || layer->merged()) continue;
    for (const auto& a : layer->active_adapters()) {
      if (!layer->has_adapter(a)) continue;
      const auto& tokens = layer->adapter_settings(a).alora_invocation_tokens;
      if (!tokens) continue;
      if (!found) {
        found = ActiveAlora{a, *tokens};
        continue;
      }
      // Divergence from PEFT: PEFT takes the offsets from the first active adapter's config alone;
      // the forward context carries one offset per row, so differing sequences are refused instead.
      PEFT_CHECK(*tokens == found->tokens, UnsupportedError, "generate",
                 "active aLoRA adapters \""
                     << found->adapter << "\" and \"" << a
                     << "\" have different invocation sequences " << ids_text(found->tokens)
                     << " and " << ids_text(*tokens) << " (layer " << name
                     << "); expected one (hint: activate one aLoRA adapter at a time)");
    }
  }
  return found;
}

// PEFT's calculate_alora_offsets over each prompt. A prompt's offset is counted from its end, so
// the left padding of a batch does not change it.
std::vector<std::optional<int64_t>> alora_offsets(const std::vector<std::vector<int64_t>>& prompts,
                                                  const ActiveAlora& alora) {
  std::vector<std::optional<int64_t>> offsets;
  std::vector<size_t> missing;
  for (size_t row = 0; row < prompts.size(); ++row) {
    const auto n = static_cast<int64_t>(prompts[row].size());
    at::Tensor ids = at::tensor(prompts[row], at::TensorOptions().dtype(at::kLong)).view({1, n});
    offsets.push_back(nn::calculate_alora_offsets(ids, alora.tokens).front());
    if (!offsets.back()) missing.push_back(row);
  }
  // Divergence from PEFT: PEFT runs a row without the invocation sequence silently as the base
  // model (offset None); here that is an error, since the adapter would not act at all.
  if (!missing.empty()) {
    std::ostringstream rows;
    for (size_t i = 0; i < missing.size(); ++i) {
      rows << (i ? ", " : "") << missing[i] << " (" << prompts[missing[i]].size() << " tokens)";
    }
    throw ConfigError(
        "generate", "prompt" + std::string(missing.size() > 1 ? "s " : " ") + rows.str() + " lack" +
                        (missing.size() > 1 ? "" : "s") + " the invocation sequence " +
                        ids_text(alora.tokens) + " of aLoRA adapter \"" + alora.adapter +
                        "\"; expected it in every prompt, the adapter acts from its "
                        "last occurrence on (hint: append the invocation string to the "
                        "prompt; it must tokenize to these ids there)");
  }
  return offsets;
}

std::vector<std::vector<int64_t>> run(models::PretrainedModel& model, const PrefixCache* prefix,
                                      const std::vector<std::vector<int64_t>>& prompts,
                                      const GenerationConfig& config,
                                      const std::function<void(size_t, int64_t)>& on_token) {
  check_causal_lm(model);
  validate(config);
  const auto batch = static_cast<int64_t>(prompts.size());
  const int64_t vocab = model.vocab_size();
  check_rows(prompts, vocab, "prompt");
  for (int64_t t : config.eos_token_ids) {
    PEFT_CHECK(t >= 0 && t < vocab, ConfigError, "generate",
               "eos_token_ids holds " << t << "; the vocabulary has " << vocab << " entries");
  }
  // What the prefill runs: the prompts, or what follows their cached prefixes.
  std::vector<std::vector<int64_t>> rest = prompts;
  if (prefix) {
    PEFT_CHECK(prefix->tokens.size() == prompts.size(), ShapeMismatchError, "generate",
               "the prefix cache holds " << prefix->tokens.size()
                                         << " rows; expected one per prompt (" << prompts.size()
                                         << ")");
    check_rows(prefix->tokens, vocab, "prefix");
    size_t longest = 0;
    for (size_t row = 0; row < prompts.size(); ++row) {
      const auto& p = prefix->tokens[row];
      PEFT_CHECK(
          prompts[row].size() > p.size() && std::equal(p.begin(), p.end(), prompts[row].begin()),
          ShapeMismatchError, "generate",
          "prompt " << row << " (" << prompts[row].size()
                    << " tokens) does not extend its cached prefix (" << p.size()
                    << " tokens); expected the prefix followed by at least one token (hint: "
                       "leave the last prompt token out of the prefix)");
      rest[row].erase(rest[row].begin(), rest[row].begin() + static_cast<std::ptrdiff_t>(p.size()));
      longest = std::max(longest, p.size());
    }
    const int64_t cached = prefix->length();
    const bool cache_ok =
        batch == 0 || (cached == static_cast<int64_t>(longest) && !prefix->cache.keys.empty() &&
                       prefix->cache.keys.front().size(0) == batch &&
                       (!prefix->attention_mask.defined() ||
                        prefix->attention_mask.sizes() == at::IntArrayRef{batch, cached}));
    PEFT_CHECK(cache_ok, ShapeMismatchError, "generate",
               "the prefix cache holds " << cached << " positions; its token rows need " << longest
                                         << " for a batch of " << batch
                                         << " (hint: build it with prefill())");
  }
  // Mixed batch: one adapter per prompt, for every forward of this call.
  std::optional<nn::MixedBatchGuard> mixed_guard;
  if (!config.adapter_names.empty()) {
    PEFT_CHECK(config.adapter_names.size() == prompts.size(), ShapeMismatchError, "generate",
               "adapter_names has "
                   << config.adapter_names.size() << " entries for " << prompts.size()
                   << " prompts; expected one adapter name (or \"__base__\") per prompt");
    mixed_guard.emplace(model, config.adapter_names);
  }
  // aLoRA: offsets from the whole prompts, kept for every forward of this call (decode steps too).
  std::optional<nn::ForwardContextGuard> alora_guard;
  if (!nn::current_forward_context().alora_offsets) {
    if (auto alora = active_alora(model)) {
      nn::ForwardContext context = nn::current_forward_context();
      context.alora_offsets = alora_offsets(prompts, *alora);
      alora_guard.emplace(std::move(context));
    }
  }
  std::vector<std::vector<int64_t>> out(prompts.size());
  if (batch == 0 || config.max_new_tokens == 0) return out;

  const int64_t pad =
      config.pad_token_id.value_or(config.eos_token_ids.empty() ? 0 : config.eos_token_ids.front());
  auto [ids, mask] = left_pad(rest, pad);
  const int64_t length = ids.size(1);
  if (prefix && (mask.defined() || prefix->attention_mask.defined())) {
    // Padding may now sit between a row's prefix and its rest: positions count attended tokens.
    const auto opts = at::TensorOptions().dtype(at::kLong);
    at::Tensor head = prefix->attention_mask.defined()
                          ? prefix->attention_mask.to(at::kCPU, at::kLong)
                          : at::ones({batch, prefix->length()}, opts);
    mask = at::cat({head, mask.defined() ? mask : at::ones({batch, length}, opts)}, 1);
  }
  const bool padded = mask.defined();
  const c10::Device device = model_device(model);
  ids = ids.to(device);
  if (padded) mask = mask.to(device);

  torch::NoGradGuard no_grad;
  models::KVCache cache = prefix ? prefix->cache : models::KVCache{};  // the prefix stays untouched
  at::Tensor logits = model.forward({ids, mask, {}, &cache}).select(1, length - 1);
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
    logits = model.forward({step_ids, mask, {}, &cache}).select(1, 0);
  }
  return out;
}

}  // namespace

PrefixCache prefill(models::PretrainedModel& model,
                    const std::vector<std::vector<int64_t>>& prefixes) {
  check_causal_lm(model);
  check_rows(prefixes, model.vocab_size(), "prefix");
  PrefixCache out;
  out.tokens = prefixes;
  if (prefixes.empty()) return out;
  auto [ids, mask] = left_pad(prefixes, 0);  // padding is masked out: any id does
  const c10::Device device = model_device(model);
  ids = ids.to(device);
  if (mask.defined()) mask = mask.to(device);
  torch::NoGradGuard no_grad;
  model.forward({ids, mask, {}, &out.cache});
  out.attention_mask = mask;
  return out;
}

std::vector<std::vector<int64_t>> generate(
    models::PretrainedModel& model, const std::vector<std::vector<int64_t>>& prompts,
    const GenerationConfig& config, std::function<void(size_t row, int64_t token)> on_token) {
  return run(model, nullptr, prompts, config, on_token);
}

std::vector<std::vector<int64_t>> generate(
    models::PretrainedModel& model, const PrefixCache& prefix,
    const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
    std::function<void(size_t row, int64_t token)> on_token) {
  return run(model, &prefix, prompts, config, on_token);
}

}  // namespace peft
