// Shared helpers for the test binary: fixture paths, temporary directories, tensor comparison.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/lora/linear.h"

namespace peft::test {

// The model of PEFT's docs and tests: lin0 (in -> hidden), relu, lin1 (hidden -> out), built from
// peft::nn layers the way a user adapts their own model.
struct MLPImpl : torch::nn::Module {
  explicit MLPImpl(int64_t in = 10, int64_t hidden = 20, int64_t out = 2);
  at::Tensor forward(const at::Tensor& x);
  peft::nn::Linear lin0{nullptr};
  peft::nn::Linear lin1{nullptr};
};
TORCH_MODULE(MLP);

// tests/fixtures/<rel>
std::string fixture(const std::string& rel);

// A fresh temporary directory removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str(const std::string& rel = "") const { return (path_ / rel).string(); }

 private:
  std::filesystem::path path_;
};

// Empty string when allclose(actual, expected, atol, rtol) holds; otherwise a description with the
// max |diff| and its index. Use as EXPECT_EQ(peft::test::compare(a, b, 1e-6), "").
std::string compare(const at::Tensor& actual, const at::Tensor& expected, double atol,
                    double rtol = 0.0);

// Runs the `peft` command with `args` (shell-quoted by the caller); stdout and stderr together.
// `env` ("NAME=value ...") is put before the command.
struct CliRun {
  int code;  // exit status (-1 when it did not exit normally)
  std::string output;
  int signal = 0;  // the signal that ended it, if one did
};
CliRun peft_cli(const std::string& args, const std::string& env = "");

// Writes `text` to `path` (creating parent dirs).
void write_file(const std::string& path, const std::string& text);

// GPT-2's byte-to-unicode table as a tokenizer.json vocab: printable bytes map to themselves, the
// others to code points 256 + n; each byte's token gets id = the byte.
nlohmann::json byte_level_vocab();
// A whole tokenizer.json: byte-level BPE (ByteLevel pre-tokenizer and decoder) over
// byte_level_vocab(), no merges; gives the golden tiny models (256-token vocabularies) a tokenizer
// for `peft generate`.
nlohmann::json byte_level_tokenizer();
// `p` in single quotes, for peft_cli's shell command line.
std::string q(const std::filesystem::path& p);
std::string read_file(const std::string& path);

// The names in `dir` (not recursive), sorted.
std::vector<std::string> dir_entries(const std::filesystem::path& dir);

// "" when `a` and `b` (adapter state dicts, as get_peft_model_state_dict returns them) hold the
// same keys in the same order with bit-identical tensors; otherwise the first difference.
std::string state_dict_difference(const std::vector<std::pair<std::string, at::Tensor>>& a,
                                  const std::vector<std::pair<std::string, at::Tensor>>& b);

// What `f` throws (std::exception::what()), or "(no exception)".
std::string message_of(const std::function<void()>& f);

}  // namespace peft::test
