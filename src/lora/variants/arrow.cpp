// The Arrow router variant on one layer (PEFT ArrowLoraLinearLayer + ArrowLinearVariant): lazy
// GenKnowSub and prototypes, then token-wise top-k routing over the layer's task adapters.
#include "peft/lora/variants/arrow.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cctype>
#include <limits>

#include "../../strings.h"
#include "peft/error.h"
#include "peft/lora/layer.h"

namespace peft::nn {
namespace {

constexpr const char* kMergeRefusal =
    "Cannot merge an active Arrow router adapter. Remove it first.";

// PEFT's filter in on_adapter_change: k.startswith("gks_") and k[4:].isdigit() (empty suffix is no
// digit).
bool is_gks_name(const std::string& name) {
  const std::string prefix = kArrowGksPrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; });
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// The adapter's (A, B) weights on this layer; undefined tensors when it has none (an Embedding's or
// a tied adapter: PEFT's `k in lora_A` is false for them).
std::pair<at::Tensor, at::Tensor> factors(const LoraLayerImpl& layer, const std::string& adapter) {
  return {layer.adapter_tensor(adapter, "lora_A.weight"),
          layer.adapter_tensor(adapter, "lora_B.weight")};
}

std::pair<at::Tensor, at::Tensor> required_factors(const LoraLayerImpl& layer,
                                                   const std::string& adapter) {
  PEFT_CHECK(layer.has_adapter(adapter), AdapterNotFoundError, "arrow",
             "adapter \"" << adapter
                          << "\" is not on this layer (hint: Arrow needs every task and general "
                             "adapter on every layer the router targets)");
  auto f = factors(layer, adapter);
  PEFT_CHECK(f.first.defined() && f.second.defined(), UnsupportedError, "arrow",
             "adapter \"" << adapter << "\" has no lora_A / lora_B factors on this layer");
  return f;
}

}  // namespace

ArrowLinearVariant::ArrowLinearVariant(ArrowConfig config)
    : config_(std::move(config)), task_names_(config_.task_adapter_names) {}

void ArrowLinearVariant::check_mergeable(const LoraLayerImpl& /*layer*/,
                                         const std::string& /*adapter*/) const {
  throw UnsupportedError("merge", kMergeRefusal);
}

std::vector<std::string> ArrowLinearVariant::task_adapter_names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return task_names_;
}

at::Tensor ArrowLinearVariant::prototypes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return prototypes_;
}

bool ArrowLinearVariant::gks_done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return gks_done_;
}

void ArrowLinearVariant::on_adapter_change(LoraLayerImpl& layer) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> all;
  for (const auto& name : layer.adapter_names()) {
    if (name == kArrowRouterName || is_gks_name(name)) continue;
    // Divergence from PEFT: general adapters given to add_arrow_router under other names than
    // gks_<i> are left out too (create_arrow_model always names them gks_<i>, so there the sets are
    // PEFT's).
    if (contains(config_.gks_adapter_names, name)) continue;
    const auto [A, B] = factors(layer, name);
    if (!A.defined() || !B.defined()) continue;
    all.push_back(name);
  }
  std::vector<std::string> before = task_names_, after = all;
  std::sort(before.begin(), before.end());
  std::sort(after.begin(), after.end());
  if (before == after) return;
  // Divergence from PEFT: PEFT replaces its list of adapters awaiting GenKnowSub with the newest
  // additions, and only when the count grew, so a second addition before the next forward (or a
  // delete + add) leaves the earlier one unsubtracted; here every addition is remembered until
  // GenKnowSub runs, and deleted ones are dropped.
  for (const auto& name : all) {
    if (!contains(task_names_, name) && !contains(gks_pending_, name)) gks_pending_.push_back(name);
  }
  gks_pending_.erase(std::remove_if(gks_pending_.begin(), gks_pending_.end(),
                                    [&](const std::string& n) { return !contains(all, n); }),
                     gks_pending_.end());
  // Divergence from PEFT: PEFT calls on_adapter_change only from update_layer, so after
  // delete_adapter of a task adapter its forward fails on the stale name; here deletion also
  // refreshes the task list and prototypes.
  task_names_ = std::move(all);
  prototypes_ = at::Tensor();
}

void ArrowLinearVariant::gen_know_sub(const LoraLayerImpl& layer) const {
  if (!config_.use_gks) return;
  if (gks_done_ && gks_pending_.empty()) return;
  PEFT_CHECK(
      !config_.gks_adapter_names.empty(), ConfigError, "arrow",
      "use_gks=True but no general adapters are known (arrow_config.gks_adapter_names is empty)");
  torch::NoGradGuard no_grad;
  // Factor-wise means over the general adapters: A_bar (r, in), B_bar (out, r) -- not the mean of
  // the products.
  std::vector<at::Tensor> As, Bs;
  for (const auto& name : config_.gks_adapter_names) {
    auto [A, B] = required_factors(layer, name);
    if (!As.empty()) {
      PEFT_CHECK(A.sizes() == As.front().sizes() && B.sizes() == Bs.front().sizes(),
                 ShapeMismatchError, "arrow",
                 "general adapter \""
                     << name << "\" has A " << peft::detail::shape_string(A.sizes()) << ", B "
                     << peft::detail::shape_string(B.sizes()) << "; the first has A "
                     << peft::detail::shape_string(As.front().sizes()) << ", B "
                     << peft::detail::shape_string(Bs.front().sizes()));
    }
    As.push_back(A.detach());
    Bs.push_back(B.detach());
  }
  const at::Tensor avg_A = at::stack(As, 0).mean(0);
  const at::Tensor avg_B = at::stack(Bs, 0).mean(0);
  // First time: every task adapter; afterwards only those added since (PEFT
  // gks_added_adapter_names).
  const std::vector<std::string>& targets = gks_done_ ? gks_pending_ : task_names_;
  for (const auto& name : targets) {
    auto [A, B] = required_factors(layer, name);
    PEFT_CHECK(A.sizes() == avg_A.sizes() && B.sizes() == avg_B.sizes(), ShapeMismatchError,
               "arrow",
               "GenKnowSub: task adapter \""
                   << name << "\" has A " << peft::detail::shape_string(A.sizes()) << ", B "
                   << peft::detail::shape_string(B.sizes()) << " but the general adapters have A "
                   << peft::detail::shape_string(avg_A.sizes()) << ", B "
                   << peft::detail::shape_string(avg_B.sizes()) << " (hint: same rank needed)");
    // In place and permanent, as PEFT's weight.data.sub_.
    A.sub_(avg_A.to(A.scalar_type()));
    B.sub_(avg_B.to(B.scalar_type()));
  }
  gks_done_ = true;
  gks_pending_.clear();
}

at::Tensor ArrowLinearVariant::top_right_singular_vec_from_BA(const at::Tensor& A,
                                                              const at::Tensor& B,
                                                              std::optional<int64_t> rng_seed,
                                                              int iters, double eps) {
  torch::NoGradGuard no_grad;
  // Right singular vectors of dW = B A are the eigenvectors of dW^T dW = A^T (B^T B) A; power
  // iteration on that operator never forms dW (out, in) or the (in, in) matrix.
  const at::Tensor A32 = A.detach().to(at::kFloat);
  const at::Tensor B32 = B.detach().to(at::kFloat);
  const at::Tensor C = B32.t().mm(B32);  // (r, r)
  at::Tensor v;
  if (rng_seed) {
    // PEFT: a fresh torch.Generator on A's device, manual_seed(rng_seed), for every adapter.
    // Divergence from PEFT: the start vector is always drawn on the CPU (then moved), so on an
    // accelerator it is not the one PEFT draws there.
    at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(*rng_seed));
    v = at::randn({A32.size(1)}, gen, at::TensorOptions().dtype(at::kFloat)).to(A32.device());
  } else {
    v = at::randn({A32.size(1)}, A32.options());
  }
  v = v / (v.norm() + eps);
  for (int i = 0; i < iters; ++i) {
    const at::Tensor w = A32.t().mv(C.mv(A32.mv(v)));
    v = w / (w.norm() + eps);
  }
  return v;  // float32
}

void ArrowLinearVariant::build_prototypes(const LoraLayerImpl& layer) const {
  if (prototypes_.defined()) return;
  PEFT_CHECK(!task_names_.empty(), Error, "arrow",
             "the layer holds no task adapters to route between (adapters: ["
                 << peft::detail::join(layer.adapter_names()) << "])");
  std::vector<at::Tensor> protos;
  for (const auto& name : task_names_) {
    auto [A, B] = required_factors(layer, name);
    // Cast back to the factors' dtype and device, as PEFT does before stacking.
    protos.push_back(
        top_right_singular_vec_from_BA(A, B, config_.rng_seed).to(A.device(), A.scalar_type()));
  }
  prototypes_ = at::stack(protos, 0);  // (E, in)
}

ArrowLinearVariant::Snapshot ArrowLinearVariant::prepare_locked(const LoraLayerImpl& layer) const {
  // GenKnowSub first (it changes the factors the prototypes are computed from), then the
  // prototypes.
  gen_know_sub(layer);
  build_prototypes(layer);
  return {task_names_, prototypes_};
}

void ArrowLinearVariant::prepare(const LoraLayerImpl& layer) const {
  std::lock_guard<std::mutex> lock(mutex_);
  prepare_locked(layer);
}

at::Tensor ArrowLinearVariant::forward(const LoraLayerImpl& layer, const std::string& adapter,
                                       const at::Tensor& x, at::Tensor result) const {
  Snapshot snap;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    snap = prepare_locked(layer);
  }
  const auto E = static_cast<int64_t>(snap.task_names.size());
  std::vector<at::Tensor> As, Bs;
  std::vector<double> scales;
  for (const auto& name : snap.task_names) {
    auto [A, B] = required_factors(layer, name);
    if (!As.empty()) {
      PEFT_CHECK(A.sizes() == As.front().sizes() && B.sizes() == Bs.front().sizes(),
                 ShapeMismatchError, "arrow",
                 "task adapter \""
                     << name << "\" has A " << peft::detail::shape_string(A.sizes()) << ", B "
                     << peft::detail::shape_string(B.sizes()) << " but \""
                     << snap.task_names.front() << "\" has A "
                     << peft::detail::shape_string(As.front().sizes()) << ", B "
                     << peft::detail::shape_string(Bs.front().sizes())
                     << " (hint: Arrow stacks the task adapters, so they need one rank)");
    }
    As.push_back(A);
    Bs.push_back(B);
    scales.push_back(layer.scaling(name));
  }
  const int64_t r = As.front().size(0);
  const int64_t in = As.front().size(1);
  const int64_t out = Bs.front().size(0);
  PEFT_CHECK(config_.top_k <= E, ConfigError, "arrow",
             "top_k=" << config_.top_k << " but the layer has only " << E << " task adapters ["
                      << peft::detail::join(snap.task_names)
                      << "] (PEFT fails in torch.topk here)");

  // Tokens: x (..., in) -> (T, in), cast to the task adapters' dtype (PEFT _cast_input_dtype).
  const auto dtype = As.front().scalar_type();
  const at::Tensor tok = (x.scalar_type() == dtype ? x : x.to(dtype)).reshape({-1, in});
  const int64_t T = tok.size(0);
  const at::Tensor protos = snap.prototypes.to(tok.options());

  // Sign-agnostic similarity to the unit prototypes (the token is not normalised): (T, E).
  const at::Tensor sim = at::abs(tok.mm(protos.t()));
  // Top-k per token, the rest -inf, softmax over all E with the temperature.
  auto [top_v, idx] = sim.topk(config_.top_k, 1);
  at::Tensor full = at::full({T, E}, -std::numeric_limits<double>::infinity(), tok.options());
  full.scatter_(1, idx, top_v);
  const at::Tensor coeff = at::softmax(full / config_.router_temperature, 1);  // (T, E)

  // delta = sum_e coeff_e s_e B_e A_e t. PEFT forms y (T, E, out) with two einsums; the same sum as
  // one GEMM over the concatenated factors keeps memory at (T, E r): z = t [A_1; ...; A_E]^T,
  // weighted per expert block, then z [B_1, ..., B_E]^T.
  const at::Tensor scale_t =
      at::tensor(scales, at::TensorOptions().dtype(at::kDouble)).to(tok.options());
  const at::Tensor w = coeff * scale_t.unsqueeze(0);                // (T, E)
  const at::Tensor z = tok.mm(at::cat(As, 0).t()).view({T, E, r});  // (T, E, r)
  const at::Tensor zw = (z * w.unsqueeze(2)).reshape({T, E * r});   // (T, E r)
  at::Tensor delta = zw.mm(at::cat(Bs, 1).t());                     // (T, out)

  // The router adapter's own dropout, on the combined update (PEFT applies
  // lora_dropout[arrow_router] to delta).
  const double p = layer.adapter_settings(adapter).lora_dropout;
  if (p > 0.0) delta = at::dropout(delta, p, layer.is_training());

  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return result + delta.reshape(shape);
}

std::shared_ptr<ArrowLinearVariant> arrow_router(const LoraLayerImpl& layer) {
  return std::dynamic_pointer_cast<ArrowLinearVariant>(layer.variant(kArrowRouterName));
}

namespace variants {

std::shared_ptr<LoraVariant> make_arrow_variant(const LoraLayerImpl& layer,
                                                const AdapterSettings& settings) {
  // PEFT resolves the Arrow variant for Linear layers only (GPT-2 Conv1D is a Linear here).
  PEFT_CHECK(layer.is_linear(), ConfigError, "add_adapter",
             "Invalid or unsupported variant combination: arrow_config on a "
                 << to_string(layer.kind()) << " layer; only Linear layers support Arrow");
  auto variant = std::make_shared<ArrowLinearVariant>(*settings.arrow_config);
  return variant;
}

}  // namespace variants
}  // namespace peft::nn
