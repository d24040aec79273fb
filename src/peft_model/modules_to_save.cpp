// modules_to_save: a full trainable copy of each listed module per adapter, kept tied for tied
// embeddings with ensure_weight_tying (the docs' table). PEFT counterparts: ModulesToSaveWrapper,
// set_additional_trainable_modules (utils/other.py).
#include "peft/lora/modules_to_save.h"

#include <algorithm>
#include <set>

#include "internal.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace peft {

std::vector<std::shared_ptr<nn::LoraLayerImpl>> PeftModel::find_modules_to_save(
    const std::string& adapter_name, const LoraConfig& config,
    const std::vector<ModuleInfo>& modules) {
  std::vector<std::shared_ptr<nn::LoraLayerImpl>> copies;
  const auto all_layers = detail::module_layers(*model_);
  // plain suffix match (PEFT's str.endswith, no dot boundary). PEFT wraps the matched module
  // whole; here every adapter-ready layer in it gets a trainable copy, which gives the same
  // parameters, the same forward and the same checkpoint keys (<module>.<child>.weight).
  if (config.modules_to_save) {
    std::set<const nn::LoraLayerImpl*> seen;
    for (const auto& m : modules) {
      if (m.under_adapter) continue;
      for (const auto& entry : *config.modules_to_save) {
        if (m.name.size() < entry.size() ||
            m.name.compare(m.name.size() - entry.size(), entry.size(), entry) != 0) {
          continue;
        }
        std::vector<std::shared_ptr<nn::LoraLayerImpl>> found;
        for (const auto& [lname, layer] : all_layers) {
          if (lname == m.name || lname.rfind(m.name + ".", 0) == 0) found.push_back(layer);
        }
        PEFT_CHECK(
            !found.empty(), UnsupportedError, "modules_to_save",
            "module \""
                << m.name << "\" matches modules_to_save entry \"" << entry
                << "\" but neither is nor contains an adapter-ready peft::nn layer (hint: build it "
                   "from "
                   "peft::nn::Linear / Embedding / Conv* so that a trainable copy can replace it)");
        for (auto& layer : found) {
          PEFT_CHECK(layer->adapter_names().empty() || !layer->has_adapter(adapter_name),
                     UnsupportedError, "modules_to_save",
                     "module \"" << m.name << "\" already carries LoRA adapter \"" << adapter_name
                                 << "\"");
          if (seen.insert(layer.get()).second) copies.push_back(layer);
        }
        break;
      }
    }
  }
  return copies;
}

void PeftModel::add_trainable_copies(const std::string& adapter_name, const LoraConfig& config,
                                     std::vector<detail::LayerPtr> copies,
                                     std::vector<detail::LayerPtr>& touched) {
  const PeftModelInfo& inf = model_info(*model_);
  detail::LayerPtr emb = detail::find_layer(*model_, inf.input_embedding_name());
  detail::LayerPtr head = detail::find_layer(*model_, inf.output_embedding_name());
  auto in_copies = [&](const detail::LayerPtr& l) {
    return l && std::find(copies.begin(), copies.end(), l) != copies.end();
  };
  const bool has_emb = in_copies(emb), has_head = in_copies(head);
  const bool tied = inf.ties_word_embeddings() && emb && head;
  bool tie = false;
  if (has_emb || has_head) {
    if (config.ensure_weight_tying && !tied) {
      detail::warn_untied("the modules_to_save copies");
    } else if (tied && !config.ensure_weight_tying && has_emb && has_head) {
      warn("modules_to_save",
           "modules_to_save holds both tied embedding layers but ensure_weight_tying=False: "
           "their trainable copies are separate (pass ensure_weight_tying=True to keep them tied)");
    } else if (tied && config.ensure_weight_tying) {
      tie = true;  // PEFT: wrap both tied layers and keep the wrappers tied
      if (!has_emb) copies.push_back(emb);
      if (!has_head) copies.push_back(head);
    }
  }
  if (tie) {
    // The embedding's copy first; the head's copy shares its weight tensor.
    std::stable_partition(copies.begin(), copies.end(),
                          [&](const detail::LayerPtr& l) { return l == emb; });
  }
  for (auto& layer : copies) {
    touched.push_back(layer);
    const at::Tensor shared =
        tie && layer == head ? emb->modules_to_save()->copy(adapter_name)->weight : at::Tensor();
    layer->ensure_modules_to_save().add(adapter_name, layer->float_weight(), layer->bias(), shared);
  }
}

}  // namespace peft
