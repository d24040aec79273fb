// Fuzz targets of the tensor files: safetensors (header and data), and the bitsandbytes quant state
// and GPTQ tensors carried in one.
#include <ATen/ATen.h>

#include <map>

#include "fuzz_target.h"
#include "mem_file.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/quant/gptq.h"
#include "peft/quant/quantized_weight.h"

namespace peft::fuzz {
namespace {

// Reads every byte of `t` (a view into the mapped file), so an entry whose range escaped the
// file would be caught.
void touch(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const auto bytes = static_cast<size_t>(c.numel()) * static_cast<size_t>(c.element_size());
  const auto* p = static_cast<const volatile uint8_t*>(c.data_ptr());
  uint8_t x = 0;
  for (size_t i = 0; i < bytes; ++i) x = static_cast<uint8_t>(x ^ p[i]);
  (void)x;
}

}  // namespace

void safetensors(const uint8_t* data, size_t size) {
  const MemFile file(std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const io::SafetensorsFile st(file.path());
    for (const auto& name : st.keys()) {
      (void)st.shape(name);
      touch(st.get(name));
    }
    (void)st.metadata();
  } catch (const peft::Error&) {
  }
}

void bnb_state(const uint8_t* data, size_t size) {
  // Two bytes: the layer's (out, in) in 1..256; then a safetensors file with the layer's entries
  // under "layer.weight" (as a bitsandbytes checkpoint stores them).
  if (size < 2) return;
  const int64_t out = 1 + data[0], in = 1 + data[1];
  const MemFile file(std::string_view(reinterpret_cast<const char*>(data) + 2, size - 2));
  try {
    auto tensors = io::load_safetensors(file.path());
    const auto q = quant::take_bnb_weight(tensors, "layer.", {out, in}, at::kFloat, file.path());
    if (q) touch((*q)->dequantize());
  } catch (const peft::Error&) {
  }
}

void gptq_state(const uint8_t* data, size_t size) {
  // Five bytes: bits (2 / 4 / 8, or 3 to reach the refusal), group size (0: -1, else 1..64),
  // checkpoint format (v1 / v2), the layer's out and in (1..256); then a safetensors file with the
  // layer's GPTQ entries under "layer." (qweight, qzeros, scales, g_idx).
  if (size < 5) return;
  quant::GptqOptions o;
  const int64_t bit_choices[] = {2, 4, 8, 3};
  o.bits = bit_choices[data[0] % 4];
  o.group_size = data[1] == 0 ? -1 : 1 + data[1] % 64;
  o.format = data[2] % 2 ? quant::GptqFormat::kV1 : quant::GptqFormat::kV2;
  const int64_t out = 1 + data[3], in = 1 + data[4];
  const MemFile file(std::string_view(reinterpret_cast<const char*>(data) + 5, size - 5));
  try {
    auto tensors = io::load_safetensors(file.path());
    auto q = quant::take_gptq_tensors(tensors, "layer.", {out, in}, o, file.path());
    if (!q) return;
    const auto w = quant::QuantizedWeight::from_gptq(std::move(*q), at::kFloat);
    touch(w->dequantize());
    touch(w->linear(at::ones({2, in}), at::Tensor()));
  } catch (const peft::Error&) {
  }
}

}  // namespace peft::fuzz
