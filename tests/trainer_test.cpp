// The trainer: gradient accumulation equals one big batch, resume equals an uninterrupted run,
// checkpoints, learning, and `peft train` end to end against PEFT + PyTorch's own training run.
#include "peft/train/trainer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace train = peft::train;
using peft::test::compare;

namespace {

const std::string kBase =
    "golden/train-llama-qv/base";  // tiny Llama: hidden 64, 2 layers, vocab 256

struct TrainSetup {
  std::shared_ptr<peft::models::PretrainedModel> model;
  std::shared_ptr<peft::PeftModel> peft;
};

// The same model and adapter initialisation every time.
TrainSetup make_setup(double dropout = 0.0) {
  TrainSetup s;
  s.model = peft::models::load_pretrained(peft::test::fixture(kBase));
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = dropout;
  c.target_modules = std::vector<std::string>{"q_proj", "v_proj", "down_proj"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kGaussian;
  torch::manual_seed(11);
  s.peft = std::make_shared<peft::PeftModel>(s.model, c);
  return s;
}

// Examples of different lengths (so batches need padding), the first two tokens of each masked.
std::vector<train::Example> examples(int n, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<train::Example> out;
  for (int i = 0; i < n; ++i) {
    const int64_t len = 5 + (i * 3) % 7;
    train::Example ex;
    auto ids = torch::randint(256, {len}, torch::kLong);
    for (int64_t t = 0; t < len; ++t) ex.input_ids.push_back(ids[t].item<int64_t>());
    ex.labels = ex.input_ids;
    ex.labels[0] = ex.labels[1] = -100;
    ex.line = i + 1;
    out.push_back(std::move(ex));
  }
  return out;
}

std::map<std::string, at::Tensor> adapter_of(const peft::PeftModel& pm) {
  std::map<std::string, at::Tensor> out;
  for (auto& [k, v] : pm.get_peft_model_state_dict("default")) out[k] = v.detach().clone();
  return out;
}

train::TrainingArguments args_in(const fs::path& dir) {
  train::TrainingArguments a;
  a.output_dir = dir.string();
  a.adamw = {.lr = 5e-3, .weight_decay = 0.01};
  a.write_loss_plot = false;
  return a;
}

train::TrainResult run(TrainSetup& s, train::TrainingArguments a, std::vector<train::Example> data,
                       std::function<bool(int64_t)> stop = {}, const std::string& resume = "") {
  train::Trainer t(s.model, s.peft, std::move(a), std::move(data));
  std::ostringstream sink;
  t.out = &sink;
  t.should_stop = std::move(stop);
  if (!resume.empty()) t.resume_from_checkpoint(resume);
  return t.train();
}

}  // namespace

TEST(Trainer, GradientAccumulationOfKBatchesOfBOverKEqualsOneBatchOfB) {
  peft::test::TempDir tmp;
  std::vector<std::vector<double>> losses;
  std::vector<std::map<std::string, at::Tensor>> adapters;
  for (auto [bs, accum] : {std::pair<int64_t, int64_t>{4, 1}, {2, 2}, {1, 4}}) {
    TrainSetup s = make_setup();
    auto a = args_in(tmp.path() / ("bs" + std::to_string(bs)));
    a.batch_size = bs;
    a.gradient_accumulation_steps = accum;
    a.max_steps = 3;  // 8 examples: 2 updates per epoch, so the third starts a new epoch
    a.shuffle = false;
    a.lr_scheduler = train::ScheduleKind::kConstant;
    losses.push_back(run(s, a, examples(8, 5)).losses);
    adapters.push_back(adapter_of(*s.peft));
  }
  for (size_t k = 1; k < losses.size(); ++k) {
    ASSERT_EQ(losses[k].size(), 3u);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_NEAR(losses[k][i], losses[0][i], 1e-6) << "run " << k << " step " << i;
    for (auto& [name, t] : adapters[0])
      EXPECT_EQ(compare(adapters[k].at(name), t, 1e-6), "") << name;
  }
}

TEST(Trainer, ResumeFromACheckpointContinuesExactlyLikeAnUninterruptedRun) {
  peft::test::TempDir tmp;
  auto a = args_in(tmp.path() / "full");
  a.batch_size = 2;
  a.max_steps = 7;  // 5 examples: 3 updates per epoch, so the run crosses two epoch boundaries
  a.warmup_steps = 2;
  a.max_grad_norm = 0.5;
  a.seed = 9;
  TrainSetup full = make_setup(/*dropout=*/0.1);
  torch::manual_seed(123);
  const auto reference = run(full, a, examples(5, 6));

  a.output_dir = (tmp.path() / "cut").string();
  a.save_every = 2;
  TrainSetup cut = make_setup(0.1);
  torch::manual_seed(123);
  const auto first = run(cut, a, examples(5, 6), [](int64_t step) { return step == 4; });
  ASSERT_EQ(first.losses.size(), 4u);
  const fs::path ckpt = tmp.path() / "cut" / "checkpoint-4";
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                        "trainer_state.json"}) {
    EXPECT_TRUE(fs::exists(ckpt / f)) << f;
  }
  for (const auto& e : fs::directory_iterator(tmp.path() / "cut")) {
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }

  TrainSetup resumed = make_setup(0.1);
  torch::manual_seed(999);  // a different generator state: the checkpoint's must be restored
  const auto rest = run(resumed, a, examples(5, 6), {}, ckpt.string());
  ASSERT_EQ(rest.losses.size(), 3u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(first.losses[i], reference.losses[i]) << "step " << i + 1;
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(rest.losses[i], reference.losses[i + 4]) << "step " << i + 5;
  EXPECT_EQ(rest.steps, 7);
  const auto want = adapter_of(*full.peft);
  for (auto& [name, t] : adapter_of(*resumed.peft))
    EXPECT_EQ(compare(t, want.at(name), 0.0), "") << name;
  // The log of the resumed run holds every step once.
  std::istringstream log(peft::test::read_file((tmp.path() / "cut" / "train_log.jsonl").string()));
  std::vector<int64_t> steps;
  for (std::string line; std::getline(log, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) steps.push_back(j["step"].get<int64_t>());
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
}

TEST(Trainer, ReportsEveryStepTimeAndTheSteadyStateMedian) {
  EXPECT_EQ(peft::train::speed_warmup_steps(1), 0);
  EXPECT_EQ(peft::train::speed_warmup_steps(2), 1);
  EXPECT_EQ(peft::train::speed_warmup_steps(10), 2);
  peft::test::TempDir tmp;
  TrainSetup s = make_setup();
  auto a = args_in(tmp.path() / "speed");
  a.batch_size = 2;
  a.max_steps = 5;
  const auto result = run(s, a, examples(6, 2));
  ASSERT_EQ(result.step_seconds.size(), 5u);
  EXPECT_EQ(result.warmup_steps, 2);
  std::vector<double> steady(result.step_seconds.begin() + 2, result.step_seconds.end());
  std::sort(steady.begin(), steady.end());
  EXPECT_EQ(result.median_step_seconds, steady[1]);
  EXPECT_GT(result.steady_tokens_per_second, 0.0);
  double total = 0;
  for (double t : result.step_seconds) total += t;
  EXPECT_LE(total, result.seconds);  // steps are inside the run's wall time
}

TEST(Trainer, GradientCheckpointingGivesTheSameRun) {
  peft::test::TempDir tmp;
  std::vector<std::vector<double>> losses;
  for (bool gc : {false, true}) {
    TrainSetup s = make_setup(/*dropout=*/0.1);
    auto a = args_in(tmp.path() / (gc ? "gc" : "plain"));
    a.batch_size = 3;
    a.max_steps = 3;
    a.gradient_checkpointing = gc;
    torch::manual_seed(5);
    losses.push_back(run(s, a, examples(6, 2)).losses);
    EXPECT_EQ(s.model->is_gradient_checkpointing(), gc);
  }
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(losses[1][i], losses[0][i], 1e-6) << "step " << i + 1;
}

TEST(Trainer, Bf16MixedPrecisionFollowsFloat32AndKeepsFloat32AdapterWeights) {
  peft::test::TempDir tmp;
  std::vector<std::vector<double>> losses;
  for (bool bf16 : {false, true}) {
    TrainSetup s = make_setup();
    auto a = args_in(tmp.path() / (bf16 ? "bf16" : "fp32"));
    a.batch_size = 3;
    a.max_steps = 4;
    a.bf16 = bf16;
    losses.push_back(run(s, a, examples(6, 2)).losses);
    for (const auto& [name, t] : adapter_of(*s.peft))
      EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
  }
  ASSERT_EQ(losses[1].size(), 4u);
  bool differs = false;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(losses[1][i], losses[0][i], 0.02 * losses[0][i]) << "step " << i + 1;
    differs = differs || losses[1][i] != losses[0][i];
  }
  EXPECT_TRUE(differs) << "bf16 gave float32's losses bit for bit: autocast did not run";
}

TEST(Trainer, ResumeWithOtherOptionsIsRefused) {
  peft::test::TempDir tmp;
  auto a = args_in(tmp.path());
  a.max_steps = 2;
  a.save_every = 2;
  TrainSetup s = make_setup();
  run(s, a, examples(4, 1));
  a.batch_size = 3;
  TrainSetup again = make_setup();
  EXPECT_THROW(run(again, a, examples(4, 1), {}, (tmp.path() / "checkpoint-2").string()),
               peft::ConfigError);
}

TEST(Trainer, LearnsARepeatedSequenceAndWritesAdapterLogAndPicture) {
  peft::test::TempDir tmp;
  std::vector<train::Example> data(6, train::Example{.input_ids = {3, 14, 15, 92, 65, 35, 89, 79}});
  for (auto& ex : data) ex.labels = ex.input_ids;
  TrainSetup s = make_setup();
  auto a = args_in(tmp.path());
  a.adamw.lr = 2e-2;
  a.batch_size = 3;
  a.num_train_epochs = 8;
  a.write_loss_plot = true;
  train::Trainer t(s.model, s.peft, a, data, data);
  std::ostringstream sink;
  t.out = &sink;
  EXPECT_EQ(t.total_steps(), 16);
  const auto r = t.train();
  ASSERT_TRUE(r.eval_loss_before && r.eval_loss_after);
  EXPECT_LT(*r.eval_loss_after, 0.5 * *r.eval_loss_before);
  for (const char* f :
       {"adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "loss_curve.svg"}) {
    EXPECT_TRUE(fs::exists(tmp.path() / f)) << f;
  }
  EXPECT_NE(sink.str().find("eval loss before training"), std::string::npos) << sink.str();
}

TEST(Trainer, TrainsASequenceClassifierWithItsHeadSaved) {
  // BERT with 3 labels: LoRA on query / value, the classifier as modules_to_save (added by
  // task_type SEQ_CLS).
  peft::test::TempDir tmp;
  auto model = peft::models::load_pretrained(peft::test::fixture("golden/model-bert-seqcls/base"));
  torch::manual_seed(3);  // dropout
  peft::LoraConfig c;
  c.task_type = peft::TaskType::kSeqCls;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"query", "value"};
  auto pm = std::make_shared<peft::PeftModel>(model, c);
  std::vector<train::Example> data;
  for (int64_t i = 0; i < 6; ++i) {
    data.push_back(train::Example{
        .input_ids = {2, 100 + 40 * (i % 3), 100 + 40 * (i % 3), 7 + i, 3}, .label = i % 3});
  }
  auto a = args_in(tmp.path());
  a.adamw.lr = 1e-2;
  a.batch_size = 3;
  a.num_train_epochs = 30;
  train::Trainer t(model, pm, a, data, data);
  std::ostringstream sink;
  t.out = &sink;
  const auto r = t.train();
  ASSERT_TRUE(r.eval_loss_before && r.eval_loss_after);
  EXPECT_LT(*r.eval_loss_after, 0.5 * *r.eval_loss_before);
  const auto saved =
      peft::io::load_safetensors((tmp.path() / "adapter_model.safetensors").string());
  bool head = false;
  for (const auto& [key, value] : saved) head = head || key.find("classifier") != std::string::npos;
  EXPECT_TRUE(head) << "the trained head is part of the adapter";
}

// ---------------------------------------------------------------------------------------------------------------
// `peft train` end to end.

namespace {

using peft::test::q;

// The golden case's batch as {"input_ids","labels"} lines.
fs::path golden_jsonl(const fs::path& dir) {
  auto inputs =
      peft::io::load_safetensors(peft::test::fixture("golden/train-llama-qv/inputs.safetensors"));
  const at::Tensor ids = inputs.at("input_ids"), labels = inputs.at("labels");
  std::string text;
  for (int64_t r = 0; r < ids.size(0); ++r) {
    nlohmann::json line;
    line["input_ids"] =
        std::vector<int64_t>(ids[r].data_ptr<int64_t>(), ids[r].data_ptr<int64_t>() + ids.size(1));
    line["labels"] = std::vector<int64_t>(labels[r].data_ptr<int64_t>(),
                                          labels[r].data_ptr<int64_t>() + labels.size(1));
    text += line.dump() + "\n";
  }
  peft::test::write_file((dir / "train.jsonl").string(), text);
  return dir / "train.jsonl";
}

// `peft train` on the golden case as PEFT ran it (5 steps of the whole batch, lr 0.01, constant),
// plus `extra` flags, into dir/out; returns the CLI result and the losses of the log.
struct GoldenRun {
  peft::test::CliRun cli;
  std::vector<double> losses;
};
GoldenRun run_golden_train(const fs::path& dir, const std::string& extra = "") {
  const fs::path golden = peft::test::fixture("golden/train-llama-qv");
  const int64_t rows =
      peft::io::load_safetensors((golden / "inputs.safetensors").string()).at("input_ids").size(0);
  GoldenRun run;
  run.cli = peft::test::peft_cli(
      "train " + extra + " --model " + q(golden / "base") + " --adapter " +
      q(golden / "adapter_initial") + " --data " + q(golden_jsonl(dir)) + " --out " +
      q(dir / "out") + " --steps 5 --batch-size " + std::to_string(rows) +
      " --lr 0.01 --weight-decay 0.01 --no-shuffle --lr-scheduler constant");
  if (run.cli.code != 0) return run;
  std::istringstream log(peft::test::read_file((dir / "out" / "train_log.jsonl").string()));
  for (std::string line; std::getline(log, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    run.losses.push_back(j["loss"].get<double>());
    // Every update reports its own wall time.
    EXPECT_TRUE(j.contains("step_time_s") && j["step_time_s"].get<double>() > 0.0) << line;
  }
  return run;
}

}  // namespace

TEST(PeftTrainCli, ReproducesPeftAndPyTorchTrainingStepByStep) {
  peft::test::TempDir tmp;
  const fs::path golden = peft::test::fixture("golden/train-llama-qv");
  const auto run = run_golden_train(tmp.path());
  const auto& r = run.cli;
  const auto& losses = run.losses;
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("trainable params: "), std::string::npos) << r.output;
  const auto expected = peft::io::load_safetensors((golden / "expected.safetensors").string());
  EXPECT_NE(r.output.find("speed: median step "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("over 3 step(s) after 2 warm-up step(s)"), std::string::npos) << r.output;
  EXPECT_EQ(compare(torch::tensor(losses, torch::kDouble), expected.at("losses"), 2e-5, 1e-5), "");
  const auto adapter =
      peft::io::load_safetensors((tmp.path() / "out" / "adapter_model.safetensors").string());
  ASSERT_EQ(adapter.size(), 8u);
  for (const auto& [key, t] : adapter)
    EXPECT_EQ(compare(t, expected.at("final." + key), 1e-4, 1e-3), "") << key;
  EXPECT_TRUE(fs::exists(tmp.path() / "out" / "loss_curve.svg"));
}

TEST(PeftTrainCli, Bf16AutocastStaysCloseToPeftsFloat32Run) {
  peft::test::TempDir tmp;
  const auto run = run_golden_train(tmp.path(), "--bf16");
  ASSERT_EQ(run.cli.code, 0) << run.cli.output;
  EXPECT_NE(run.cli.output.find(" thread(s), bf16 autocast\n"), std::string::npos)
      << run.cli.output;
  const auto& losses = run.losses;
  const auto expected =
      peft::io::load_safetensors(peft::test::fixture("golden/train-llama-qv/expected.safetensors"));
  const auto want = expected.at("losses").to(torch::kDouble);
  ASSERT_EQ(static_cast<int64_t>(losses.size()), want.numel());
  double worst = 0;
  for (size_t i = 0; i < losses.size(); ++i) {
    const double w = want[static_cast<int64_t>(i)].item<double>();
    worst = std::max(worst, std::abs(losses[i] - w) / w);
  }
  EXPECT_LT(worst, 0.01) << "bf16 losses stray from PEFT's float32 run";
  EXPECT_GT(worst, 1e-6) << "bf16 losses equal float32's: autocast did not run";
  for (const auto& [key, t] :
       peft::io::load_safetensors((tmp.path() / "out" / "adapter_model.safetensors").string()))
    EXPECT_EQ(t.scalar_type(), at::kFloat) << key;  // float32 master weights are what is saved
}

TEST(PeftTrainCli, BadDataLineFailsBeforeWritingAnything) {
  peft::test::TempDir tmp;
  peft::test::write_file(tmp.str("bad.jsonl"),
                         "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2, \"x\"]}\n");
  const auto r = peft::test::peft_cli("train --model " + q(peft::test::fixture(kBase)) +
                                      " --data " + q(tmp.path() / "bad.jsonl") + " --out " +
                                      q(tmp.path() / "out") + " --steps 1");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("bad.jsonl:2: \"input_ids\"[2] must be an integer"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
}

TEST(PeftTrainCli, LoraPlusAndLoraFaRunAndResume) {
  peft::test::TempDir tmp;
  const fs::path data = golden_jsonl(tmp.path());
  for (const std::string opt : {"loraplus", "lorafa"}) {
    const fs::path out = tmp.path() / opt;
    const std::string common = "train --model " + q(peft::test::fixture(kBase)) + " --data " +
                               q(data) + " --batch-size 1 --steps 4 --save-every 2 --optimizer " +
                               opt + " --out " + q(out);
    const auto r = peft::test::peft_cli(common);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto resumed = peft::test::peft_cli(common + " --resume " + q(out / "checkpoint-2"));
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resumed from"), std::string::npos);
  }
}

TEST(PeftTrainCli, MainJobAssetsLoadTrainAndLearn) {
  // The README's main job in small: the embedded demo model, tokenizer, data and LoRA config.
  peft::test::TempDir tmp;
  const fs::path demo = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo";
  const auto r = peft::test::peft_cli(
      "train --model " + q(demo / "model") + " --data " + q(demo / "data" / "train.jsonl") +
      " --eval-data " + q(demo / "data" / "eval.jsonl") + " --config " +
      q(demo / "lora_config.json") + " --out " + q(tmp.path() / "out") +
      " --steps 20 --batch-size 16 --lr 3e-3 --lr-scheduler cosine --warmup-steps 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto at = r.output.find("eval loss: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  double before = 0, after = 0;
  ASSERT_EQ(std::sscanf(r.output.c_str() + at, "eval loss: %lf -> %lf", &before, &after), 2)
      << r.output;
  EXPECT_LT(after, 0.5 * before) << r.output;
  EXPECT_NE(r.output.find("sample after training"), std::string::npos);
  EXPECT_TRUE(fs::exists(tmp.path() / "out" / "adapter_model.safetensors"));
}
