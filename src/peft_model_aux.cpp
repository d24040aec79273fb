// PeftModel's auxiliary trainable modules: modules_to_save copies and trainable tokens, including the
// ensure_weight_tying behaviour tables of PEFT's LoRA docs ("Weight tying"). PEFT counterparts:
// set_additional_trainable_modules, _set_trainable (utils/other.py), TrainableTokensWrapper.
#include <algorithm>
#include <map>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"
#include "strings.h"

namespace peft {
namespace {

using LayerPtr = std::shared_ptr<nn::LoraLayerImpl>;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The adapter-ready layer named exactly `name`, or whose name ends with `name` (PEFT's plain endswith), or null.
LayerPtr find_layer(torch::nn::Module& model, const std::string& name, std::string* full_name = nullptr) {
  if (name.empty()) return nullptr;
  for (auto& [n, layer] : nn::lora_layers(model)) {
    if (n == name || ends_with(n, name)) {
      if (full_name) *full_name = n;
      return layer;
    }
  }
  return nullptr;
}

const PeftModelInfo& info_of(const torch::nn::Module& model) {
  static const PeftModelInfo fallback;
  auto* i = dynamic_cast<const PeftModelInfo*>(&model);
  return i ? *i : fallback;
}

void warn_untied(const char* what) {
  warn("ensure_weight_tying", std::string("ensure_weight_tying=True but the model's input and output embeddings are "
                                          "not tied; ") + what + " are treated as separate (weights cannot be tied)");
}

}  // namespace

void PeftModel::add_trainable_copies(const std::string& adapter_name, const LoraConfig& config,
                                     std::vector<LayerPtr> copies, std::vector<LayerPtr>& touched) {
  const PeftModelInfo& inf = info_of(*model_);
  LayerPtr emb = find_layer(*model_, inf.input_embedding_name());
  LayerPtr head = find_layer(*model_, inf.output_embedding_name());
  auto in_copies = [&](const LayerPtr& l) { return l && std::find(copies.begin(), copies.end(), l) != copies.end(); };
  const bool has_emb = in_copies(emb), has_head = in_copies(head);
  const bool tied = inf.ties_word_embeddings() && emb && head;
  bool tie = false;
  if (has_emb || has_head) {
    if (config.ensure_weight_tying && !tied) {
      warn_untied("the modules_to_save copies");
    } else if (tied && !config.ensure_weight_tying && has_emb && has_head) {
      warn("modules_to_save", "modules_to_save holds both tied embedding layers but ensure_weight_tying=False: "
                              "their trainable copies are separate (pass ensure_weight_tying=True to keep them tied)");
    } else if (tied && config.ensure_weight_tying) {
      tie = true;  // PEFT: wrap both tied layers and keep the wrappers tied
      if (!has_emb) copies.push_back(emb);
      if (!has_head) copies.push_back(head);
    }
  }
  if (tie) {
    // The embedding's copy first; the head's copy shares its weight tensor.
    std::stable_partition(copies.begin(), copies.end(), [&](const LayerPtr& l) { return l == emb; });
  }
  for (auto& layer : copies) {
    touched.push_back(layer);
    if (tie && layer == head) {
      layer->add_trainable_copy(adapter_name, emb->trainable_copy_tensors(adapter_name).front().second);
    } else {
      layer->add_trainable_copy(adapter_name);
    }
  }
}

void PeftModel::add_trainable_tokens(const std::string& adapter_name, const LoraConfig& config,
                                     std::vector<LayerPtr>& touched) {
  if (!config.trainable_token_indices) return;
  const PeftModelInfo& inf = info_of(*model_);
  std::vector<std::pair<std::string, std::vector<int64_t>>> entries;
  if (const auto* list = std::get_if<std::vector<int64_t>>(&*config.trainable_token_indices)) {
    entries.emplace_back(inf.input_embedding_name(), *list);
  } else {
    entries = std::get<std::vector<std::pair<std::string, std::vector<int64_t>>>>(*config.trainable_token_indices);
  }
  // Resolve each entry to a layer (PEFT strict_module_check: an entry matching nothing is an error).
  std::vector<std::pair<LayerPtr, std::vector<int64_t>>> plan;
  std::vector<std::string> plan_names;
  for (const auto& [key, indices] : entries) {
    std::string full;
    LayerPtr layer = find_layer(*model_, key, &full);
    PEFT_CHECK(layer != nullptr, ConfigError, "trainable_token_indices",
               "no adapter-ready layer matches \"" << key << "\" (hint: name the embedding module, e.g. "
                                                   << "\"embed_tokens\", or pass a list for the input embedding)");
    if (config.modules_to_save) {
      for (const auto& m : *config.modules_to_save) {
        PEFT_CHECK(!ends_with(full, m), ConfigError, "trainable_token_indices",
                   "module \"" << full << "\" is both in modules_to_save (\"" << m
                               << "\") and in trainable_token_indices; choose one");
      }
    }
    PEFT_CHECK(!layer->has_adapter(adapter_name), UnsupportedError, "trainable_token_indices",
               "module \"" << full << "\" already carries LoRA adapter \"" << adapter_name
                           << "\"; trainable tokens and a LoRA on the same embedding are not supported");
    plan.emplace_back(layer, indices);
    plan_names.push_back(full);
  }
  // Weight tying (the docs' trainable_token_indices table).
  LayerPtr emb = find_layer(*model_, inf.input_embedding_name());
  LayerPtr head = find_layer(*model_, inf.output_embedding_name());
  const bool tied = inf.ties_word_embeddings() && emb && head;
  if (config.ensure_weight_tying && !tied) warn_untied("the trainable tokens");
  auto find_plan = [&](const LayerPtr& l) {
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
                 "ensure_weight_tying=True needs the tied embedding layers to train the same tokens, but the input "
                 "embedding has " << emb_it->second.size() << " indices and the output embedding "
                                  << head_it->second.size() << " different ones (hint: use the same list, or "
                                  << "ensure_weight_tying=False to train them separately)");
    }
  }
  // The input embedding first, so that a tied head can share its delta.
  std::stable_partition(plan.begin(), plan.end(), [&](const auto& p) { return p.first == emb; });
  for (auto& [layer, indices] : plan) {
    touched.push_back(layer);
    layer->add_trainable_tokens(adapter_name, indices);
  }
  if (tie_head) {
    touched.push_back(head);
    head->add_trainable_tokens(adapter_name, head_indices, emb->trainable_tokens_delta(adapter_name));
  }
}

std::pair<std::string, std::string> PeftModel::plan_lora_weight_tying(const LoraConfig& config,
                                                                      std::vector<std::string>& targeted) const {
  const PeftModelInfo& inf = info_of(*model_);
  std::string emb_name, head_name;
  LayerPtr emb = find_layer(*model_, inf.input_embedding_name(), &emb_name);
  LayerPtr head = find_layer(*model_, inf.output_embedding_name(), &head_name);
  if (!emb || !head) return {};
  auto has = [&](const std::string& n) { return std::find(targeted.begin(), targeted.end(), n) != targeted.end(); };
  const bool t_emb = has(emb_name), t_head = has(head_name);
  if (!t_emb && !t_head) return {};
  const bool tied = inf.ties_word_embeddings() && emb->weight().is_same(head->weight());
  if (config.ensure_weight_tying && !tied) {
    warn_untied("the LoRA adapters of the embedding layers");
    return {};
  }
  if (!config.ensure_weight_tying) {
    if (tied && t_emb && t_head) {
      warn("target_modules", "target_modules holds both tied embedding layers but ensure_weight_tying=False: their "
                             "LoRA adapters are separate, and merging both adds both updates to the one shared "
                             "weight (pass ensure_weight_tying=True to keep them tied)");
    }
    return {};
  }
  // Tied + ensure_weight_tying: one LoRA on the input embedding, the head uses it (the docs: "Keep LoRA adapters
  // tied"). The embedding is targeted even when only the head was named.
  if (!t_emb) targeted.insert(targeted.begin(), emb_name);
  targeted.erase(std::remove(targeted.begin(), targeted.end(), head_name), targeted.end());
  return {head_name, emb_name};
}

}  // namespace peft
