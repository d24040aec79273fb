// LoRA on tied input / output embeddings (ensure_weight_tying with target_modules, the docs'
// "Weight tying" table): one LoRA on the embedding, which the output head uses. PEFT counterpart:
// BaseTuner's tied-module handling.
#include <algorithm>

#include "internal.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace peft {
namespace detail {

void warn_untied(const char* what) {
  warn("ensure_weight_tying",
       std::string("ensure_weight_tying=True but the model's input and output embeddings are "
                   "not tied; ") +
           what + " are treated as separate (weights cannot be tied)");
}

}  // namespace detail

std::pair<std::string, std::string> PeftModel::plan_lora_weight_tying(
    const LoraConfig& config, std::vector<std::string>& targeted) const {
  const PeftModelInfo& inf = model_info(*model_);
  std::string emb_name, head_name;
  detail::LayerPtr emb = detail::find_layer(*model_, inf.input_embedding_name(), &emb_name);
  detail::LayerPtr head = detail::find_layer(*model_, inf.output_embedding_name(), &head_name);
  if (!emb || !head) return {};
  auto has = [&](const std::string& n) {
    return std::find(targeted.begin(), targeted.end(), n) != targeted.end();
  };
  const bool t_emb = has(emb_name), t_head = has(head_name);
  if (!t_emb && !t_head) return {};
  const bool tied = inf.ties_word_embeddings() && emb->weight().is_same(head->weight());
  if (config.ensure_weight_tying && !tied) {
    detail::warn_untied("the LoRA adapters of the embedding layers");
    return {};
  }
  if (!config.ensure_weight_tying) {
    if (tied && t_emb && t_head) {
      warn("target_modules",
           "target_modules holds both tied embedding layers but ensure_weight_tying=False: their "
           "LoRA adapters are separate, and merging both adds both updates to the one shared "
           "weight (pass ensure_weight_tying=True to keep them tied)");
    }
    return {};
  }
  // Tied + ensure_weight_tying: one LoRA on the input embedding, the head uses it (the docs: "Keep
  // LoRA adapters tied"). The embedding is targeted even when only the head was named.
  if (!t_emb) targeted.insert(targeted.begin(), emb_name);
  targeted.erase(std::remove(targeted.begin(), targeted.end(), head_name), targeted.end());
  return {head_name, emb_name};
}

}  // namespace peft
