// Mixture-of-experts blocks: fused expert weights with routed LoRA, the top-k router, Mixtral /
// Qwen3-MoE config fields and the per-expert -> fused checkpoint conversion. Follows transformers
// v5 (modeling_mixtral.py / modeling_qwen3_moe.py, conversion_mapping.py); the router aux loss
// (load_balancing_loss_func, output_router_logits) is not implemented: it only adds a training loss
// term and changes no logits.
#include "moe.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>

#include "peft/error.h"

namespace peft::models::detail {
namespace {

// s * (x A_e^T) B_e^T of every live adapter of `slot` for expert e, added to result. x is cast to
// the factors' dtype and the sum back to result's (PEFT's Linear does the same with autocast
// adapters).
at::Tensor add_expert_lora(at::Tensor result, const at::Tensor& x,
                           const peft::nn::ParamLoraImpl& slot, int64_t expert) {
  for (const auto& f : slot.expert_factors(expert)) {
    at::Tensor lora = at::linear(at::linear(x.to(f.A.scalar_type()), f.A), f.B) * f.scaling;
    result = result + lora.to(result.scalar_type());
  }
  return result;
}

// Initial values of a fresh expert weight (E, out, in): nn.Linear's default, uniform(+-1/sqrt(in))
// per expert.
at::Tensor init_expert_weight(int64_t experts, int64_t out, int64_t in) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  return at::empty({experts, out, in}, at::kFloat).uniform_(-bound, bound);
}

}  // namespace

std::optional<MoeSettings> read_moe_settings(const ConfigReader& c, LlamaFamily family,
                                             int64_t hidden_size) {
  if (!is_moe(family)) return std::nullopt;
  const bool mixtral = family == LlamaFamily::kMixtral;
  const std::string type = to_string(family);
  MoeSettings s;
  s.hidden_size = hidden_size;
  // Both configs map the attribute num_experts <-> num_local_experts (attribute_map); config.json
  // files use num_local_experts (Mixtral) and num_experts (Qwen3-MoE).
  const std::string own = mixtral ? "num_local_experts" : "num_experts";
  const std::string alias = mixtral ? "num_experts" : "num_local_experts";
  const std::string experts_key = c.has(own) || !c.has(alias) ? own : alias;
  if (family == LlamaFamily::kQwen3Moe && c.get<int64_t>(experts_key) == 0)
    return std::nullopt;  // every layer dense
  s.num_experts = c.positive(experts_key);
  s.num_experts_per_tok = c.positive("num_experts_per_tok");
  PEFT_CHECK(s.num_experts_per_tok <= s.num_experts, ConfigError, "config.json",
             type << " config field \"num_experts_per_tok\" (" << s.num_experts_per_tok
                  << ") exceeds the number of experts (" << experts_key << " = " << s.num_experts
                  << ")");
  if (mixtral) {
    s.expert_intermediate_size = c.positive("intermediate_size");
    s.norm_topk_prob = true;  // MixtralTopKRouter always renormalises the top-k weights
    s.cast_router_weights = false;
    s.router_jitter_noise = c.get<double>("router_jitter_noise", 0.0);
    PEFT_CHECK(s.router_jitter_noise >= 0, ConfigError, "config.json",
               type << " config field \"router_jitter_noise\" must be >= 0; got "
                    << s.router_jitter_noise);
  } else {
    s.expert_intermediate_size = c.positive("moe_intermediate_size");
    s.norm_topk_prob = c.get<bool>("norm_topk_prob", false);  // Qwen3MoeConfig default
    s.cast_router_weights = true;
  }
  return s;
}

std::vector<bool> read_sparse_layers(const ConfigReader& c, LlamaFamily family,
                                     int64_t num_layers) {
  const auto n = static_cast<size_t>(num_layers);
  if (family == LlamaFamily::kMixtral) return std::vector<bool>(n, true);
  std::vector<bool> out(n, false);
  if (family != LlamaFamily::kQwen3Moe) return out;
  const std::string experts_key =
      c.has("num_experts") || !c.has("num_local_experts") ? "num_experts" : "num_local_experts";
  if (c.get<int64_t>(experts_key) <= 0) return out;
  const auto step = c.get<int64_t>("decoder_sparse_step", 1);
  PEFT_CHECK(step > 0, ConfigError, "config.json",
             "qwen3_moe config field \"decoder_sparse_step\" must be positive; got " << step);
  const auto dense = c.get<std::vector<int64_t>>("mlp_only_layers", {});
  for (size_t i = 0; i < n; ++i) {
    const auto idx = static_cast<int64_t>(i);
    const bool listed = std::find(dense.begin(), dense.end(), idx) != dense.end();
    out[i] = !listed && (idx + 1) % step == 0;
  }
  return out;
}

void patch_sparse_layers(LlamaFamily family, const std::vector<bool>& sparse,
                         nlohmann::json& patch) {
  if (family != LlamaFamily::kQwen3Moe ||
      std::find(sparse.begin(), sparse.end(), false) == sparse.end())
    return;
  if (std::find(sparse.begin(), sparse.end(), true) == sparse.end())
    return;  // num_experts 0: all dense anyway
  nlohmann::json dense = nlohmann::json::array();
  for (size_t i = 0; i < sparse.size(); ++i) {
    if (!sparse[i]) dense.push_back(i);
  }
  patch["decoder_sparse_step"] = 1;
  patch["mlp_only_layers"] = std::move(dense);
}

// ---- experts ----

ExpertsImpl::ExpertsImpl(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size)
    : peft::nn::ParamModuleImpl("Experts"),
      experts_(num_experts),
      hidden_(hidden_size),
      ff_(intermediate_size) {
  register_parameter("gate_up_proj", init_expert_weight(experts_, 2 * ff_, hidden_));
  register_parameter("down_proj", init_expert_weight(experts_, hidden_, ff_));
}

at::Tensor ExpertsImpl::forward(const at::Tensor& x, const at::Tensor& top_k_index,
                                const at::Tensor& top_k_weights) const {
  PEFT_CHECK(x.dim() == 2 && x.size(1) == hidden_, ShapeMismatchError, "mlp.experts",
             "input has shape " << x.sizes() << "; expected (tokens, " << hidden_ << ")");
  PEFT_CHECK(top_k_index.dim() == 2 && top_k_index.size(0) == x.size(0) &&
                 top_k_index.scalar_type() == at::kLong &&
                 top_k_weights.sizes() == top_k_index.sizes(),
             ShapeMismatchError, "mlp.experts",
             "top_k_index " << top_k_index.sizes() << " / top_k_weights " << top_k_weights.sizes()
                            << "; expected both (" << x.size(0) << ", k), the index int64");
  const auto gate_up_lora = param_lora("gate_up_proj");
  const auto down_lora = param_lora("down_proj");
  // Routed: the raw parameters, plus each hit expert's LoRA for its own tokens. Otherwise PEFT's
  // way: the parameters with every expert's full delta added once (param()). The slot's weight IS
  // the parameter.
  const bool routed = routed_lora;
  at::Tensor gate_up = routed && gate_up_lora ? gate_up_lora->weight() : param("gate_up_proj");
  at::Tensor down = routed && down_lora ? down_lora->weight() : param("down_proj");
  const bool add_gate_up = routed && gate_up_lora && gate_up_lora->has_active_lora();
  const bool add_down = routed && down_lora && down_lora->has_active_lora();

  const int64_t tokens = x.size(0), k = top_k_index.size(1);
  at::Tensor out = at::zeros_like(x);
  if (tokens == 0) return out;
  const at::Tensor slot_expert = top_k_index.reshape(-1);  // slot t k + j: token t's j-th choice
  const at::Tensor slot_weight = top_k_weights.reshape(-1);
  const at::Tensor slot_token =
      at::arange(tokens, top_k_index.options()).unsqueeze(1).expand({tokens, k}).reshape(-1);
  // One host sync for the whole loop (transformers: expert_hit = nonzero of the one-hot mask's
  // sums).
  const at::Tensor counts = at::bincount(slot_expert, {}, experts_).to(at::kCPU);
  const auto* count = counts.data_ptr<int64_t>();
  for (int64_t e = 0; e < experts_; ++e) {
    if (count[e] == 0) continue;
    const at::Tensor slots = at::nonzero(slot_expert == e).squeeze(1);
    const at::Tensor token = slot_token.index_select(0, slots);
    const at::Tensor xe = x.index_select(0, token);
    at::Tensor gu = at::linear(xe, gate_up.select(0, e));  // (n, 2 ff)
    if (add_gate_up) gu = add_expert_lora(gu, xe, *gate_up_lora, e);
    const auto parts = gu.chunk(2, -1);  // gate first, then up
    const at::Tensor h = at::silu(parts[0]) * parts[1];
    at::Tensor y = at::linear(h, down.select(0, e));  // (n, hidden)
    if (add_down) y = add_expert_lora(y, h, *down_lora, e);
    y = y * slot_weight.index_select(0, slots).unsqueeze(-1);
    out.index_add_(0, token, y.to(out.scalar_type()));
  }
  return out;
}

// ---- sparse block ----

SparseMoeBlockImpl::SparseMoeBlockImpl(const MoeSettings& settings) : s_(settings) {
  gate = register_module("gate", peft::nn::Linear(s_.hidden_size, s_.num_experts, /*bias=*/false));
  experts = register_module("experts",
                            Experts(s_.num_experts, s_.hidden_size, s_.expert_intermediate_size));
}

std::pair<at::Tensor, at::Tensor> SparseMoeBlockImpl::route(const at::Tensor& x) const {
  const at::Tensor logits = gate->forward_with_adapters(x);  // (T, E)
  const at::Tensor probs = at::softmax(logits, -1, at::kFloat);
  auto [weights, index] = at::topk(probs, s_.num_experts_per_tok, -1);
  if (s_.norm_topk_prob) weights = weights / weights.sum(-1, /*keepdim=*/true);
  if (s_.cast_router_weights) weights = weights.to(logits.scalar_type());
  return {index, weights};
}

at::Tensor SparseMoeBlockImpl::forward(const at::Tensor& x) {
  PEFT_CHECK(x.dim() >= 1 && x.size(-1) == s_.hidden_size, ShapeMismatchError, "mlp",
             "input has shape " << x.sizes() << "; expected (..., " << s_.hidden_size << ")");
  at::Tensor h = x.reshape({-1, s_.hidden_size});
  if (is_training() && s_.router_jitter_noise > 0) {
    h = h * at::empty_like(h).uniform_(1.0 - s_.router_jitter_noise, 1.0 + s_.router_jitter_noise);
  }
  const auto [index, weights] = route(h);
  return experts->forward(h, index, weights).reshape(x.sizes());
}

// ---- checkpoint conversion ----

void convert_moe_checkpoint(std::map<std::string, at::Tensor>& tensors, LlamaFamily family,
                            const std::vector<bool>& sparse, int64_t num_experts) {
  const bool mixtral = family == LlamaFamily::kMixtral;
  const std::string type = to_string(family);
  const std::vector<std::string> names =
      mixtral ? std::vector<std::string>{"w1", "w3", "w2"}  // gate, up, down
              : std::vector<std::string>{"gate_proj", "up_proj", "down_proj"};
  const std::string block = mixtral ? ".block_sparse_moe." : ".mlp.";
  struct Layer {
    size_t index;
    std::string prefix;  // "model.layers.N<block>experts."
  };
  std::vector<Layer> per_expert;
  std::vector<std::string> missing;
  std::ostringstream shape_errors;
  int n_shape_errors = 0;
  // Validate every layer first, then convert (one error lists everything).
  for (size_t n = 0; n < sparse.size(); ++n) {
    if (!sparse[n]) continue;
    const std::string prefix = "model.layers." + std::to_string(n) + block + "experts.";
    bool any = false;
    for (auto it = tensors.lower_bound(prefix);
         it != tensors.end() && it->first.rfind(prefix, 0) == 0; ++it) {
      if (std::isdigit(static_cast<unsigned char>(it->first[prefix.size()]))) {
        any = true;
        break;
      }
    }
    if (!any) continue;  // fused (or absent: load_state_into names the missing fused tensors)
    const std::string fused = "model.layers." + std::to_string(n) + ".mlp.experts.";
    PEFT_CHECK(
        !tensors.count(fused + "gate_up_proj") && !tensors.count(fused + "down_proj"), FormatError,
        "convert_checkpoint",
        "layer "
            << n << " has both per-expert tensors (" << prefix << "<e>.*) and fused ones (" << fused
            << "gate_up_proj / down_proj); expected one layout (hint: a checkpoint merged from two "
               "sources?)");
    per_expert.push_back({n, prefix});
    std::vector<int64_t> ref[3];
    for (int64_t e = 0; e < num_experts; ++e) {
      for (size_t p = 0; p < 3; ++p) {
        const std::string key = prefix + std::to_string(e) + "." + names[p] + ".weight";
        auto it = tensors.find(key);
        if (it == tensors.end()) {
          missing.push_back(key);
          continue;
        }
        const auto sizes = it->second.sizes().vec();
        if (ref[p].empty()) ref[p] = sizes;
        // gate and up must agree with each other; down is (hidden, ff) against gate's (ff, hidden).
        std::vector<int64_t> expected = ref[p];
        if (p == 1 && !ref[0].empty()) expected = ref[0];
        if (p == 2 && !ref[0].empty() && ref[0].size() == 2) expected = {ref[0][1], ref[0][0]};
        if (sizes.size() != 2 || sizes != expected) {
          shape_errors << (n_shape_errors++ ? "; " : "") << "\"" << key << "\" has shape "
                       << it->second.sizes() << ", expected " << c10::IntArrayRef(expected);
        }
      }
    }
  }
  if (!missing.empty()) {
    std::ostringstream list;
    const size_t shown = std::min<size_t>(missing.size(), 8);
    for (size_t i = 0; i < shown; ++i) list << (i ? ", " : "") << "\"" << missing[i] << "\"";
    if (shown < missing.size()) list << " and " << (missing.size() - shown) << " more";
    throw FormatError(
        "convert_checkpoint",
        "per-expert " + type + " checkpoint lacks " + std::to_string(missing.size()) +
            " expert tensor(s): " + list.str() + "; expected " + names[0] + " / " + names[1] +
            " / " + names[2] + " for each of the " + std::to_string(num_experts) +
            " experts of config.json (hint: an incomplete set of shards, or a config.json of "
            "another model?)");
  }
  PEFT_CHECK(
      n_shape_errors == 0, ShapeMismatchError, "convert_checkpoint",
      "per-expert " << type << " tensors disagree in shape: " << shape_errors.str()
                    << " (hint: every expert has gate/up (ff, hidden) and down (hidden, ff))");

  for (const auto& layer : per_expert) {
    std::vector<at::Tensor> gate_up, down;
    for (int64_t e = 0; e < num_experts; ++e) {
      const std::string base = layer.prefix + std::to_string(e) + ".";
      gate_up.push_back(at::cat(
          {tensors.at(base + names[0] + ".weight"), tensors.at(base + names[1] + ".weight")}, 0));
      down.push_back(tensors.at(base + names[2] + ".weight"));
      for (const auto& name : names) tensors.erase(base + name + ".weight");
    }
    const std::string fused = "model.layers." + std::to_string(layer.index) + ".mlp.experts.";
    tensors[fused + "gate_up_proj"] = at::stack(gate_up);
    tensors[fused + "down_proj"] = at::stack(down);
  }
  if (mixtral) {
    // WeightRenaming(".block_sparse_moe.gate", ".mlp.gate") (and any other leftover of the old
    // block name).
    std::vector<std::string> renamed;
    for (const auto& [key, value] : tensors) {
      if (key.find(".block_sparse_moe.") != std::string::npos) renamed.push_back(key);
    }
    for (const auto& key : renamed) {
      const auto pos = key.find(".block_sparse_moe.");
      const std::string target = key.substr(0, pos) + ".mlp." + key.substr(pos + 18);
      PEFT_CHECK(!tensors.count(target), FormatError, "convert_checkpoint",
                 "both \"" << key << "\" and \"" << target
                           << "\" are present; expected one of the two names of the same tensor");
      tensors[target] = tensors.at(key);
      tensors.erase(key);
    }
  }
}

}  // namespace peft::models::detail
