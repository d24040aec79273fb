#include "gptq_pack.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "peft/io/safetensors.h"

namespace fs = std::filesystem;

namespace peft::test {

GptqPacked pack_gptq(const at::Tensor& q, const at::Tensor& z, const at::Tensor& scales,
                     const at::Tensor& g_idx, int bits, bool v1) {
  const int64_t in = q.size(0), out = q.size(1), groups = z.size(0), p = 32 / bits;
  auto qa = q.accessor<int64_t, 2>();
  auto za = z.accessor<int64_t, 2>();
  at::Tensor qweight = torch::zeros({in / p, out}, torch::kInt64);
  at::Tensor qzeros = torch::zeros({groups, out / p}, torch::kInt64);
  auto qw = qweight.accessor<int64_t, 2>();
  auto qz = qzeros.accessor<int64_t, 2>();
  for (int64_t j = 0; j < in / p; ++j)
    for (int64_t o = 0; o < out; ++o) {
      uint32_t word = 0;
      for (int64_t k = 0; k < p; ++k) word |= static_cast<uint32_t>(qa[j * p + k][o]) << (bits * k);
      qw[j][o] = static_cast<int32_t>(word);
    }
  uint32_t ones = 0;
  for (int s = 0; s < 32; s += bits) ones |= uint32_t{1} << s;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t c = 0; c < out / p; ++c) {
      uint32_t word = 0;
      for (int64_t k = 0; k < p; ++k) word |= static_cast<uint32_t>(za[g][c * p + k]) << (bits * k);
      if (v1) word -= ones;  // unsigned: wraps as int32 storage does
      qz[g][c] = static_cast<int32_t>(word);
    }
  return {qweight.to(torch::kInt32), qzeros.to(torch::kInt32), scales, g_idx.to(torch::kInt32)};
}

GptqCodes rtn_quantize(const at::Tensor& W, int bits, int group_size, bool desc_act) {
  const int64_t out = W.size(0), in = W.size(1);
  const int64_t gs = group_size == -1 ? in : group_size;
  const int64_t groups = (in + gs - 1) / gs;
  // The order in which inputs are assigned to groups: plain, or a fixed shuffle (act-order).
  at::Tensor order = desc_act ? torch::randperm(in, torch::TensorOptions().dtype(torch::kInt64))
                              : torch::arange(in, torch::kInt64);
  at::Tensor g_idx = torch::empty({in}, torch::kInt64);
  for (int64_t pos = 0; pos < in; ++pos) g_idx[order[pos].item<int64_t>()] = pos / gs;
  const int64_t maxq = (int64_t{1} << bits) - 1;
  at::Tensor q = torch::empty({in, out}, torch::kInt64);
  at::Tensor z = torch::empty({groups, out}, torch::kInt64);
  at::Tensor s = torch::empty({groups, out}, torch::kFloat);
  const at::Tensor Wt = W.t().to(torch::kFloat).contiguous();  // (in, out)
  for (int64_t g = 0; g < groups; ++g) {
    const at::Tensor rows = (g_idx == g).nonzero().view({-1});
    const at::Tensor block = Wt.index_select(0, rows);  // (n, out)
    const at::Tensor lo = std::get<0>(block.min(0)).clamp_max(0.0);
    const at::Tensor hi = std::get<0>(block.max(0)).clamp_min(0.0);
    const at::Tensor scale =
        ((hi - lo) / static_cast<double>(maxq)).clamp_min(1e-8).to(torch::kHalf).to(torch::kFloat);
    const at::Tensor zero = torch::round(-lo / scale).clamp(0, maxq);
    s[g] = scale;
    z[g] = zero.to(torch::kInt64);
    q.index_copy_(0, rows, torch::round(block / scale + zero).clamp(0, maxq).to(torch::kInt64));
  }
  return {q, z, s.to(torch::kHalf), g_idx};
}

at::Tensor dequantize_by_hand(const GptqCodes& c) {
  const int64_t in = c.q.size(0), out = c.q.size(1);
  auto qa = c.q.accessor<int64_t, 2>();
  auto za = c.z.accessor<int64_t, 2>();
  const at::Tensor sf = c.scales.to(torch::kDouble);
  auto sa = sf.accessor<double, 2>();
  auto ga = c.g_idx.accessor<int64_t, 1>();
  at::Tensor W = torch::empty({out, in}, torch::kDouble);
  auto wa = W.accessor<double, 2>();
  for (int64_t i = 0; i < in; ++i)
    for (int64_t o = 0; o < out; ++o) {
      const int64_t g = ga[i];
      wa[o][i] = sa[g][o] * static_cast<double>(qa[i][o] - za[g][o]);
    }
  return W.to(torch::kFloat);
}

void write_gptq_checkpoint(const std::string& float_dir, const std::string& out_dir, int bits,
                           int group_size, bool desc_act, bool v1) {
  fs::create_directories(out_dir);
  auto tensors = io::load_safetensors((fs::path(float_dir) / "model.safetensors").string());
  std::map<std::string, at::Tensor> written;
  for (auto& [key, t] : tensors) {
    const bool linear = key.rfind("model.layers.", 0) == 0 && t.dim() == 2 && key.size() > 7 &&
                        key.compare(key.size() - 7, 7, ".weight") == 0;
    if (!linear) {
      written[key] = t.contiguous();
      continue;
    }
    const std::string prefix = key.substr(0, key.size() - 6);
    const GptqCodes c = rtn_quantize(t, bits, group_size, desc_act);
    const GptqPacked p = pack_gptq(c.q, c.z, c.scales, c.g_idx, bits, v1);
    written[prefix + "qweight"] = p.qweight;
    written[prefix + "qzeros"] = p.qzeros;
    written[prefix + "scales"] = p.scales;
    written[prefix + "g_idx"] = p.g_idx;
  }
  io::save_safetensors((fs::path(out_dir) / "model.safetensors").string(), written);
  for (const auto& e : fs::directory_iterator(float_dir)) {
    const std::string name = e.path().filename().string();
    if (name == "model.safetensors" || name == "config.json") continue;
    fs::copy_file(e.path(), fs::path(out_dir) / name, fs::copy_options::overwrite_existing);
  }
  std::ifstream f(fs::path(float_dir) / "config.json");
  nlohmann::json config = nlohmann::json::parse(f);
  config["quantization_config"] = {
      {"quant_method", "gptq"}, {"bits", bits}, {"group_size", group_size},
      {"desc_act", desc_act},   {"sym", false}, {"checkpoint_format", v1 ? "gptq" : "gptq_v2"}};
  std::ofstream(fs::path(out_dir) / "config.json") << config.dump(2);
}

}  // namespace peft::test
