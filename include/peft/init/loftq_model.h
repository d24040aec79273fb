// LoftQ on a model whose Linear layers are already quantized (4-bit): replace_lora_weights_loftq.
// PEFT counterpart: peft.utils.loftq_utils.replace_lora_weights_loftq.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace peft {
class PeftModel;

// Called after each module's replacement with the model and the module's name (without
// "base_model.model."); returning false rolls that module back to its previous LoRA weights.
using LoftQCallback = std::function<bool(PeftModel& model, const std::string& module_name)>;

struct LoftQModuleReport {
  std::string module;
  double error_before = 0;  // ||W - (Q + s B A)||_F with the adapter's previous factors
  double error_after = 0;   // the same with the LoftQ factors
  double error_quant = 0;   // ||W - Q||_F
  bool kept = true;         // false when the callback rolled it back
};

// For every 4-bit quantized Linear carrying `adapter_name`: reads its original float weight W from
// `model_path` (a .safetensors file, or a checkpoint folder: model.safetensors or a sharded index),
// and sets A, B to the rank-r SVD factors of W - dequant(Q) (PEFT _loftq_init_new; not divided by
// the scaling). Keys are looked up as "<module>.weight", then without the model's first name
// component (PEFT strips the base model prefix on a miss). Errors: ConfigError when no 4-bit LoRA
// layer exists ("No bnb LoRA module found on the model"), FormatError naming the file and key when
// a weight is missing or mis-shaped.
std::vector<LoftQModuleReport> replace_lora_weights_loftq(
    PeftModel& model, const std::string& model_path, const std::string& adapter_name = "default",
    const LoftQCallback& callback = {});

}  // namespace peft
