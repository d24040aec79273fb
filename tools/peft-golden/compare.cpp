#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "case.h"
#include "peft/io/safetensors.h"

namespace peft::golden {
namespace {

double stat(const std::string& which, const at::Tensor& t) {
  at::Tensor d = t.detach().to(at::kDouble);
  if (which == "mean") return d.mean().item<double>();
  if (which == "std") return d.std().item<double>();  // unbiased, as torch.std
  if (which == "absmax") return d.abs().max().item<double>();
  throw std::runtime_error("unknown statistic \"" + which + "\"");
}

}  // namespace

CaseResult compare_tensors(const Case& c, const Producer& produce) {
  CaseResult result;
  std::map<std::string, std::unique_ptr<io::SafetensorsFile>> files;
  for (const auto& entry : c.spec.at("compare")) {
    const std::string file = entry.value("file", "");
    if (file.size() < 12 || file.substr(file.size() - 12) != ".safetensors") continue;
    if (!files.count(file)) {
      files[file] =
          std::make_unique<io::SafetensorsFile>((std::filesystem::path(c.dir) / file).string());
    }
    const std::string tensor = entry.at("tensor").get<std::string>();
    const double atol = entry.value("atol", 0.0);
    const double rtol = entry.value("rtol", 0.0);
    const bool optional = entry.value("optional", false);
    const std::string mode = entry.value("mode", "");
    at::Tensor expected = files[file]->get(tensor).to(at::kDouble);
    std::ostringstream why;
    bool ok = true;
    double diff = 0.0;
    if (mode == "statistic" || mode == "upper_bound") {
      const std::string of = entry.at("of").get<std::string>();
      at::Tensor mine = produce(of);
      if (!mine.defined()) return fail("cannot produce \"" + of + "\" (for " + tensor + ")");
      const double value = stat(entry.at("stat").get<std::string>(), mine);
      const double want = expected.item<double>();
      if (mode == "statistic") {
        diff = std::abs(value - want);
        ok = diff <= atol + rtol * std::abs(want);
      } else {
        ok = value <= want + atol;
      }
      if (!ok) why << tensor << ": " << value << " vs " << want;
    } else {
      const std::string target =
          mode == "elementwise_one_of" ? entry.at("applies_to").get<std::string>() : tensor;
      at::Tensor mine = produce(target);
      if (!mine.defined()) return fail("cannot produce \"" + target + "\"");
      mine = mine.detach().to(at::kDouble);
      if (mode == "elementwise_one_of") {
        at::Tensor d = (expected - mine.unsqueeze(0)).abs();
        at::Tensor best = std::get<0>(d.min(0));
        diff = best.numel() ? best.max().item<double>() : 0.0;
        ok = (best <= atol + rtol * std::get<0>(expected.abs().max(0))).all().item<bool>();
      } else if (mine.sizes() != expected.sizes()) {
        ok = false;
        why << tensor << ": shape " << mine.sizes() << " vs expected " << expected.sizes();
      } else {
        at::Tensor d = (mine - expected).abs();
        diff = d.numel() ? d.max().item<double>() : 0.0;
        ok = (d <= atol + rtol * expected.abs()).all().item<bool>() && !std::isnan(diff);
      }
      if (!ok && why.str().empty())
        why << tensor << ": max |diff| " << diff << " > atol " << atol << " rtol " << rtol;
    }
    if (optional) continue;
    result.max_abs_diff = std::max(result.max_abs_diff, diff);
    if (!ok) return fail(why.str());
  }
  return result;
}

}  // namespace peft::golden
