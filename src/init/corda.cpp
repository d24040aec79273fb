// CorDA preprocessing (PEFT src/peft/tuners/lora/corda.py): covariance collection through input
// observers, the damped inverse, the SVD of W·C and the IPM / KPM crop, with safetensors caches.
#include "peft/init/corda.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../strings.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"
#include "peft/targeting.h"

namespace peft {
namespace {

constexpr const char* kComponent = "corda";
// PEFT doubles the damping until the inverse is accurate and never gives up; 0.01 * 2^60 already
// dwarfs any covariance, so a covariance that still fails is broken (NaN, ...) and looping on would
// hang.
constexpr int kMaxDampingDoublings = 60;

using Layer = std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>;

// PEFT's target_modules(): the targeted layers that are Linear. Divergence from PEFT: GPT-2 Conv1D
// layers are included too (PEFT's isinstance(nn.Linear) skips them, and its corda_init then fails
// on them); the decomposition is computed for the (out, in) matrix, which is what the layer-side
// init expects.
std::vector<Layer> corda_targets(torch::nn::Module& model, const LoraConfig& config) {
  std::vector<Layer> out;
  for (auto& entry : find_target_layers(model, config)) {
    if (entry.second->is_linear()) out.push_back(std::move(entry));
  }
  return out;
}

bool file_has_data(const std::optional<std::string>& path) {
  if (!path || path->empty()) return false;
  std::error_code ec;
  const auto size = std::filesystem::file_size(*path, ec);
  return !ec && size > 0;
}

void make_parent_dirs(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
}

// The base weight as an (out, in) float32 matrix (GPT-2 Conv1D stores (in, out)).
at::Tensor weight_out_in(const nn::LoraLayerImpl& layer) {
  at::Tensor w = layer.weight().detach().to(at::kFloat);
  return layer.kind() == nn::LayerKind::kConv1D ? w.t() : w;
}

// Restores every module's training flag (train() recurses, so restoring in pre-order leaves each
// module with its own earlier flag) and removes the observers, on every path out, exceptions
// included.
class CalibrationGuard {
 public:
  CalibrationGuard(torch::nn::Module& model, std::vector<Layer> layers)
      : model_(model), layers_(std::move(layers)) {
    root_training_ = model_.is_training();
    for (const auto& item : model_.named_modules("", /*include_self=*/false)) {
      flags_.emplace_back(item.value(), item.value()->is_training());
    }
  }
  ~CalibrationGuard() {
    for (auto& [name, layer] : layers_) layer->set_input_observer({});
    model_.train(root_training_);
    for (auto& [module, flag] : flags_) module->train(flag);
  }
  CalibrationGuard(const CalibrationGuard&) = delete;
  CalibrationGuard& operator=(const CalibrationGuard&) = delete;

 private:
  torch::nn::Module& model_;
  std::vector<Layer> layers_;
  bool root_training_ = false;
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> flags_;
};

// Running sum of one layer's x^T x; forward may run on several threads, hence the mutex.
struct CovarianceSum {
  std::mutex mu;
  at::Tensor sum;
  int64_t count = 0;
};

void observe_input(CovarianceSum& acc, const std::string& name, const at::Tensor& input,
                   bool keep_dtype) {
  // Divergence from PEFT: PEFT squeezes dim 0 and so only handles batch size 1 (a larger batch
  // would make x^T x contract over the batch). Flattening every leading dim into rows is identical
  // for batch 1 and gives the token covariance for any batch.
  at::Tensor x = input.detach().reshape({-1, input.size(-1)});
  // use_float16_for_covariance only skips PEFT's .float(): the inputs keep the model's dtype.
  if (!keep_dtype) x = x.to(at::kFloat);
  // PEFT divides by torch.max(input).abs() — the largest value's magnitude, not the largest
  // magnitude.
  x = x / at::max(x).abs();
  PEFT_CHECK(at::isfinite(x).all().item<bool>(), Error, kComponent,
             "layer \"" << name
                        << "\": invalid value (NaN or Inf) found in its input after dividing by "
                           "|max(input)|; please check your input data (hint: an input whose "
                           "maximum is 0, e.g. all "
                           "zeros, divides by zero)");
  at::Tensor cov = at::matmul(x.t(), x);
  PEFT_CHECK(
      at::isfinite(cov).all().item<bool>(), Error, kComponent,
      "layer \"" << name
                 << "\": invalid value (NaN or Inf) found in the input covariance (hint: set "
                    "use_float16_for_covariance = false if the half-precision sum overflows)");
  std::lock_guard<std::mutex> lock(acc.mu);
  if (acc.sum.defined()) {
    acc.sum.add_(cov);
  } else {
    acc.sum = std::move(cov);
  }
  ++acc.count;
}

// PEFT calib_cov_distribution: per-layer mean of x^T x over the observed forward calls, or the
// covariance file.
std::map<std::string, at::Tensor> collect_covariance(torch::nn::Module& model,
                                                     const std::vector<Layer>& layers,
                                                     const CordaConfig& cc,
                                                     const std::function<void()>& run_model) {
  std::map<std::string, at::Tensor> cov;
  if (file_has_data(cc.covariance_file)) {
    io::SafetensorsFile file(*cc.covariance_file);
    std::vector<std::string> problems;
    for (const auto& [name, layer] : layers) {
      const int64_t in = layer->in_features();
      if (!file.contains(name)) {
        problems.push_back("\"" + name + "\" is missing");
        continue;
      }
      at::Tensor c = file.get(name);
      if (c.dim() != 2 || c.size(0) != in || c.size(1) != in) {
        problems.push_back("\"" + name + "\" has shape " + detail::shape_string(c.sizes()) +
                           ", expected (" + std::to_string(in) + ", " + std::to_string(in) + ")");
        continue;
      }
      cov[name] = c.to(layer->weight().device());
    }
    PEFT_CHECK(problems.empty(), FormatError, kComponent,
               "covariance file \""
                   << *cc.covariance_file
                   << "\" does not fit the targeted layers: " << detail::join(problems)
                   << " (hint: it was written for another model or config; delete it to "
                      "recompute the covariance)");
    return cov;
  }
  PEFT_CHECK(static_cast<bool>(run_model), ConfigError, kComponent,
             "run_model must be specified when covariance file and cache file aren't built (hint: "
             "pass a callback "
             "that runs the model's forward on calibration data, or set corda_config.cache_file / "
             "covariance_file "
             "to existing files)");

  std::map<std::string, std::shared_ptr<CovarianceSum>> sums;
  {
    CalibrationGuard guard(model, layers);
    const bool keep_dtype = cc.use_float16_for_covariance;
    for (const auto& [name, layer] : layers) {
      auto acc = std::make_shared<CovarianceSum>();
      sums[name] = acc;
      layer->set_input_observer([acc, name = name, keep_dtype](const at::Tensor& input) {
        observe_input(*acc, name, input, keep_dtype);
      });
    }
    model.eval();
    torch::NoGradGuard no_grad;
    run_model();
  }

  std::vector<std::string> unused;
  for (const auto& [name, layer] : layers) {
    auto& acc = *sums.at(name);
    if (acc.count == 0) {
      unused.push_back(name);
      continue;
    }
    cov[name] = acc.sum / static_cast<double>(acc.count);
  }
  PEFT_CHECK(unused.empty(), Error, kComponent,
             "no input reached the targeted layer(s) "
                 << detail::join(unused, ", ", "\"")
                 << " while run_model ran (hint: run_model must call the "
                    "model's forward, and every targeted layer must be used "
                    "by it; otherwise exclude those layers)");
  if (cc.covariance_file && !cc.covariance_file->empty()) {
    // Divergence from PEFT: PEFT pickles {layer name: covariance}; this writes safetensors with the
    // same keys.
    make_parent_dirs(*cc.covariance_file);
    io::save_safetensors(*cc.covariance_file, cov);
  }
  return cov;
}

struct Eigens {
  at::Tensor U, S, V;  // (out, r), (r,), (in, r)
};

// PEFT collect_eigens_for_layer + crop_corda_eigens.
Eigens decompose(const std::string& name, const nn::LoraLayerImpl& layer,
                 const at::Tensor& covariance, int r, CordaMethod method, bool verbose) {
  at::Tensor W = weight_out_in(layer);  // (out, in)
  const int64_t in = W.size(1);
  at::Tensor C = covariance.to(W.device(), at::kFloat);
  const double mean_diag = C.diagonal().mean().item<double>();
  PEFT_CHECK(
      std::isfinite(mean_diag) && mean_diag > 0, Error, kComponent,
      "layer \""
          << name << "\": the covariance has mean diagonal " << mean_diag
          << "; expected a positive finite value (hint: the calibration inputs are degenerate)");
  at::Tensor eye = at::eye(in, C.options());
  double damp = 0.01;
  at::Tensor Cf, inv;
  for (int attempt = 0;; ++attempt) {
    PEFT_CHECK(
        attempt < kMaxDampingDoublings, Error, kComponent,
        "layer \"" << name
                   << "\": the damped covariance could not be inverted accurately even with damp = "
                   << damp << " (hint: check the calibration data for extreme values)");
    Cf = C + eye * (mean_diag * damp);
    bool ok = true;
    try {
      inv = at::linalg_inv(Cf);
    } catch (const c10::Error&) {
      ok = false;  // singular: more damping makes it invertible
    }
    // torch.dist: Frobenius norm of the difference.
    if (ok && at::dist(at::matmul(Cf, inv), eye).item<double>() < 0.05) break;
    damp *= 2;
  }
  auto [U, S, Vh] = at::linalg_svd(at::matmul(W, Cf), /*full_matrices=*/false);
  at::Tensor V = at::matmul(Vh, inv).t();  // (in, min)
  const int64_t k = S.size(0);
  const int64_t start = method == CordaMethod::kIpm ? 0 : k - r;  // ipm: largest r; kpm: smallest r
  Eigens e;
  // clone: the crops must not keep the full min(in, out) matrices alive (or be saved with them).
  e.U = U.slice(1, start, start + r).clone(at::MemoryFormat::Contiguous);
  e.S = S.slice(0, start, start + r).clone(at::MemoryFormat::Contiguous);
  e.V = V.slice(1, start, start + r).clone(at::MemoryFormat::Contiguous);
  if (verbose)
    std::cerr << "[corda] " << name << ": damp " << damp << ", kept " << r << " of " << k << "\n";
  return e;
}

// PEFT's cache keys (torch.save of a dict), so a PEFT cache converted key-for-key to safetensors
// loads here.
std::string cache_key(const std::string& name, const char* part) {
  return name + ".eigens." + part + "_WC";
}

void load_cache(const std::string& path, const std::vector<Layer>& layers,
                const LoraConfig& config) {
  io::SafetensorsFile file(path);
  std::vector<std::string> problems;
  std::vector<std::pair<std::shared_ptr<nn::LoraLayerImpl>, Eigens>> loaded;
  for (const auto& [name, layer] : layers) {
    const int64_t r = resolve_rank(config, name).r;
    const int64_t out = layer->out_features();
    const int64_t in = layer->in_features();
    Eigens e;
    struct Part {
      const char* name;
      std::vector<int64_t> shape;
      at::Tensor* slot;
    };
    const Part parts[] = {{"U", {out, r}, &e.U}, {"S", {r}, &e.S}, {"V", {in, r}, &e.V}};
    bool ok = true;
    for (const Part& part : parts) {
      const std::string key = cache_key(name, part.name);
      if (!file.contains(key)) {
        problems.push_back("\"" + key + "\" is missing");
        ok = false;
        continue;
      }
      at::Tensor t = file.get(key);
      if (t.sizes() != at::IntArrayRef(part.shape)) {
        problems.push_back("\"" + key + "\" has shape " + detail::shape_string(t.sizes()) +
                           ", expected " + detail::shape_string(part.shape));
        ok = false;
        continue;
      }
      *part.slot = t.to(layer->weight().device());
    }
    if (ok) loaded.emplace_back(layer, std::move(e));
  }
  PEFT_CHECK(problems.empty(), FormatError, kComponent,
             "cache file \""
                 << path << "\" does not fit the targeted layers: " << detail::join(problems)
                 << " (hint: it was written for another model, r or rank_pattern; delete it to "
                    "recompute)");
  for (auto& [layer, e] : loaded)
    layer->init_data().corda = nn::LayerInitData::Corda{e.U, e.S, e.V};
}

}  // namespace

void preprocess_corda(torch::nn::Module& model, const LoraConfig& config,
                      const std::function<void()>& run_model) {
  // PEFT's LoraConfig fills in a default CordaConfig when init_lora_weights = "corda" has none.
  const CordaConfig cc = config.corda_config.value_or(CordaConfig{});
  const std::vector<Layer> layers = corda_targets(model, config);
  if (layers.empty()) {
    warn(kComponent, "no targeted Linear / Conv1D layer: nothing to preprocess");
    return;
  }
  if (file_has_data(cc.cache_file)) {
    load_cache(*cc.cache_file, layers, config);
    return;
  }

  // Checked before calibrating (PEFT notices only when cropping, after the expensive part).
  std::vector<std::string> too_large;
  for (const auto& [name, layer] : layers) {
    const int r = resolve_rank(config, name).r;
    const int64_t out = layer->out_features(), in = layer->in_features();
    if (r > std::min(in, out)) {
      too_large.push_back("\"" + name + "\" r = " + std::to_string(r) + " > min(" +
                          std::to_string(out) + ", " + std::to_string(in) + ")");
    }
  }
  PEFT_CHECK(too_large.empty(), ConfigError, kComponent,
             "the rank exceeds the smaller weight dimension: "
                 << detail::join(too_large) << " (hint: lower r or add rank_pattern entries)");

  const std::map<std::string, at::Tensor> cov = collect_covariance(model, layers, cc, run_model);

  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, at::Tensor>> cache;
  std::vector<Eigens> eigens;
  eigens.reserve(layers.size());
  // Decompose every layer before attaching anything, so an error leaves no layer half-prepared.
  for (const auto& [name, layer] : layers) {
    eigens.push_back(decompose(name, *layer, cov.at(name), resolve_rank(config, name).r,
                               cc.corda_method, cc.verbose));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& [name, layer] = layers[i];
    const Eigens& e = eigens[i];
    layer->init_data().corda = nn::LayerInitData::Corda{e.U, e.S, e.V};
    cache.emplace_back(cache_key(name, "S"), e.S);
    cache.emplace_back(cache_key(name, "U"), e.U);
    cache.emplace_back(cache_key(name, "V"), e.V);
  }
  // prune_temporary_fields has nothing to prune here: the covariance and counts never live on the
  // layers.
  if (cc.cache_file && !cc.cache_file->empty()) {
    // Divergence from PEFT: PEFT writes a torch pickle (torch.save); this writes safetensors with
    // PEFT's keys.
    make_parent_dirs(*cc.cache_file);
    io::save_safetensors(*cc.cache_file, cache);
  }
}

}  // namespace peft
