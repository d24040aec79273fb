// Trainer checkpoints (adapter + optimizer + schedule position + RNG + data position, written
// atomically) and the JSONL log.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>

#include "peft/error.h"
#include "peft/io/atomic_write.h"
#include "peft/io/crash_point.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"
#include "peft/io/safetensors.h"
#include "peft/io/staged_directory.h"
#include "trainer_state.h"

namespace fs = std::filesystem;

namespace peft::train {

namespace {

using json = nlohmann::json;
using io::crash_point;

constexpr int kCheckpointVersion = 1;

// The generators dropout draws from: the CPU one, plus the model's device's when it is not the CPU.
std::vector<std::pair<std::string, at::Generator>> generators(
    const models::PretrainedModel& model) {
  std::vector<std::pair<std::string, at::Generator>> out;
  out.emplace_back("rng/cpu", at::detail::getDefaultCPUGenerator());
  const auto params = model.parameters();
  if (!params.empty() && !params.front().device().is_cpu()) {
    const c10::Device d = params.front().device();
    out.emplace_back("rng/" + d.str(), at::globalContext().defaultGenerator(d));
  }
  return out;
}

std::string read_text(const fs::path& p) {
  if (!fs::exists(p))
    throw FormatError("trainer", "cannot read \"" + p.string() +
                                     "\" (hint: is this a checkpoint-<step> folder?)");
  return io::read_file(p, "trainer");
}

}  // namespace

std::string Trainer::State::log_path() const {
  return args.log_file.empty() ? (fs::path(args.output_dir) / "train_log.jsonl").string()
                               : args.log_file;
}

void Trainer::State::start_log(bool keep_history) {
  if (!keep_history) log_history.clear();
}

void Trainer::State::append_log(json record) { log_history.push_back(std::move(record)); }

void Trainer::State::publish_log() const {
  const fs::path path(log_path());
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  io::write_file_atomically(
      path.string(),
      [&](const io::ByteSink& sink) {
        for (const auto& r : log_history) {
          const std::string line = r.dump() + "\n";
          sink(line.data(), line.size());
        }
      },
      "trainer");
}

void Trainer::State::save_checkpoint() {
  crash_point("checkpoint:begin");
  // The folder is built beside checkpoint-<step> and published in one rename: a kill at any moment
  // leaves either no checkpoint-<step> (or the one before) or a complete one.
  io::StagedDirectory dir(
      (fs::path(args.output_dir) / ("checkpoint-" + std::to_string(global_step))).string(),
      "trainer");
  const fs::path tmp = dir.path();
  peft->save_pretrained(tmp.string());
  crash_point("checkpoint:adapter");
  auto tensors = optimizer->state_dict();
  for (auto& [key, gen] : generators(*model)) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    tensors.emplace_back(key, gen.get_state());
  }
  io::save_safetensors((tmp / "optimizer.safetensors").string(), tensors);
  json state = {{"version", kCheckpointVersion},
                {"global_step", global_step},
                {"epoch", epoch},
                {"cursor", cursor},
                {"tokens_seen", tokens_seen},
                {"total_steps", schedule.total_steps},
                {"optimizer", to_string(optimizer->kind())},
                {"seed", args.seed},
                {"shuffle", args.shuffle},
                {"batch_size", args.batch_size},
                {"gradient_accumulation_steps", args.gradient_accumulation_steps},
                {"train_examples", train.size()},
                {"log_history", log_history}};
  io::write_file_atomically((tmp / "trainer_state.json").string(), state.dump(2) + "\n", "trainer");
  dir.publish();
  crash_point("checkpoint:published");
  publish_log();
  crash_point("checkpoint:done");
}

void Trainer::resume_from_checkpoint(const std::string& dir) {
  State& s = *s_;
  const fs::path d(dir);
  json state;
  try {
    state = io::parse_json(read_text(d / "trainer_state.json"), "trainer",
                           (d / "trainer_state.json").string());
  } catch (const json::exception& e) {
    throw FormatError("trainer",
                      (d / "trainer_state.json").string() + ": not valid JSON: " + e.what());
  }
  auto want = [&](const char* key, const json& expected) {
    if (!state.contains(key) || state[key] != expected) {
      throw ConfigError("trainer",
                        (d / "trainer_state.json").string() + ": \"" + key + "\" is " +
                            (state.contains(key) ? state[key].dump() : "missing") +
                            " but this run has " + expected.dump() +
                            " (hint: resume with the options and data of the interrupted run)");
    }
  };
  want("version", kCheckpointVersion);
  want("optimizer", to_string(s.optimizer->kind()));
  want("seed", s.args.seed);
  want("shuffle", s.args.shuffle);
  want("batch_size", s.args.batch_size);
  want("gradient_accumulation_steps", s.args.gradient_accumulation_steps);
  want("train_examples", s.train.size());
  want("total_steps", total_steps());
  // Adapter weights (the folder is a PEFT adapter), then optimizer state and generators.
  const auto adapter = io::load_safetensors((d / "adapter_model.safetensors").string());
  s.peft->set_peft_model_state_dict(adapter, s.peft->active_adapter());
  const auto opt = io::load_safetensors((d / "optimizer.safetensors").string());
  s.optimizer->load_state_dict(opt, (d / "optimizer.safetensors").string());
  for (auto& [key, gen] : generators(*s.model)) {
    auto it = opt.find(key);
    if (it == opt.end())
      throw FormatError("trainer",
                        (d / "optimizer.safetensors").string() + ": missing \"" + key + "\"");
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(it->second);
  }
  s.global_step = state.at("global_step").get<int64_t>();
  s.epoch = state.at("epoch").get<int64_t>();
  s.cursor = state.at("cursor").get<int64_t>();
  s.tokens_seen = state.at("tokens_seen").get<int64_t>();
  s.log_history = state.at("log_history").get<std::vector<json>>();
  s.order = epoch_order(static_cast<int64_t>(s.train.size()), s.args.seed, s.epoch, s.args.shuffle);
}

}  // namespace peft::train
