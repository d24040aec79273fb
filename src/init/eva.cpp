// EVA state dict (PEFT src/peft/tuners/lora/eva.py, _get_eva_state_dict): input observers feed one
// incremental PCA per distinct layer input; ranks are redistributed by explained variance until the
// needed components have converged. Loading the result into a PeftModel lives in eva_load.cpp.
#include "peft/init/eva.h"

#include <ATen/ATen.h>
#include <c10/util/ScopeExit.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../strings.h"
#include "incremental_pca.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"
#include "peft/targeting.h"

namespace peft {
namespace {

constexpr const char* kComponent = "eva";

using Layer = std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>;

EvaConfig eva_config_of(const LoraConfig& config) {
  if (config.eva_config) return *config.eva_config;
  // PEFT's __post_init__ fills in EvaConfig() for init_lora_weights = "eva"; any other init has
  // none and PEFT's get_eva_state_dict then fails on eva_config.rho.
  PEFT_CHECK(config.init_lora_weights.kind == InitLoraWeights::Kind::kEva, ConfigError, kComponent,
             "eva_config is not set and init_lora_weights is "
                 << to_string(config.init_lora_weights)
                 << "; expected init_lora_weights = \"eva\" or an eva_config (hint: set one)");
  return EvaConfig{};
}

// Python's round(): halves go to the even neighbour (round(2.5) == 2).
int64_t python_round(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

// The token rows of the current batch that enter the PCA; `index` undefined = every row.
struct TokenSelection {
  at::Tensor index;       // flat positions kept, int64
  int64_t positions = 0;  // batch * seq: the row count a layer input must have
};

TokenSelection select_tokens(const train::Batch& batch, const EvaConfig& ec, bool& warned_labels) {
  at::Tensor mask;
  if (batch.attention_mask.defined()) mask = batch.attention_mask.to(at::kBool);
  if (ec.use_label_mask && batch.labels.defined()) {
    if (batch.labels.dim() < 2) {
      if (!warned_labels) {
        warn(kComponent,
             "labels of shape " + detail::shape_string(batch.labels.sizes()) +
                 " are not per token, so they cannot mask tokens; the label mask is not applied "
                 "(hint: set eva_config.use_label_mask = false to silence this)");
        warned_labels = true;
      }
    } else {
      at::Tensor keep = batch.labels.ne(ec.label_mask_value);
      if (mask.defined()) {
        PEFT_CHECK(keep.sizes() == mask.sizes(), ShapeMismatchError, kComponent,
                   "labels have shape "
                       << detail::shape_string(keep.sizes()) << " but attention_mask has shape "
                       << detail::shape_string(mask.sizes())
                       << "; expected one label per token (hint: set eva_config.use_label_mask = "
                          "false if the labels are not per token)");
        keep = at::logical_and(mask, keep.to(mask.device()));
      }
      mask = keep;
    }
  }
  TokenSelection sel;
  if (!mask.defined()) return sel;
  sel.positions = mask.numel();
  sel.index = mask.reshape({-1}).nonzero().reshape({-1});
  return sel;
}

// PEFT prepare_layer_inputs_fn_language_modeling: the layer input as (tokens, features), masked.
at::Tensor layer_rows(const at::Tensor& x, const TokenSelection& sel, const std::string& name) {
  at::Tensor rows = x.detach();
  rows = rows.dim() < 2 ? rows.reshape({1, -1}) : rows.reshape({-1, rows.size(-1)});
  if (!sel.index.defined()) return rows;
  PEFT_CHECK(rows.size(0) == sel.positions, ShapeMismatchError, kComponent,
             "layer \"" << name << "\" got an input of shape " << detail::shape_string(x.sizes())
                        << " but attention_mask / labels cover " << sel.positions
                        << " tokens; expected one input row per token (hint: leave both undefined "
                           "when layer inputs are not (batch, seq, features))");
  return rows.index_select(0, sel.index.to(rows.device()));
}

// PEFT HashHook: hash(tuple(x.tolist())). Hashing the bytes (with the shape) gives the same
// grouping for equal inputs without keeping every layer's input alive.
size_t hash_rows(const at::Tensor& rows) {
  const at::Tensor c = rows.to(at::kCPU).contiguous();
  const auto bytes = static_cast<size_t>(c.numel()) * c.element_size();
  size_t h = std::hash<std::string_view>{}(
      std::string_view(static_cast<const char*>(c.data_ptr()), bytes));
  for (const int64_t s : c.sizes())
    h ^= std::hash<int64_t>{}(s) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

// PEFT SVDHook: one incremental PCA and the per-component convergence flags.
struct Hook {
  std::string name;
  int64_t n_components;
  detail::IncrementalPCA pca;
  std::vector<bool> converged;
  bool collecting = true;  // PEFT: the forward hook is registered
};

bool first_converged(const Hook& h, int64_t rank) {
  const auto n = static_cast<std::ptrdiff_t>(std::min<int64_t>(rank, h.n_components));
  return std::all_of(h.converged.begin(), h.converged.begin() + n, [](bool b) { return b; });
}

void observe(Hook& h, const at::Tensor& x, const TokenSelection& sel, double tau) {
  if (!h.collecting) return;
  const at::Tensor rows = layer_rows(x, sel, h.name);
  if (rows.size(0) < h.n_components) {
    warn(kComponent, "skipping SVD for " + h.name + " because there are less than " +
                         std::to_string(h.n_components) + " examples");
    return;
  }
  const at::Tensor previous = h.pca.fitted() ? h.pca.components().clone() : at::Tensor();
  h.pca.partial_fit(rows.to(at::kFloat));
  if (!previous.defined()) return;
  const at::Tensor sim =
      at::cosine_similarity(h.pca.components().to(at::kDouble), previous.to(at::kDouble), 1, 1e-8);
  const at::Tensor ok = sim.ge(tau).to(at::kCPU);
  const auto acc = ok.accessor<bool, 1>();
  for (int64_t k = 0; k < acc.size(0); ++k) h.converged[static_cast<size_t>(k)] = acc[k];
}

// PEFT _get_rank_distribution: the global top `budget` explained-variance ratios (each layer
// contributes the first max_components of its PCA) decide the ranks; a layer sharing another's PCA
// never gets more than it.
std::vector<int64_t> distribute(const std::vector<size_t>& order,
                                const std::vector<size_t>& hook_of,
                                const std::vector<std::unique_ptr<Hook>>& hooks,
                                const std::vector<int64_t>& max_components, int64_t budget) {
  std::vector<std::pair<double, size_t>> entries;
  for (const size_t i : order) {
    const at::Tensor evr =
        hooks[hook_of[i]]->pca.explained_variance_ratio().slice(0, 0, max_components[i]);
    const at::Tensor cpu = evr.to(at::kCPU, at::kDouble).contiguous();
    const double* v = cpu.data_ptr<double>();
    for (int64_t k = 0; k < cpu.numel(); ++k) entries.emplace_back(v[k], i);
  }
  // torch.argsort(descending=True) ranks NaN highest; ties keep list order here (torch's sort is
  // not stable, and the swap below settles ties between layers sharing a PCA).
  const auto key = [](double x) { return std::isnan(x) ? INFINITY : x; };
  std::stable_sort(entries.begin(), entries.end(),
                   [&](const auto& a, const auto& b) { return key(a.first) > key(b.first); });
  std::vector<int64_t> counts(hook_of.size(), 0);
  const auto take = std::min<size_t>(static_cast<size_t>(budget), entries.size());
  for (size_t k = 0; k < take; ++k) ++counts[entries[k].second];
  for (const size_t i : order) {
    const size_t h = hook_of[i];
    if (h != i && counts[h] < counts[i]) std::swap(counts[h], counts[i]);
  }
  return counts;
}

std::map<std::string, at::Tensor> compute_eva(torch::nn::Module& model,
                                              const std::vector<Layer>& layers,
                                              const LoraConfig& config,
                                              const std::vector<train::Batch>& batches,
                                              const EvaForwardFn& forward,
                                              const EvaOptions& options) {
  PEFT_CHECK(
      !batches.empty(), ConfigError, kComponent,
      "dataloader is empty: no batches given (hint: pass the fine-tuning data as train::Batch)");
  PEFT_CHECK(static_cast<bool>(forward), ConfigError, kComponent,
             "no forward function given (hint: pass a callable that runs the model on a batch)");
  PEFT_CHECK(!layers.empty(), ConfigError, kComponent,
             "no Linear / Conv1D layer to initialise; EVA supports only these (hint: check the "
             "adapter's target_modules)");
  const EvaConfig ec = eva_config_of(config);
  PEFT_CHECK(
      ec.rho >= 1.0 && ec.tau >= 0.0 && ec.tau <= 1.0, ConfigError, kComponent,
      "eva_config has rho = " << ec.rho << ", tau = " << ec.tau
                              << "; expected rho >= 1 and tau in [0, 1] (as validate() checks)");
  PEFT_CHECK(options.max_epochs >= 0, ConfigError, kComponent,
             "max_epochs must be >= 0 (0 = no limit); got " << options.max_epochs);
  const size_t n = layers.size();

  // PEFT caps unusually high rho at (largest parameter dimension) // r.
  double rho = ec.rho;
  if (rho > 1000) {
    int64_t max_dim = 0;
    for (const auto& p : model.parameters()) {
      for (const int64_t s : p.sizes()) max_dim = std::max(max_dim, s);
    }
    rho = std::min(rho, static_cast<double>(max_dim / config.r));
  }
  std::vector<int64_t> max_components(n);
  int64_t budget = 0;
  for (size_t i = 0; i < n; ++i) {
    const int r = resolve_rank(config, layers[i].first).r;
    max_components[i] = python_round(r * rho);
    budget += r;
  }

  // State the observers reach; declared first so that it outlives them.
  std::mutex mu;  // forward may run layers on several threads
  TokenSelection sel;
  bool warned_labels = false;
  std::vector<std::optional<size_t>> hashes(n);
  std::vector<std::unique_ptr<Hook>> hooks(n);
  // Observers removed and training flags restored on every path.
  const bool training = model.is_training();
  model.eval();
  auto restore = c10::make_scope_exit([&] {
    for (const auto& entry : layers) entry.second->set_input_observer({});
    model.train(training);
  });
  torch::NoGradGuard no_grad;

  // 1. One batch with hashing observers: layers that see identical inputs share one PCA.
  for (size_t i = 0; i < n; ++i) {
    layers[i].second->set_input_observer([&, i](const at::Tensor& x) {
      std::lock_guard<std::mutex> lock(mu);
      if (!hashes[i]) hashes[i] = hash_rows(layer_rows(x, sel, layers[i].first));
    });
  }
  sel = select_tokens(batches.front(), ec, warned_labels);
  forward(batches.front());
  std::vector<std::string> silent;
  for (size_t i = 0; i < n; ++i) {
    if (!hashes[i]) silent.push_back(layers[i].first);
  }
  PEFT_CHECK(silent.empty(), Error, kComponent,
             "layers " << detail::join(silent, ", ", "\"")
                       << " got no input while the first batch ran; expected every targeted layer "
                          "to run (hint: the forward function must call the model)");
  std::vector<size_t> hook_of(n);
  std::map<size_t, size_t> first_with_hash;
  for (size_t i = 0; i < n; ++i) hook_of[i] = first_with_hash.emplace(*hashes[i], i).first->second;
  // PEFT's layer_hook_map order: own-PCA layers, then the others grouped by the PCA they share.
  std::vector<size_t> order;
  for (size_t i = 0; i < n; ++i) {
    if (hook_of[i] == i) order.push_back(i);
  }
  for (size_t h = 0; h < n; ++h) {
    for (size_t j = h + 1; j < n && hook_of[h] == h; ++j) {
      if (hook_of[j] == h) {
        order.push_back(j);
        max_components[h] = std::max(max_components[h], max_components[j]);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) max_components[i] = max_components[hook_of[i]];

  // 2. One PCA per distinct input (PEFT's IncrementalPCA rejects n_components > n_features).
  std::vector<std::string> too_wide;
  for (const size_t i : order) {
    const int64_t in = layers[i].second->in_features();
    if (max_components[i] > in) {
      too_wide.push_back(layers[i].first +
                         " (round(r * rho) = " + std::to_string(max_components[i]) +
                         ", in_features = " + std::to_string(in) + ")");
    }
  }
  PEFT_CHECK(too_wide.empty(), ConfigError, kComponent,
             "n_components invalid for n_features: "
                 << detail::join(too_wide, "; ")
                 << "; expected round(r * rho) <= in_features for every layer "
                    "(hint: lower eva_config.rho, r or rank_pattern)");
  for (size_t i = 0; i < n; ++i) {
    layers[i].second->set_input_observer({});
    if (hook_of[i] != i) continue;
    const detail::IncrementalPcaOptions po{
        .n_components = max_components[i], .lowrank = true, .lowrank_seed = 42};
    hooks[i] = std::make_unique<Hook>(
        Hook{layers[i].first, max_components[i], detail::IncrementalPCA(po),
             std::vector<bool>(static_cast<size_t>(max_components[i]), false)});
    Hook* hook = hooks[i].get();
    layers[i].second->set_input_observer([&, hook](const at::Tensor& x) {
      std::lock_guard<std::mutex> lock(mu);
      observe(*hook, x, sel, ec.tau);
    });
  }

  // 3. Cycle through the batches until the components each layer needs have converged.
  std::vector<int64_t> rank_dist = max_components;
  std::vector<bool> converged(n, false);
  bool done = false;
  for (int64_t epoch = 0; !done && (options.max_epochs == 0 || epoch < options.max_epochs);
       ++epoch) {
    for (size_t b = 0; b < batches.size(); ++b) {
      const train::Batch& batch = batches[b];
      sel = select_tokens(batch, ec, warned_labels);
      size_t n_converged = 0;
      for (size_t i = 0; i < n; ++i) {
        if (!hooks[i]) continue;
        const bool c = first_converged(*hooks[i], rank_dist[i]);
        // A converged layer stops collecting until a larger rank needs unconverged components.
        if (c != converged[i]) hooks[i]->collecting = !c;
        converged[i] = c;
      }
      for (size_t i = 0; i < n; ++i) n_converged += converged[hook_of[i]] ? 1 : 0;
      if (options.show_progress) {
        std::cerr << "eva: epoch " << epoch + 1 << " batch " << b + 1 << ": " << n_converged << "/"
                  << n << " layers have converged\n";
      }
      if (n_converged == n) {
        done = true;
        break;
      }
      forward(batch);
      // Some PCA may still be empty (too few rows so far): no distribution yet.
      bool all_fitted = true;
      for (const auto& h : hooks) all_fitted = all_fitted && (!h || h->pca.fitted());
      if (all_fitted) rank_dist = distribute(order, hook_of, hooks, max_components, budget);
    }
  }

  std::vector<std::string> unconverged;
  for (const size_t i : order) {
    const Hook& h = *hooks[hook_of[i]];
    if (!first_converged(h, rank_dist[i])) {
      unconverged.push_back(layers[i].first + " (rank " + std::to_string(rank_dist[i]) + ", " +
                            std::to_string(h.pca.n_samples_seen()) + " rows seen)");
    }
  }
  PEFT_CHECK(unconverged.empty(), Error, kComponent,
             "layers have not converged but were assigned a rank: "
                 << detail::join(unconverged, "; ") << " after " << options.max_epochs
                 << " passes over the data; expected their first components to reach cosine "
                    "similarity tau = "
                 << ec.tau << " (hint: more data, a lower tau or a larger EvaOptions::max_epochs)");

  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < n; ++i) {
    const Hook& h = *hooks[hook_of[i]];
    at::Tensor u = h.pca.components().slice(0, 0, rank_dist[i]).clone();
    if (ec.whiten) {
      // Divergence from PEFT: PEFT divides a view of components_ in place, so layers sharing a PCA
      // get their leading rows whitened twice; here every layer's rows are divided once.
      u = u / h.pca.singular_values().slice(0, 0, rank_dist[i]).sqrt().reshape({-1, 1});
    }
    out[layers[i].first] = u.to(layers[i].second->weight().device());
  }
  return out;
}

}  // namespace

std::map<std::string, at::Tensor> get_eva_state_dict(PeftModel& model,
                                                     const std::vector<train::Batch>& batches,
                                                     const EvaForwardFn& forward,
                                                     const std::string& adapter,
                                                     const EvaOptions& options) {
  const LoraConfig& config = model.peft_config(adapter);
  // Divergence from PEFT: PEFT takes every LoRA Linear layer of the model whatever adapters it
  // carries; here only those carrying `adapter` (the same set when the model has one adapter).
  std::vector<Layer> layers;
  for (auto& entry : nn::lora_layers(model.base_model())) {
    if (entry.second->has_adapter(adapter) && entry.second->is_linear())
      layers.push_back(std::move(entry));
  }
  auto disabled = model.disable_adapter();
  return compute_eva(model.base_model(), layers, config, batches, forward, options);
}

std::map<std::string, at::Tensor> get_eva_state_dict(torch::nn::Module& model,
                                                     const LoraConfig& config,
                                                     const std::vector<train::Batch>& batches,
                                                     const EvaForwardFn& forward,
                                                     const EvaOptions& options) {
  // PEFT's non-PeftModel path: Linear / Conv1D modules matching target_modules. find_target_layers
  // applies the full injection rules, i.e. exactly the layers get_peft_model will adapt.
  std::vector<Layer> layers;
  for (auto& entry : find_target_layers(model, config)) {
    if (entry.second->is_linear()) layers.push_back(std::move(entry));
  }
  return compute_eva(model, layers, config, batches, forward, options);
}

}  // namespace peft
