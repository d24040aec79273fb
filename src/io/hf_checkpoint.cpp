// Hugging Face checkpoint folders (config.json, model.safetensors / sharded index) <-> module
// state.
#include "peft/io/hf_checkpoint.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "../strings.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"
#include "peft/io/safetensors.h"

namespace fs = std::filesystem;

namespace peft::io {
namespace {

std::string read_text(const fs::path& p) { return read_file(p, "checkpoint"); }

}  // namespace

std::string read_config_json(const std::string& dir) {
  PEFT_CHECK(fs::is_directory(dir), FormatError, "checkpoint",
             "\"" << dir << "\" is not a directory (hint: pass a Hugging Face model folder)");
  const fs::path p = fs::path(dir) / "config.json";
  PEFT_CHECK(fs::exists(p), FormatError, "checkpoint",
             "\"" << dir << "\" has no config.json (hint: is this a Hugging Face model folder?)");
  std::string text = read_text(p);
  // A bad config.json is a configuration error (the CLI's exit 2).
  (void)parse_json(text, "checkpoint", "\"" + p.string() + "\"", JsonRole::kConfig);
  return text;
}

std::map<std::string, at::Tensor> load_checkpoint_tensors(const std::string& dir) {
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(single)) return load_safetensors(single.string());
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (!fs::exists(index)) {
    PEFT_CHECK(!fs::exists(fs::path(dir) / "pytorch_model.bin"), UnsupportedError, "checkpoint",
               "\"" << dir
                    << "\" holds pytorch_model.bin (a Python pickle), which peft.cpp does not read "
                    << "(hint: re-save with save_pretrained(..., safe_serialization=True))");
    throw FormatError(
        "checkpoint",
        "\"" + dir + "\" has neither model.safetensors nor model.safetensors.index.json");
  }
  nlohmann::json j;
  j = parse_json(read_text(index), "checkpoint", "\"" + index.string() + "\"");
  PEFT_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), FormatError, "checkpoint",
             "\"" << index.string() << "\" has no \"weight_map\" object");
  std::map<std::string, std::set<std::string>> shards;  // file -> keys it should hold
  for (const auto& [key, file] : j["weight_map"].items()) {
    PEFT_CHECK(file.is_string(), FormatError, "checkpoint",
               "\"" << index.string() << "\": weight_map[\"" << key << "\"] is not a file name");
    shards[file.get<std::string>()].insert(key);
  }
  std::map<std::string, at::Tensor> out;
  std::vector<std::string> problems;
  for (const auto& [file, keys] : shards) {
    const fs::path p = fs::path(dir) / file;
    if (file.find('/') != std::string::npos || !fs::exists(p)) {
      problems.push_back("shard \"" + file + "\" is missing");
      continue;
    }
    SafetensorsFile shard(p.string());
    for (const auto& key : keys) {
      if (!shard.contains(key)) {
        problems.push_back("\"" + key + "\" is not in shard \"" + file + "\"");
        continue;
      }
      out[key] = shard.get(key);
    }
  }
  PEFT_CHECK(problems.empty(), FormatError, "checkpoint",
             "\"" << index.string() << "\": " << detail::join(problems, "; "));
  return out;
}

CheckpointLoadReport load_state_into(torch::nn::Module& module,
                                     const std::map<std::string, at::Tensor>& tensors,
                                     const std::string& source,
                                     const std::vector<std::pair<std::string, std::string>>& tied) {
  CheckpointLoadReport report;
  std::map<std::string, std::string> tied_source(tied.begin(), tied.end());
  std::vector<std::string> missing;
  std::vector<std::string> mismatched;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  std::set<std::string> used;
  auto visit = [&](const std::string& name, at::Tensor& target) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      auto t = tied_source.find(name);
      if (t != tied_source.end()) it = tensors.find(t->second);
      if (it == tensors.end()) {
        missing.push_back(name);
        return;
      }
      report.tied.push_back(name);
    } else {
      used.insert(name);
    }
    if (it->second.sizes() != target.sizes()) {
      mismatched.push_back("\"" + name + "\": " + detail::shape_string(it->second.sizes()) +
                           " in the checkpoint, " + detail::shape_string(target.sizes()) +
                           " in the model");
      return;
    }
    copies.emplace_back(target, it->second);
  };
  for (auto& item : module.named_parameters()) visit(item.key(), item.value());
  for (auto& item : module.named_buffers()) {
    if (tensors.count(item.key()))
      visit(item.key(), item.value());  // buffers are optional in checkpoints
  }
  PEFT_CHECK(mismatched.empty(), ShapeMismatchError, "load_pretrained",
             "\"" << source << "\": " << mismatched.size()
                  << " tensor(s) have the wrong shape: " << detail::join(mismatched, "; ")
                  << " (hint: does config.json belong to these weights?)");
  PEFT_CHECK(missing.empty(), FormatError, "load_pretrained",
             "\"" << source << "\": " << missing.size()
                  << " tensor(s) missing from the checkpoint: " << detail::join(missing, ", ")
                  << " (hint: does config.json belong to these weights?)");
  {
    torch::NoGradGuard no_grad;
    for (auto& [dst, src] : copies) dst.copy_(src.to(dst.device(), dst.scalar_type()));
  }
  for (const auto& [k, v] : tensors) {
    if (!used.count(k)) {
      bool is_tied_source = false;
      for (const auto& [key, src] : tied) is_tied_source = is_tied_source || src == k;
      if (!is_tied_source) report.unexpected.push_back(k);
    }
  }
  if (!report.unexpected.empty()) {
    warn("load_pretrained", "\"" + source + "\": ignored " +
                                std::to_string(report.unexpected.size()) +
                                " checkpoint tensor(s) the model does not use: " +
                                detail::join(report.unexpected, ", "));
  }
  return report;
}

void save_checkpoint_tensors(const torch::nn::Module& module, const std::string& dir,
                             const std::vector<std::string>& skip,
                             std::optional<c10::ScalarType> dtype) {
  std::set<std::string> skipped(skip.begin(), skip.end());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : module.named_parameters()) {
    if (skipped.count(item.key())) continue;
    at::Tensor t = item.value().detach();
    if (dtype) t = t.to(*dtype);
    out.emplace_back(item.key(), t);
  }
  fs::create_directories(dir);
  save_safetensors((fs::path(dir) / "model.safetensors").string(), out, {{"format", "pt"}});
}

}  // namespace peft::io
