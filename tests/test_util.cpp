#include "test_util.h"

#include <sys/wait.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

namespace peft::test {

std::string fixture(const std::string& rel) { return std::string(PEFT_FIXTURES_DIR) + "/" + rel; }

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("peft_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string compare(const at::Tensor& actual, const at::Tensor& expected, double atol,
                    double rtol) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream os;
    os << "shape " << actual.sizes() << " != expected " << expected.sizes();
    return os.str();
  }
  if (actual.numel() == 0) return "";
  auto a = actual.detach().to(torch::kCPU, torch::kFloat64);
  auto e = expected.detach().to(torch::kCPU, torch::kFloat64);
  auto diff = (a - e).abs();
  auto tol = atol + rtol * e.abs();
  auto bad = (diff > tol).logical_or(diff.isnan());
  if (!bad.any().item<bool>()) return "";
  auto flat_index = diff.flatten().nan_to_num(1e300).argmax().item<int64_t>();
  std::ostringstream os;
  os << "max |diff| " << diff.flatten()[flat_index].item<double>() << " at flat index "
     << flat_index << " (actual " << a.flatten()[flat_index].item<double>() << ", expected "
     << e.flatten()[flat_index].item<double>() << "), " << bad.sum().item<int64_t>() << " of "
     << a.numel() << " elements outside atol " << atol << " rtol " << rtol;
  return os.str();
}

CliRun peft_cli(const std::string& args, const std::string& env) {
  // `exec`: the shell becomes the command, so a signal that ends it shows in the status.
  const std::string cmd =
      (env.empty() ? "" : "export " + env + "; ") + "exec " + PEFT_CLI_PATH + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out,
          WIFSIGNALED(status) ? WTERMSIG(status) : 0};
}

void write_file(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json byte_level_vocab() {
  nlohmann::json vocab = nlohmann::json::object();
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int cp = printable ? b : 256 + n++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    vocab[s] = b;
  }
  return vocab;
}

nlohmann::json byte_level_tokenizer() {
  const nlohmann::json level = {{"type", "ByteLevel"},
                                {"add_prefix_space", false},
                                {"trim_offsets", true},
                                {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", nlohmann::json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", level},
          {"post_processor", nullptr},
          {"decoder", level},
          {"model",
           {{"type", "BPE"}, {"vocab", byte_level_vocab()}, {"merges", nlohmann::json::array()}}}};
}

std::string q(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

MLPImpl::MLPImpl(int64_t in, int64_t hidden, int64_t out) {
  lin0 = register_module("lin0", peft::nn::Linear(in, hidden));
  lin1 = register_module("lin1", peft::nn::Linear(hidden, out));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) { return lin1(torch::relu(lin0(x))); }

std::vector<std::string> dir_entries(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

std::string state_dict_difference(const std::vector<std::pair<std::string, at::Tensor>>& a,
                                  const std::vector<std::pair<std::string, at::Tensor>>& b) {
  if (a.size() != b.size())
    return std::to_string(a.size()) + " tensors vs " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first) return "key " + a[i].first + " vs " + b[i].first;
    if (!at::equal(a[i].second, b[i].second)) return "tensor " + a[i].first + " differs";
  }
  return "";
}

}  // namespace peft::test
