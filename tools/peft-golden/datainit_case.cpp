// kind "datainit": data-driven initialisations (CorDA, LoRA-GA) of a transformers checkpoint, once
// per tag on a fresh copy of the base, with the calibration rows run one at a time as the case's
// protocol says; compared through residual base weights, sign-invariant deltas and logits.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>

#include "case.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/init/corda.h"
#include "peft/init/loraga.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/loss.h"

namespace fs = std::filesystem;

namespace peft::golden {
namespace {

// The case's LoraConfig with the tag's init settings (CorDA: corda_method = tag; LoRA-GA:
// direction-scale).
LoraConfig tag_config(const Case& c, const std::string& method, const std::string& tag) {
  nlohmann::json j = c.spec.at("lora_config");
  j["peft_type"] = "LORA";
  if (method == "corda") {
    j["init_lora_weights"] = "corda";
    j["corda_config"] = {{"corda_method", tag}};
  } else {
    const auto dash = tag.find('-');
    PEFT_CHECK(dash != std::string::npos, FormatError, "peft-golden",
               "LoRA-GA tag \"" << tag << "\" is not <direction>-<scale>");
    j["init_lora_weights"] = "lora_ga";
    j["lora_ga_config"] = {{"direction", tag.substr(0, dash)}, {"scale", tag.substr(dash + 1)}};
  }
  return lora_config_from_json_text(j.dump(), c.id() + "/case.json");
}

// The generator's position when PEFT ran the case: the golden generator seeded, built the base
// model with transformers' random init (every weight matrix drawn twice, by its nn.Linear /
// nn.Embedding constructor and by post_init, one 32-bit draw per element) and drew the integer
// inputs with randint (one draw per element). LoRA-GA's torch.svd_lowrank takes its random start
// from that stream, and B @ A pairs different singular triplets, so their signs matter: the runner
// replays the same number of draws.
void advance_like_the_generator(torch::nn::Module& model,
                                const std::map<std::string, at::Tensor>& inputs) {
  int64_t draws = 0;
  for (const auto& p : model.parameters()) {
    if (p.dim() >= 2) draws += 2 * p.numel();
  }
  for (const auto& [name, t] : inputs) {
    if (!at::isFloatingType(t.scalar_type())) draws += t.numel();
  }
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  auto* impl = gen.get<at::CPUGeneratorImpl>();
  for (int64_t i = 0; i < draws; ++i) impl->random();
}

// Divergence from PEFT (in what is compared, not in the library): the sign of a singular triplet is
// whatever the LAPACK in use returns (PyTorch's wheels: MKL; Debian's LibTorch: OpenBLAS), and
// LoRA-GA pairs different triplets in B and A, so B @ A and the residual change with a flipped
// triplet. Each row of A and column of B is given the sign of PEFT's saved factor (adapter_<tag>/),
// and the residual moved by the same amount; every other part of the init is compared as it is.
void align_signs_with_peft(nn::LoraLayerImpl& layer, const std::string& lname,
                           const std::map<std::string, at::Tensor>& saved) {
  const std::string key = "base_model.model." + lname;
  if (!saved.count(key + ".lora_A.weight") || !saved.count(key + ".lora_B.weight")) return;
  at::Tensor A = layer.adapter_tensor("default", "lora_A.weight");
  at::Tensor B = layer.adapter_tensor("default", "lora_B.weight");
  const at::Tensor before = layer.get_delta_weight("default");
  const at::Tensor row_sign = at::sign((A * saved.at(key + ".lora_A.weight")).sum(1));
  const at::Tensor col_sign = at::sign((B * saved.at(key + ".lora_B.weight")).sum(0));
  A.mul_(at::where(row_sign < 0, -1.0, 1.0).unsqueeze(1));
  B.mul_(at::where(col_sign < 0, -1.0, 1.0).unsqueeze(0));
  layer.weight().add_(before - layer.get_delta_weight("default"));
}

}  // namespace

CaseResult run_datainit_case(const Case& c) {
  const fs::path dir(c.dir);
  const std::string method = c.spec.value("method", "");
  if (method != "corda" && method != "loraga")
    return fail("datainit method \"" + method + "\" is not corda or loraga");
  auto inputs =
      io::load_safetensors((dir / c.spec.value("inputs_file", "inputs.safetensors")).string());
  const at::Tensor calib = inputs.at("calib_input_ids");
  models::ForwardInput eval_in;
  eval_in.input_ids = inputs.at("input_ids");

  std::map<std::string, at::Tensor> produced;
  torch::manual_seed(c.spec.value("seed", 0));
  bool advanced = false;
  for (const auto& tag_json : c.spec.at("tags")) {
    const std::string tag = tag_json.get<std::string>();
    // The tags ran one after the other on fresh copies of one base: one random stream, which
    // loading a base here must not touch.
    auto gen = at::detail::getDefaultCPUGenerator();
    at::Tensor rng;
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      rng = gen.get_state();
    }
    auto model = models::load_pretrained((dir / "base").string());
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(rng);
    }
    if (!advanced) advance_like_the_generator(*model, inputs);
    advanced = true;
    const LoraConfig config = tag_config(c, method, tag);
    // PEFT's protocol: each calibration row alone, as a batch of one.
    auto each_row = [&](const std::function<void(const models::ForwardInput&)>& f) {
      for (int64_t i = 0; i < calib.size(0); ++i) {
        models::ForwardInput in;
        in.input_ids = calib.slice(0, i, i + 1);
        f(in);
      }
    };
    if (method == "corda") {
      preprocess_corda(*model, config, [&] {
        each_row([&](const models::ForwardInput& in) { model->forward(in); });
      });
    } else {
      preprocess_loraga(*model, config, [&] {
        each_row([&](const models::ForwardInput& in) {
          train::causal_lm_loss(model->forward(in), in.input_ids).backward();
        });
      });
    }
    auto pm = get_peft_model(model, config);
    model->eval();
    torch::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> saved;
    const std::string folder =
        c.spec.value("adapter_folders", nlohmann::json::object()).value(tag, "");
    if (!folder.empty())
      saved = io::load_safetensors((dir / folder / "adapter_model.safetensors").string());
    for (auto& [lname, layer] : nn::lora_layers(*model)) {
      if (!layer->has_adapter("default")) continue;
      align_signs_with_peft(*layer, lname, saved);
      produced[tag + "." + lname + ".base_weight_residual"] = layer->weight().clone();
      produced[tag + "." + lname + ".delta_weight"] = layer->get_delta_weight("default");
    }
    produced[tag + ".logits"] = model->forward(eval_in);
  }
  return compare_tensors(c, [&](const std::string& n) {
    auto it = produced.find(n);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
