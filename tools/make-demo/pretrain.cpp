// Pretraining of the demo base model from scratch: every parameter, AdamW, transformers' causal-LM
// loss on packed chunks of the corpus (each chunk starts at a document's BOS and runs on through
// the following documents), linear warmup then cosine decay to a tenth of the peak rate.
#include <ATen/ATen.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "make_demo.h"
#include "peft/models/model.h"
#include "peft/tokenizer.h"
#include "peft/train/loss.h"

namespace make_demo {
namespace {

// The token stream of documents, each as BOS text EOS, and where every document starts.
struct Stream {
  std::vector<int64_t> ids;
  std::vector<size_t> starts;  // documents with at least seq_len tokens after their start
};

Stream tokenize(const peft::Tokenizer& tok, const std::vector<std::string>& docs, int64_t seq_len) {
  Stream s;
  std::vector<size_t> all_starts;
  for (const auto& d : docs) {
    all_starts.push_back(s.ids.size());
    const auto ids = tok.encode(d, true);  // BOS + text
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.ids.push_back(*tok.eos_token_id());
  }
  for (size_t st : all_starts) {
    if (st + static_cast<size_t>(seq_len) <= s.ids.size()) s.starts.push_back(st);
  }
  if (s.starts.empty()) throw std::runtime_error("pretrain: corpus shorter than one chunk");
  return s;
}

at::Tensor batch_at(const Stream& s, const std::vector<size_t>& starts, int64_t seq_len) {
  at::Tensor out = at::empty({static_cast<int64_t>(starts.size()), seq_len}, at::kLong);
  auto acc = out.accessor<int64_t, 2>();
  for (size_t b = 0; b < starts.size(); ++b) {
    for (int64_t t = 0; t < seq_len; ++t)
      acc[static_cast<int64_t>(b)][t] = s.ids[starts[b] + static_cast<size_t>(t)];
  }
  return out;
}

double lm_loss(peft::models::PretrainedModel& model, const at::Tensor& ids) {
  return peft::train::causal_lm_loss(model.forward({.input_ids = ids}), ids).item<double>();
}

// Mean loss over fixed chunks of the held-out documents.
double eval_loss(peft::models::PretrainedModel& model, const Stream& s, int64_t batch,
                 int64_t seq_len) {
  torch::NoGradGuard no_grad;
  const size_t n = std::min<size_t>(s.starts.size(), 64);
  double total = 0;
  size_t batches = 0;
  for (size_t i = 0; i < n; i += static_cast<size_t>(batch)) {
    std::vector<size_t> st(s.starts.begin() + static_cast<std::ptrdiff_t>(i),
                           s.starts.begin() + static_cast<std::ptrdiff_t>(
                                                  std::min(n, i + static_cast<size_t>(batch))));
    total += lm_loss(model, batch_at(s, st, seq_len));
    ++batches;
  }
  return total / static_cast<double>(batches);
}

// transformers' LlamaPreTrainedModel._init_weights (normal(0, initializer_range), norms 1), with
// GPT-2's 1/sqrt(2 * layers) on the projections that write into the residual stream.
void init_weights(peft::models::PretrainedModel& model) {
  torch::NoGradGuard no_grad;
  const double residual = 0.02 / std::sqrt(2.0 * static_cast<double>(model.num_hidden_layers()));
  for (auto& p : model.named_parameters()) {
    const std::string& name = p.key();
    if (p.value().dim() == 1) {
      p.value().fill_(1.0);
    } else if (name.find("o_proj") != std::string::npos ||
               name.find("down_proj") != std::string::npos) {
      p.value().normal_(0.0, residual);
    } else {
      p.value().normal_(0.0, 0.02);
    }
  }
}

// torch::nn::utils::clip_grad_norm_ (its header does not compile on its own in LibTorch 1.13).
void clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  double total = 0;
  for (const auto& p : params) {
    if (p.grad().defined()) total += p.grad().pow(2).sum().item<double>();
  }
  const double scale = max_norm / (std::sqrt(total) + 1e-6);
  if (scale >= 1.0) return;
  for (const auto& p : params) {
    if (p.grad().defined()) p.grad().mul_(scale);
  }
}

}  // namespace

std::pair<size_t, size_t> probe_facts(peft::models::PretrainedModel& model,
                                      const peft::Tokenizer& tok) {
  torch::NoGradGuard no_grad;
  size_t known = 0, total = 0;
  for (const auto& a : animals()) {
    for (Relation r : kRelations) {
      // The value's tokens only: the final "." competes with " and" / " but" (compare documents).
      std::string sentence = fact_sentence(a, r);
      sentence.pop_back();
      const auto prefix = tok.encode(fact_prefix(a, r), true);
      const auto full = tok.encode(sentence, true);
      if (full.size() <= prefix.size() || !std::equal(prefix.begin(), prefix.end(), full.begin()))
        throw std::logic_error("probe: prefix tokens differ for " + fact_sentence(a, r));
      at::Tensor ids = at::tensor(full, at::kLong).unsqueeze(0);
      at::Tensor predicted = model.forward({.input_ids = ids}).argmax(-1)[0];
      bool ok = true;
      for (size_t t = prefix.size(); t < full.size(); ++t)
        ok = ok && predicted[static_cast<int64_t>(t) - 1].item<int64_t>() == full[t];
      known += ok;
      ++total;
    }
  }
  return {known, total};
}

PretrainReport pretrain(peft::models::PretrainedModel& model, const peft::Tokenizer& tok,
                        const std::vector<std::string>& train_docs,
                        const std::vector<std::string>& eval_docs, const PretrainOptions& opt) {
  at::manual_seed(opt.seed);
  init_weights(model);
  const Stream train = tokenize(tok, train_docs, opt.seq_len);
  const Stream eval = tokenize(tok, eval_docs, opt.seq_len);
  std::printf(
      "pretrain: %zu train tokens (%zu documents), %zu eval tokens; %lld steps x %lld x %lld\n",
      train.ids.size(), train_docs.size(), eval.ids.size(), static_cast<long long>(opt.steps),
      static_cast<long long>(opt.batch_size), static_cast<long long>(opt.seq_len));

  PretrainReport report;
  report.eval_loss_start = eval_loss(model, eval, opt.batch_size, opt.seq_len);
  std::printf("pretrain: eval loss at start %.4f\n", report.eval_loss_start);
  std::fflush(stdout);

  std::vector<at::Tensor> params;
  for (auto& p : model.parameters()) params.push_back(p);
  torch::optim::AdamW optimizer(
      params, torch::optim::AdamWOptions(opt.lr).betas({0.9, 0.95}).weight_decay(0.01));
  Rng rng(opt.seed ^ 0x5EEDULL);
  const auto t0 = std::chrono::steady_clock::now();
  double window = 0;
  int64_t in_window = 0;
  std::vector<double> last;
  for (int64_t step = 1; step <= opt.steps; ++step) {
    double lr = opt.lr;
    if (step <= opt.warmup) {
      lr = opt.lr * static_cast<double>(step) / static_cast<double>(opt.warmup);
    } else {
      const double progress = static_cast<double>(step - opt.warmup) /
                              static_cast<double>(std::max<int64_t>(1, opt.steps - opt.warmup));
      lr = opt.lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * progress)));
    }
    for (auto& group : optimizer.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);

    std::vector<size_t> starts;
    for (int64_t b = 0; b < opt.batch_size; ++b) starts.push_back(rng.pick(train.starts));
    const at::Tensor ids = batch_at(train, starts, opt.seq_len);
    optimizer.zero_grad();
    at::Tensor loss = peft::train::causal_lm_loss(model.forward({.input_ids = ids}), ids);
    loss.backward();
    clip_grad_norm(params, 1.0);
    optimizer.step();

    const double l = loss.item<double>();
    window += l;
    ++in_window;
    last.push_back(l);
    if (step % 50 == 0 || step == opt.steps) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("pretrain: step %5lld  loss %.4f  lr %.2e  %.1f s  (%.2f steps/s)\n",
                  static_cast<long long>(step), window / static_cast<double>(in_window), lr, secs,
                  static_cast<double>(step) / secs);
      window = 0;
      in_window = 0;
    }
    if (step % 250 == 0 && step < opt.steps) {
      const auto [known, total] = probe_facts(model, tok);
      std::printf("pretrain: step %5lld  eval loss %.4f  facts %zu/%zu\n",
                  static_cast<long long>(step), eval_loss(model, eval, opt.batch_size, opt.seq_len),
                  known, total);
    }
    std::fflush(stdout);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t tail = std::min<size_t>(50, last.size());
  for (size_t i = last.size() - tail; i < last.size(); ++i) report.train_loss += last[i];
  report.train_loss /= static_cast<double>(std::max<size_t>(tail, 1));
  report.eval_loss = eval_loss(model, eval, opt.batch_size, opt.seq_len);
  std::tie(report.facts_known, report.facts_total) = probe_facts(model, tok);
  std::printf("pretrain: done in %.0f s; train loss %.4f, eval loss %.4f, facts %zu/%zu\n",
              report.seconds, report.train_loss, report.eval_loss, report.facts_known,
              report.facts_total);
  return report;
}

}  // namespace make_demo
