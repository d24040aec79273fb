// KappaTune (PEFT helpers.py KappaTuneSelector / find_kappa_target_modules): condition numbers of
// Linear weights and fused MoE parameters, and the lowest-kappa selection rules.
#include "peft/kappa.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <unordered_set>

#include "peft/error.h"
#include "peft/lora/layer.h"

namespace peft {
namespace {

const std::vector<std::string> kDefaultMoeSuffixes = {".gate_up_proj", ".down_proj", ".gate_proj",
                                                      ".up_proj"};

bool ends_with_any(const std::string& name, const std::vector<std::string>& suffixes) {
  return std::any_of(suffixes.begin(), suffixes.end(),
                     [&](const std::string& s) { return name.ends_with(s); });
}

// kappa of one matrix exactly as PEFT computes it: fp32 svdvals, S[0] / (S[-1] + 1e-8) in fp32,
// then .item().
double matrix_kappa(const at::Tensor& w, const std::string& name) {
  PEFT_CHECK(w.numel() > 0, ShapeMismatchError, "kappa",
             "\"" << name << "\": empty matrix " << w.sizes() << " has no singular values");
  at::Tensor S;
  try {
    S = at::linalg_svdvals(w);
  } catch (const c10::Error& e) {
    // NaN / inf weights make LAPACK fail; say which tensor (PEFT lets torch's error through).
    throw Error("kappa", "\"" + name + "\": svdvals failed: " + e.what_without_backtrace() +
                             " (hint: does the weight hold NaN or inf?)");
  }
  return (S[0] / (S[-1] + 1e-8)).item<double>();
}

// A tqdm-like counter on stderr: rewritten in place on a terminal, one line at the end otherwise.
class Progress {
 public:
  Progress(bool on, std::string desc, size_t total, const char* unit)
      : on_(on && total > 0),
        tty_(isatty(fileno(stderr)) != 0),
        desc_(std::move(desc)),
        total_(total),
        unit_(unit) {}
  void step(size_t done) const {
    if (on_ && tty_)
      std::cerr << "\r" << desc_ << ": " << done << "/" << total_ << " " << unit_ << std::flush;
  }
  void finish() const {
    if (!on_) return;
    if (!tty_) std::cerr << desc_ << ": " << total_ << "/" << total_ << " " << unit_;
    std::cerr << "\n";
  }

 private:
  bool on_;
  bool tty_;
  std::string desc_;
  size_t total_;
  const char* unit_;
};

}  // namespace

KappaTuneSelector::KappaTuneSelector(torch::nn::Module& model, KappaOptions options) {
  const std::vector<std::string>& suffixes =
      options.moe_param_suffixes.empty() ? kDefaultMoeSuffixes : options.moe_param_suffixes;
  const int64_t max_dim = options.max_dim_size_to_analyze;
  const auto too_big = [max_dim](at::IntArrayRef dims) {
    return std::any_of(dims.begin(), dims.end(), [max_dim](int64_t d) { return d > max_dim; });
  };

  // 1. Linear modules. Divergence from PEFT: PEFT scores every nn.Linear; here the candidates are
  // the adapter-ready Linear layers (a plain torch::nn::Linear cannot receive an adapter in
  // peft.cpp, see docs/architecture.md). On a model that already has adapters PEFT would also score
  // lora_A / lora_B and name the base layer "...base_layer"; here the layer is named as in the base
  // model and adapters are not scored.
  std::vector<std::pair<std::string, at::Tensor>> linears;
  for (auto& [name, layer] : nn::lora_layers(model)) {
    if (layer->kind() == nn::LayerKind::kLinear) linears.emplace_back(name, layer->float_weight());
  }
  Progress linear_progress(options.show_progress, "Computing SVD (linear layers)", linears.size(),
                           "layer");
  for (size_t i = 0; i < linears.size(); ++i) {
    const at::Tensor w = linears[i].second.detach().to(at::kFloat);
    if (!too_big(w.sizes())) {
      scores_.push_back(
          {linears[i].first, matrix_kappa(w.reshape({w.size(0), -1}), linears[i].first), false});
    }
    linear_progress.step(i + 1);
  }
  linear_progress.finish();

  // 2. Fused MoE parameters: 3-D, first dim = expert, kappa = mean over experts. Tied tensors count
  // once, as PyTorch's named_parameters() de-duplicates (LibTorch's does not).
  std::vector<std::pair<std::string, at::Tensor>> moe;
  std::unordered_set<const void*> seen;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (!seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    if (item.value().dim() == 3 && ends_with_any(item.key(), suffixes))
      moe.emplace_back(item.key(), item.value());
  }
  Progress moe_progress(options.show_progress, "Computing SVD (MoE parameters)", moe.size(),
                        "param");
  for (size_t i = 0; i < moe.size(); ++i) {
    const auto& [name, param] = moe[i];
    const at::Tensor w = param.detach().to(at::kFloat);
    if (!too_big(w.sizes().slice(1))) {
      // PEFT divides by the number of experts (ZeroDivisionError for none).
      PEFT_CHECK(w.size(0) > 0, ShapeMismatchError, "kappa",
                 "\"" << name << "\": 3-D parameter with 0 experts");
      double sum = 0.0;  // Python's sum() of floats, left to right
      for (int64_t e = 0; e < w.size(0); ++e)
        sum += matrix_kappa(w[e], name + "[" + std::to_string(e) + "]");
      scores_.push_back({name, sum / static_cast<double>(w.size(0)), true});
    }
    moe_progress.step(i + 1);
  }
  moe_progress.finish();

  // Divergence from PEFT: Python's sorted() with NaN keys gives an order that depends on where the
  // NaN sits; here NaN sorts last. Otherwise the same stable ascending order.
  std::stable_sort(scores_.begin(), scores_.end(), [](const KappaScore& a, const KappaScore& b) {
    if (std::isnan(a.kappa)) return false;
    if (std::isnan(b.kappa)) return true;
    return a.kappa < b.kappa;
  });
}

std::optional<double> KappaTuneSelector::kappa(const std::string& name) const {
  for (const auto& s : scores_) {
    if (s.name == name) return s.kappa;
  }
  return std::nullopt;
}

std::vector<std::string> KappaTuneSelector::select(bool parameters, std::optional<double> top_p,
                                                   std::optional<int> num_modules,
                                                   std::optional<double> threshold) const {
  std::vector<const KappaScore*> sorted;
  for (const auto& s : scores_) {
    if (s.is_parameter == parameters) sorted.push_back(&s);
  }
  std::vector<std::string> out;
  if (sorted.empty()) return out;
  const auto n = static_cast<int64_t>(sorted.size());
  // sorted[:k] with Python's slice semantics (a negative k counts from the end).
  const auto first = [&](int64_t k) {
    const int64_t end = k < 0 ? std::max<int64_t>(0, n + k) : std::min(k, n);
    for (int64_t i = 0; i < end; ++i) out.push_back(sorted[static_cast<size_t>(i)]->name);
    return out;
  };
  if (num_modules) return first(*num_modules);
  if (top_p) {
    const double want = static_cast<double>(n) * *top_p;
    PEFT_CHECK(std::isfinite(want), ConfigError, "kappa",
               "top_p must be a finite number: " << *top_p << " (PEFT: int() of it raises)");
    // max(1, int(want)): int() truncates toward zero; anything >= n takes all (guards the cast's
    // range).
    if (want >= static_cast<double>(n)) return first(n);
    return first(want < 1.0 ? 1 : static_cast<int64_t>(std::trunc(want)));
  }
  for (const KappaScore* s : sorted) {
    if (!threshold || s->kappa <= *threshold) out.push_back(s->name);
  }
  return out;
}

std::vector<std::string> KappaTuneSelector::get_best_targets(
    std::optional<double> top_p, std::optional<int> num_modules,
    std::optional<double> threshold) const {
  return select(false, top_p, num_modules, threshold);
}

std::vector<std::string> KappaTuneSelector::get_best_target_parameters(
    std::optional<double> top_p, std::optional<int> num_modules,
    std::optional<double> threshold) const {
  return select(true, top_p, num_modules, threshold);
}

KappaTargets find_kappa_target_modules(torch::nn::Module& model, double top_p,
                                       KappaOptions options) {
  const KappaTuneSelector selector(model, std::move(options));
  KappaTargets t;
  t.target_modules = selector.get_best_targets(top_p);
  auto params = selector.get_best_target_parameters(top_p);
  if (!params.empty())
    t.target_parameters = std::move(params);  // PEFT: None when there is no MoE parameter
  return t;
}

}  // namespace peft
