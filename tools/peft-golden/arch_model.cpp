#include "arch_model.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/conv.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "peft/lora/param.h"

namespace peft::golden {
namespace {

using json = nlohmann::json;

std::vector<int64_t> ints(const json& j, const char* key) {
  if (!j.contains(key)) return {};
  if (j[key].is_number_integer()) return {j[key].get<int64_t>()};
  return j[key].get<std::vector<int64_t>>();
}

std::shared_ptr<torch::nn::Module> make_layer(const json& m) {
  const std::string type = m.at("type").get<std::string>();
  if (type == "Linear") {
    return std::make_shared<nn::LinearImpl>(m.at("in_features").get<int64_t>(),
                                            m.at("out_features").get<int64_t>(),
                                            m.value("bias", true));
  }
  if (type == "GPT2Conv1D") {
    return std::make_shared<nn::Conv1DImpl>(m.at("nf").get<int64_t>(), m.at("nx").get<int64_t>());
  }
  if (type == "Embedding") {
    std::optional<int64_t> pad;
    if (m.contains("padding_idx") && !m["padding_idx"].is_null())
      pad = m["padding_idx"].get<int64_t>();
    return std::make_shared<nn::EmbeddingImpl>(m.at("num_embeddings").get<int64_t>(),
                                               m.at("embedding_dim").get<int64_t>(), pad);
  }
  if (type == "Conv1d" || type == "Conv2d" || type == "Conv3d") {
    nn::ConvOptions o;
    o.stride = ints(m, "stride");
    o.padding = ints(m, "padding");
    o.dilation = ints(m, "dilation");
    o.groups = m.value("groups", int64_t{1});
    o.bias = m.value("bias", true);
    const int dims = type[4] - '0';
    return std::make_shared<nn::ConvNdImpl>(dims, m.at("in_channels").get<int64_t>(),
                                            m.at("out_channels").get<int64_t>(),
                                            ints(m, "kernel_size"), o);
  }
  if (type == "ParamHolder") {
    // Holds raw parameters only (target_parameters cases), registered in param_order.
    auto holder = std::make_shared<nn::ParamModuleImpl>("ParamHolder");
    const json& params = m.at("params");
    for (const auto& pname : m.at("param_order")) {
      const std::string n = pname.get<std::string>();
      holder->register_parameter(n, torch::zeros(params.at(n).get<std::vector<int64_t>>()), false);
    }
    return holder;
  }
  throw UnsupportedError("peft-golden",
                         "module type \"" + type + "\" is not supported by this runner");
}

// Registers `module` at dotted `name` under root, creating plain container modules on the way.
void place(torch::nn::Module& root, const std::string& name,
           std::shared_ptr<torch::nn::Module> module) {
  torch::nn::Module* parent = &root;
  size_t start = 0;
  while (true) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) break;
    std::string part = name.substr(start, dot - start);
    auto children = parent->named_children();
    if (!children.contains(part))
      parent->register_module(part, std::make_shared<torch::nn::Module>());
    parent = parent->named_children()[part].get();
    start = dot + 1;
  }
  parent->register_module(name.substr(start), std::move(module));
}

}  // namespace

ArchModel build_arch_model(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "architecture.json";
  std::ifstream f(path);
  PEFT_CHECK(f.good(), FormatError, "peft-golden", "cannot open " << path);
  json arch = json::parse(f);
  ArchModel out;
  out.root = std::make_shared<torch::nn::Module>();
  for (const auto& m : arch.at("modules"))
    place(*out.root, m.at("name").get<std::string>(), make_layer(m));
  if (arch.contains("forward") && arch["forward"].is_array()) {
    out.forward = arch["forward"].get<std::vector<std::string>>();
  }
  if (arch.contains("input") && arch["input"].is_object())
    out.input_name = arch["input"].at("name").get<std::string>();

  const auto weights = std::filesystem::path(dir) / "model.safetensors";
  if (std::filesystem::exists(weights)) {
    auto tensors = io::load_safetensors(weights.string());
    std::vector<std::string> problems;
    std::set<std::string> used;
    torch::NoGradGuard no_grad;
    for (auto& item : out.root->named_parameters()) {
      auto it = tensors.find(item.key());
      if (it == tensors.end()) {
        problems.push_back("missing \"" + item.key() + "\"");
        continue;
      }
      used.insert(item.key());
      if (it->second.sizes() != item.value().sizes()) {
        problems.push_back("\"" + item.key() + "\" has a different shape");
        continue;
      }
      item.value().copy_(it->second);
    }
    for (const auto& [k, v] : tensors) {
      if (!used.count(k)) problems.push_back("unexpected \"" + k + "\"");
    }
    if (!problems.empty()) {
      std::string msg;
      for (const auto& p : problems) {
        if (!msg.empty()) msg += "; ";
        msg += p;
      }
      throw FormatError("peft-golden", weights.string() + ": " + msg);
    }
  }
  return out;
}

at::Tensor run_forward(const ArchModel& model, const at::Tensor& x) {
  at::Tensor h = x;
  auto modules = model.root->named_modules("", false);
  for (const auto& step : model.forward) {
    if (step == "relu") {
      h = at::relu(h);
      continue;
    }
    PEFT_CHECK(modules.contains(step), FormatError, "peft-golden",
               "forward names unknown module \"" << step << "\"");
    auto layer = std::dynamic_pointer_cast<nn::LoraLayerImpl>(modules[step]);
    PEFT_CHECK(layer != nullptr, UnsupportedError, "peft-golden",
               "module \"" << step << "\" has no forward here");
    h = layer->forward_with_adapters(h);
  }
  return h;
}

}  // namespace peft::golden
