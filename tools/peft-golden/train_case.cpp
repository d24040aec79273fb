// kind "train": a few optimizer steps on a fixed batch from a saved initial adapter; the loss
// before every step and the final adapter must match PEFT + PyTorch (peft::train::AdamW against
// torch.optim.AdamW).
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>

#include "case.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/loss.h"
#include "peft/train/optimizer.h"

namespace fs = std::filesystem;

namespace peft::golden {

CaseResult run_train_case(const Case& c) {
  const fs::path dir(c.dir);
  const auto& opt = c.spec.at("optimizer");
  const std::string type = opt.value("type", "AdamW");
  if (type != "AdamW") return skip("optimizer " + type + ": the training issue");
  const auto& kwargs = c.spec.value("lora_config", nlohmann::json::object());
  for (const char* key :
       {"use_dora", "trainable_token_indices", "target_parameters", "layer_replication"}) {
    if (kwargs.contains(key) && !kwargs[key].is_null() && kwargs[key] != false)
      return skip(std::string(key) + ": a later feature");
  }
  auto model = models::load_pretrained((dir / "base").string());
  auto pm = PeftModel::from_pretrained(
      model, (dir / c.spec.value("initial_adapter", "adapter_initial")).string(), "default",
      /*is_trainable=*/true);
  model->train();
  const auto betas = opt.value("betas", std::vector<double>{0.9, 0.999});
  PEFT_CHECK(!opt.value("amsgrad", false), Error, "peft-golden", "amsgrad is not implemented");
  auto optimizer =
      train::create_adamw_optimizer(*model, {.lr = opt.value("lr", 1e-3),
                                             .beta1 = betas.at(0),
                                             .beta2 = betas.at(1),
                                             .eps = opt.value("eps", 1e-8),
                                             .weight_decay = opt.value("weight_decay", 1e-2)});
  auto inputs =
      io::load_safetensors((dir / c.spec.value("inputs_file", "inputs.safetensors")).string());
  models::ForwardInput in;
  in.input_ids = inputs.at("input_ids");
  if (inputs.count("attention_mask")) in.attention_mask = inputs.at("attention_mask");
  const at::Tensor labels = inputs.at("labels");
  const int steps = c.spec.value("steps", 1);
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    optimizer->zero_grad();
    at::Tensor loss = model->task() == models::ModelTask::kCausalLm
                          ? train::causal_lm_loss(model->forward(in), labels)
                          : train::sequence_classification_loss(model->forward(in), labels);
    losses.push_back(loss.item<double>());
    loss.backward();
    optimizer->step();
  }
  std::map<std::string, at::Tensor> produced;
  produced["losses"] = torch::tensor(losses, torch::kDouble);
  for (const auto& [key, t] : pm->get_peft_model_state_dict("default"))
    produced["final." + key] = t;
  model->eval();
  {
    torch::NoGradGuard no_grad;
    produced["logits_final"] = model->forward(in);
  }
  return compare_tensors(c, [&](const std::string& name) {
    auto it = produced.find(name);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
