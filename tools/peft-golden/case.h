// One golden case: what a runner returns, and the comparison rules of peft-golden's README.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace peft {
class PeftModel;
}  // namespace peft

namespace peft::golden {

struct CaseResult {
  enum class Status { kPass, kFail, kSkip } status = Status::kPass;
  double max_abs_diff = 0.0;
  std::string reason;
};

struct Case {
  std::string dir;
  nlohmann::json spec;  // case.json
  std::string id() const { return spec.value("id", dir); }
};

// Produces a named tensor on demand (nullopt-like: undefined tensor when the name is unknown).
using Producer = std::function<at::Tensor(const std::string& name)>;

// Checks every `compare` entry of a case whose file is a safetensors file against tensors from
// `produce`. Handles the plain allclose rule and the modes "statistic", "upper_bound",
// "elementwise_one_of"; "optional" entries are evaluated but never fail the case.
CaseResult compare_tensors(const Case& c, const Producer& produce);

CaseResult run_layer_case(const Case& c);
CaseResult run_targeting_case(const Case& c);
CaseResult run_model_case(const Case& c);
CaseResult run_train_case(const Case& c);
CaseResult run_init_case(const Case& c);
CaseResult run_combine_case(const Case& c);
CaseResult run_param_case(const Case& c);
CaseResult run_datainit_case(const Case& c);
CaseResult run_intruders_case(const Case& c);
CaseResult run_arrow_case(const Case& c);
CaseResult run_variant_case(const Case& c);

// Saves the adapters of `pm` as listed in the case's expected.json and compares the files.
CaseResult compare_saved_layout(const Case& c, const PeftModel& pm);

// A fresh copy of the case's base model (custom architecture.json or transformers checkpoint in
// base/), in eval mode, and its forward on the case's inputs file.
struct FreshModel {
  std::shared_ptr<torch::nn::Module> root;
  std::function<at::Tensor()> forward;
};
FreshModel fresh_model(const Case& c);

inline CaseResult skip(const std::string& why) { return {CaseResult::Status::kSkip, 0.0, why}; }
inline CaseResult fail(const std::string& why) { return {CaseResult::Status::kFail, 0.0, why}; }

}  // namespace peft::golden
