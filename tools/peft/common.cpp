#include "common.h"

#include <filesystem>
#include <set>

#include "peft/dtype.h"
#include "peft/error.h"
#include "peft/io/atomic_write.h"
#include "peft/io/staged_directory.h"
#include "peft/runtime.h"

namespace peft::cli {

void add_model_options(CLI::App* verb, ModelOptions& options) {
  verb->add_option("--model", options.model_dir,
                   "Hugging Face model folder (config.json + safetensors)")
      ->required();
  verb->add_option("--dtype", options.dtype, "parameter dtype: float32 | bfloat16 | float16")
      ->capture_default_str();
  verb->add_option("--threads", options.threads,
                   "compute threads (default: one per physical core with an OpenMP BLAS; "
                   "docs/performance.md)")
      ->check(CLI::Range(0, kMaxThreads));
}

void add_quantize_options(CLI::App* verb, ModelOptions& options) {
  verb->add_option(
      "--quantize", options.quantize,
      "quantize the base's Linear layers (QLoRA): nf4 | fp4 (4-bit blockwise) | int8 (LLM.int8 "
      "row-wise); lm_head stays float");
  verb->add_flag("--double-quant", options.double_quant,
                 "4-bit: quantize the block scales too (bnb double quant)");
  verb->add_option("--quant-blocksize", options.quant_blocksize, "4-bit block size (64..4096)")
      ->capture_default_str();
  verb->add_option("--int8-threshold", options.int8_threshold,
                   "int8: outlier threshold of LLM.int8 (transformers' default 6; 0 = none)")
      ->capture_default_str();
}

namespace {

// Files of a model folder that are neither weights nor config.json (models::save_pretrained writes
// those), copied as they are.
bool is_side_file(const std::string& name) {
  static const char* names[] = {"generation_config.json",
                                "tokenizer.json",
                                "tokenizer_config.json",
                                "tokenizer.model",
                                "special_tokens_map.json",
                                "vocab.json",
                                "vocab.txt",
                                "merges.txt",
                                "added_tokens.json",
                                "chat_template.jinja"};
  for (const char* n : names) {
    if (name == n) return true;
  }
  return false;
}

// Files of a checkpoint folder that a new model replaces: its config, weights (any shard layout)
// and side files. Anything else a user keeps there stays.
bool is_model_file(const std::string& name) {
  return name == "config.json" || name.find(".safetensors") != std::string::npos ||
         name.rfind("pytorch_model", 0) == 0 || is_side_file(name);
}

}  // namespace

void save_model_folder(const models::PretrainedModel& model, const std::string& source_dir,
                       const std::string& out_dir, const char* component) {
  io::StagedDirectory dir(out_dir, component);
  models::save_pretrained(model, dir.path().string());
  for (const auto& e : std::filesystem::directory_iterator(source_dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && is_side_file(name))
      io::copy_file_atomically(e.path().string(), (dir.path() / name).string(), component);
  }
  dir.publish([](const std::string& name) { return !is_model_file(name); });
}

std::shared_ptr<models::PretrainedModel> load_model(const ModelOptions& options) {
  models::LoadOptions lo;
  lo.dtype = peft::parse_dtype(options.dtype, "--dtype");
  configure_threads(options.threads, options.bf16_autocast || lo.dtype != at::kFloat);
  if (!options.quantize.empty()) {
    quant::QuantizeOptions q;
    q.method = quant::parse_quant_method(options.quantize);
    PEFT_CHECK(!options.double_quant || q.method != quant::QuantMethod::kInt8, ConfigError,
               "--double-quant",
               "double quantization applies to 4-bit (nf4 / fp4) only; got --quantize int8");
    if (q.method != quant::QuantMethod::kInt8)
      quant::validate_blocksize(options.quant_blocksize, "--quant-blocksize");
    q.blocksize = options.quant_blocksize;
    q.double_quant = options.double_quant;
    q.int8_threshold = options.int8_threshold;
    lo.quantize = q;
  } else {
    PEFT_CHECK(!options.double_quant, ConfigError, "--double-quant", "needs --quantize nf4 or fp4");
  }
  return models::load_pretrained(options.model_dir, lo);
}

std::string adapter_dir_of(const std::string& entry) {
  const auto eq = entry.find('=');
  if (eq != std::string::npos && eq > 0 && entry.find('/') > eq) return entry.substr(eq + 1);
  return entry;
}

std::shared_ptr<PeftModel> load_adapters(const std::shared_ptr<models::PretrainedModel>& model,
                                         const std::vector<std::string>& dirs, bool is_trainable) {
  if (dirs.empty()) return nullptr;
  std::shared_ptr<PeftModel> pm;
  std::set<std::string> used;
  std::vector<std::string> names;
  for (size_t i = 0; i < dirs.size(); ++i) {
    const std::string dir = adapter_dir_of(dirs[i]);
    std::string name = "default";
    if (dir != dirs[i]) {  // NAME=DIR
      name = dirs[i].substr(0, dirs[i].size() - dir.size() - 1);
      PEFT_CHECK(!used.count(name), ConfigError, "--adapter",
                 "adapter name \"" << name << "\" is given twice");
    } else if (i > 0) {
      name = std::filesystem::path(dirs[i]).lexically_normal().filename().string();
      if (name.empty())
        name = std::filesystem::path(dirs[i]).lexically_normal().parent_path().filename().string();
      if (name.empty() || name == "default") name = "adapter";
      std::string base = name;
      for (int k = 2; used.count(name); ++k) name = base + "_" + std::to_string(k);
    }
    used.insert(name);
    names.push_back(name);
    if (!pm) {
      pm = PeftModel::from_pretrained(model, dir, name, is_trainable);
    } else {
      pm->load_adapter(dir, name, is_trainable);
    }
  }
  pm->set_adapters(names, !is_trainable);
  return pm;
}

}  // namespace peft::cli
