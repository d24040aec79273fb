// Parameter counts: PEFT's get_nb_trainable_parameters and print_trainable_parameters line.
#include <cstdio>
#include <iostream>
#include <unordered_set>

#include "peft/peft_model.h"

namespace peft {
namespace {

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace

std::pair<int64_t, int64_t> PeftModel::get_nb_trainable_parameters() const {
  int64_t trainable = 0;
  int64_t all = 0;
  std::unordered_set<const void*>
      seen;  // shared (tied) tensors count once, as named_parameters() does
  for (const auto& p : model_->parameters()) {
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    all += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  return {trainable, all};
}

std::string PeftModel::trainable_parameters_line() const {
  auto [trainable, all] = get_nb_trainable_parameters();
  char pct[64];
  std::snprintf(pct, sizeof(pct), "%.4f",
                all > 0 ? 100.0 * static_cast<double>(trainable) / static_cast<double>(all) : 0.0);
  return "trainable params: " + with_commas(trainable) + " || all params: " + with_commas(all) +
         " || trainable%: " + pct;
}

void PeftModel::print_trainable_parameters() const {
  std::cout << trainable_parameters_line() << std::endl;
}

}  // namespace peft
