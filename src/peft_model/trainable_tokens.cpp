// trainable_token_indices: trainable rows of an embedding (and of the tied output head) per
// adapter, with the docs' weight-tying table. PEFT counterparts: TrainableTokensWrapper,
// _set_trainable (utils/other.py).
#include "peft/lora/trainable_tokens.h"

#include <algorithm>

#include "internal.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace peft {

void PeftModel::add_trainable_tokens(const std::string& adapter_name, const LoraConfig& config,
                                     std::vector<detail::LayerPtr>& touched) {
  if (!config.trainable_token_indices) return;
  const PeftModelInfo& inf = model_info(*model_);
  std::vector<std::pair<std::string, std::vector<int64_t>>> entries;
  if (const auto* list = std::get_if<std::vector<int64_t>>(&*config.trainable_token_indices)) {
    entries.emplace_back(inf.input_embedding_name(), *list);
  } else {
    entries = std::get<std::vector<std::pair<std::string, std::vector<int64_t>>>>(
        *config.trainable_token_indices);
  }
  // Resolve each entry to a layer (PEFT strict_module_check: an entry matching nothing is an
  // error).
  std::vector<std::pair<detail::LayerPtr, std::vector<int64_t>>> plan;
  std::vector<std::string> plan_names;
  for (const auto& [key, indices] : entries) {
    std::string full;
    detail::LayerPtr layer = detail::find_layer(*model_, key, &full);
    PEFT_CHECK(layer != nullptr, ConfigError, "trainable_token_indices",
               "no adapter-ready layer matches \""
                   << key << "\" (hint: name the embedding module, e.g. "
                   << "\"embed_tokens\", or pass a list for the input embedding)");
    if (config.modules_to_save) {
      for (const auto& m : *config.modules_to_save) {
        PEFT_CHECK(!detail::ends_with(full, m), ConfigError, "trainable_token_indices",
                   "module \"" << full << "\" is both in modules_to_save (\"" << m
                               << "\") and in trainable_token_indices; choose one");
      }
    }
    PEFT_CHECK(
        !layer->has_adapter(adapter_name), UnsupportedError, "trainable_token_indices",
        "module \"" << full << "\" already carries LoRA adapter \"" << adapter_name
                    << "\"; trainable tokens and a LoRA on the same embedding are not supported");
    plan.emplace_back(layer, indices);
    plan_names.push_back(full);
  }
  // Weight tying (the docs' trainable_token_indices table).
  detail::LayerPtr emb = detail::find_layer(*model_, inf.input_embedding_name());
  detail::LayerPtr head = detail::find_layer(*model_, inf.output_embedding_name());
  const bool tied = inf.ties_word_embeddings() && emb && head;
  if (config.ensure_weight_tying && !tied) detail::warn_untied("the trainable tokens");
  auto find_plan = [&](const detail::LayerPtr& l) {
    return std::find_if(plan.begin(), plan.end(), [&](const auto& p) { return p.first == l; });
  };
  bool tie_head = false;
  std::vector<int64_t> head_indices;
  auto emb_it = find_plan(emb);
  if (tied && emb_it != plan.end()) {
    head_indices = emb_it->second;
    auto head_it = find_plan(head);
    if (head_it == plan.end()) {
      tie_head = true;  // the tied output embedding follows the input embedding's tokens
    } else if (head_it->second == emb_it->second) {
      tie_head = true;  // same tokens on both: one shared delta
      plan.erase(head_it);
    } else {
      PEFT_CHECK(!config.ensure_weight_tying, ConfigError, "trainable_token_indices",
                 "ensure_weight_tying=True needs the tied embedding layers to train the same "
                 "tokens, but the input "
                 "embedding has "
                     << emb_it->second.size() << " indices and the output embedding "
                     << head_it->second.size() << " different ones (hint: use the same list, or "
                     << "ensure_weight_tying=False to train them separately)");
    }
  }
  // The input embedding first, so that a tied head can share its delta.
  std::stable_partition(plan.begin(), plan.end(), [&](const auto& p) { return p.first == emb; });
  for (auto& [layer, indices] : plan) {
    touched.push_back(layer);
    layer->ensure_trainable_tokens().add(adapter_name, indices, layer->weight());
  }
  if (tie_head) {
    touched.push_back(head);
    head->ensure_trainable_tokens().add(adapter_name, head_indices, head->weight(),
                                        emb->trainable_tokens()->delta(adapter_name));
  }
}

}  // namespace peft
