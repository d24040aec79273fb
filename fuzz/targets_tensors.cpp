// Fuzz targets of the tensor files: safetensors (header and data) and the bitsandbytes quant state
// carried in one.
#include <ATen/ATen.h>

#include <map>

#include "fuzz_target.h"
#include "mem_file.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
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

}  // namespace peft::fuzz
