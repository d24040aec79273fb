// replace_lora_weights_loftq: LoftQ factors for an already quantized model, one module at a time,
// with the callback that may keep or roll back each replacement.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>

#include "peft/error.h"
#include "peft/init/loftq_model.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/io/safetensors.h"
#include "peft/lora/linear.h"
#include "peft/lora/loftq.h"
#include "peft/peft_model.h"
#include "peft/quant/quantized_weight.h"

namespace peft {
namespace {

double frobenius(const at::Tensor& t) { return t.to(at::kDouble).norm().item<double>(); }

}  // namespace

std::vector<LoftQModuleReport> replace_lora_weights_loftq(PeftModel& model,
                                                          const std::string& model_path,
                                                          const std::string& adapter_name,
                                                          const LoftQCallback& callback) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, std::shared_ptr<nn::LinearImpl>>> targets;
  for (auto& [name, layer] : nn::lora_layers(model.base_model())) {
    auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(layer);
    if (!linear || !linear->is_quantized() || !linear->has_adapter(adapter_name)) continue;
    if (linear->quantized_weight()->method() == quant::QuantMethod::kInt8)
      continue;  // PEFT: 4-bit only
    targets.emplace_back(name, linear);
  }
  PEFT_CHECK(
      !targets.empty(), ConfigError, "replace_lora_weights_loftq",
      "No bnb LoRA module found on the model (hint: quantize the base to nf4 / fp4 and add adapter "
      "\"" << adapter_name
           << "\" first)");
  namespace fs = std::filesystem;
  PEFT_CHECK(fs::exists(model_path), FormatError, model_path,
             "no such file or folder (hint: pass the original, non-quantized model.safetensors or "
             "its folder)");
  const auto tensors = fs::is_directory(model_path) ? io::load_checkpoint_tensors(model_path)
                                                    : io::load_safetensors(model_path);
  std::vector<LoftQModuleReport> reports;
  for (auto& [name, layer] : targets) {
    std::string key = name + ".weight";
    auto it = tensors.find(key);
    if (it == tensors.end() && key.find('.') != std::string::npos)
      it = tensors.find(key.substr(key.find('.') + 1));
    PEFT_CHECK(
        it != tensors.end(), FormatError, model_path,
        "has no tensor \"" << key << "\" (the original weight of quantized layer " << name << ")");
    const at::Tensor W = it->second.to(layer->weight().device(), at::kFloat);
    PEFT_CHECK(
        W.dim() == 2 && W.size(0) == layer->out_features() && W.size(1) == layer->in_features(),
        FormatError, model_path,
        "tensor \"" << key << "\" has shape " << W.sizes() << "; layer " << name << " is ("
                    << layer->out_features() << ", " << layer->in_features() << ")");
    const at::Tensor Q = layer->float_weight().to(at::kFloat);
    at::Tensor A = layer->adapter_tensor(adapter_name, "lora_A.weight");
    at::Tensor B = layer->adapter_tensor(adapter_name, "lora_B.weight");
    const double s = layer->scaling(adapter_name);
    LoftQModuleReport rep;
    rep.module = name;
    rep.error_quant = frobenius(W - Q);
    rep.error_before = frobenius(W - (Q + s * at::matmul(B.to(at::kFloat), A.to(at::kFloat))));
    auto [newA, newB] = init::loftq_init_new(Q, W, layer->adapter_settings(adapter_name).r);
    const at::Tensor oldA = A.clone(), oldB = B.clone();
    A.copy_(newA);
    B.copy_(newB);
    rep.error_after = frobenius(W - (Q + s * at::matmul(B.to(at::kFloat), A.to(at::kFloat))));
    if (callback && !callback(model, name)) {
      A.copy_(oldA);  // roll back
      B.copy_(oldB);
      rep.kept = false;
    }
    reports.push_back(rep);
  }
  return reports;
}

}  // namespace peft
