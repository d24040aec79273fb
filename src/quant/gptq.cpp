// GPTQ checkpoint tensors: checks, the reference unpacking and dequantization (ATen ops, any
// device), and reading / writing a layer's entries. The packing rules are described in
// include/peft/quant/gptq.h.
#include "peft/quant/gptq.h"

#include <ATen/ATen.h>

#include <sstream>

#include "peft/error.h"
#include "quant_common.h"

namespace peft::quant {
namespace {

constexpr const char* kComponent = "gptq";

using detail::describe;

[[noreturn]] void fail(const std::string& file, const std::string& key, const std::string& msg) {
  throw FormatError(kComponent, file + ": \"" + key + "\" " + msg);
}

std::string shape_text(std::initializer_list<int64_t> dims) {
  std::ostringstream os;
  os << "(";
  bool first = true;
  for (int64_t d : dims) {
    os << (first ? "" : ", ") << d;
    first = false;
  }
  os << ")";
  return os.str();
}

// Codes per 32-bit word.
int64_t per_word(const GptqOptions& o) { return 32 / o.bits; }

// The word that adds one to every packed field (v1 -> real zero points).
int64_t ones_word(const GptqOptions& o) {
  int64_t k = 0;
  for (int64_t s = 0; s < 32; s += o.bits) k |= int64_t{1} << s;
  return k;
}

// Unpacks `packed` (int32, ..., words along `dim`) into codes along that dimension: each word
// becomes 32 / bits consecutive values, lowest bits first. Returns int64.
at::Tensor unpack(const at::Tensor& packed_u32, int64_t dim, int64_t bits) {
  const int64_t p = 32 / bits;
  const at::Tensor shifts = at::arange(0, 32, bits, packed_u32.options().dtype(at::kLong));  // (p)
  at::Tensor w = packed_u32.unsqueeze(dim + 1);  // insert the code axis
  std::vector<int64_t> view(static_cast<size_t>(w.dim()), 1);
  view[static_cast<size_t>(dim + 1)] = p;
  at::Tensor codes = w.bitwise_right_shift(shifts.view(view)).bitwise_and((int64_t{1} << bits) - 1);
  std::vector<int64_t> shape = packed_u32.sizes().vec();
  shape[static_cast<size_t>(dim)] *= p;
  return codes.reshape(shape);
}

// An int32 tensor's words as non-negative int64 values.
at::Tensor as_u32(const at::Tensor& t) { return t.to(at::kLong).bitwise_and(int64_t{0xFFFFFFFF}); }

}  // namespace

void validate_gptq_options(const GptqOptions& o, const std::string& component) {
  PEFT_CHECK(o.bits == 2 || o.bits == 4 || o.bits == 8, ConfigError, component,
             "GPTQ bits " << o.bits
                          << " is not supported; expected 2, 4 or 8 (hint: 3-bit GPTQ packs codes "
                             "across words, which peft.cpp does not read)");
  PEFT_CHECK(o.group_size == -1 || o.group_size > 0, ConfigError, component,
             "GPTQ group_size " << o.group_size << "; expected -1 (one group) or a positive size");
}

int64_t gptq_groups(const GptqOptions& o, int64_t in) {
  if (o.group_size == -1) return 1;
  return (in + o.group_size - 1) / o.group_size;
}

void validate_gptq(const QuantizedGptq& q, int64_t out, int64_t in, const std::string& prefix,
                   const std::string& file) {
  validate_gptq_options(q.options, kComponent);
  const int64_t p = per_word(q.options);
  PEFT_CHECK(out > 0 && in > 0, ShapeMismatchError, kComponent,
             "layer \"" << prefix << "\" has shape (" << out << ", " << in
                        << "); expected a non-empty Linear");
  const int64_t groups = gptq_groups(q.options, in);
  const auto check_int32 = [&](const at::Tensor& t, const std::string& name,
                               std::initializer_list<int64_t> shape, int64_t divisible_dim,
                               const char* axis) {
    const std::string key = prefix + name;
    if (!t.defined()) fail(file, key, "is missing (hint: is the GPTQ checkpoint complete?)");
    if (t.scalar_type() != at::kInt) {
      fail(file, key,
           "is " + describe(t) +
               "; expected int32 words (hint: GPTQModel's pack_dtype must be int32)");
    }
    if (divisible_dim % p != 0) {
      fail(file, key,
           std::string("cannot hold the layer's ") + axis + " of " + std::to_string(divisible_dim) +
               ": it is not a multiple of " + std::to_string(p) + " (" + std::to_string(p) +
               " codes of " + std::to_string(q.options.bits) + " bits per int32)");
    }
    if (t.sizes() != at::IntArrayRef(shape)) {
      fail(file, key,
           "has shape " + describe(t) + "; expected " + shape_text(shape) + " for a (" +
               std::to_string(out) + ", " + std::to_string(in) + ") layer with bits=" +
               std::to_string(q.options.bits) + " and " + std::to_string(groups) + " group(s)");
    }
  };
  check_int32(q.qweight, "qweight", {in / p, out}, in, "in_features");
  check_int32(q.qzeros, "qzeros", {groups, out / p}, out, "out_features");
  const std::string skey = prefix + "scales";
  if (!q.scales.defined()) fail(file, skey, "is missing (hint: is the GPTQ checkpoint complete?)");
  if (!at::isFloatingType(q.scales.scalar_type()) ||
      q.scales.sizes() != at::IntArrayRef({groups, out})) {
    fail(file, skey,
         "is " + describe(q.scales) + "; expected float " + shape_text({groups, out}) +
             " (groups, out_features)");
  }
  const std::string gkey = prefix + "g_idx";
  if (!q.g_idx.defined()) fail(file, gkey, "is missing");
  if ((q.g_idx.scalar_type() != at::kInt && q.g_idx.scalar_type() != at::kLong) ||
      q.g_idx.sizes() != at::IntArrayRef({in})) {
    fail(file, gkey, "is " + describe(q.g_idx) + "; expected int32 (" + std::to_string(in) + ")");
  }
  for (const at::Tensor* t : {&q.qzeros, &q.scales, &q.g_idx}) {
    if (t->device() != q.qweight.device()) {
      fail(file, prefix + "qweight",
           "is on " + q.qweight.device().str() + " while its other tensors are on " +
               t->device().str() + "; expected one device");
    }
  }
  if (q.g_idx.numel() > 0) {
    const int64_t lo = q.g_idx.min().item<int64_t>(), hi = q.g_idx.max().item<int64_t>();
    if (lo < 0 || hi >= groups) {
      fail(file, gkey,
           "holds group " + std::to_string(lo < 0 ? lo : hi) + "; expected groups in [0, " +
               std::to_string(groups) + ") (group_size " + std::to_string(q.options.group_size) +
               ", " + std::to_string(in) + " inputs; hint: check quantization_config.group_size)");
    }
  }
}

at::Tensor gptq_unpack_codes(const QuantizedGptq& q) {
  return unpack(as_u32(q.qweight), 0, q.options.bits).to(at::kInt);
}

at::Tensor gptq_unpack_zeros(const QuantizedGptq& q) {
  at::Tensor words = as_u32(q.qzeros);
  if (q.options.format == GptqFormat::kV1) {
    // GPTQModel's v1 -> v2 conversion: one int32 addition per word (carries included, wrapping).
    words = (words + ones_word(q.options)).bitwise_and(int64_t{0xFFFFFFFF});
  }
  return unpack(words, 1, q.options.bits).to(at::kInt);
}

at::Tensor gptq_dequantize(const QuantizedGptq& q, at::ScalarType dtype) {
  const at::Tensor g = q.g_idx.to(at::kLong);
  const at::Tensor codes = gptq_unpack_codes(q).to(at::kFloat);                     // (in, out)
  const at::Tensor zeros = gptq_unpack_zeros(q).to(at::kFloat).index_select(0, g);  // (in, out)
  const at::Tensor scales = q.scales.to(dtype).to(at::kFloat).index_select(0, g);   // (in, out)
  return ((codes - zeros) * scales).t().contiguous().to(dtype);
}

std::optional<QuantizedGptq> take_gptq_tensors(std::map<std::string, at::Tensor>& tensors,
                                               const std::string& prefix,
                                               const std::vector<int64_t>& shape,
                                               const GptqOptions& options,
                                               const std::string& file) {
  const auto it = tensors.find(prefix + "qweight");
  if (it == tensors.end()) return std::nullopt;
  PEFT_CHECK(shape.size() == 2, ShapeMismatchError, kComponent,
             "layer \"" << prefix << "\" is not a 2-D Linear");
  const int64_t out = shape[0], in = shape[1];
  QuantizedGptq q;
  q.options = options;
  q.qweight = it->second;
  const auto get = [&](const std::string& name) {
    const auto f = tensors.find(prefix + name);
    return f == tensors.end() ? at::Tensor() : f->second;
  };
  q.qzeros = get("qzeros");
  q.scales = get("scales");
  q.g_idx = get("g_idx");
  if (!q.g_idx.defined()) {
    // Checkpoints written before g_idx existed: the plain order.
    const int64_t gs = options.group_size == -1 ? in : options.group_size;
    q.g_idx = at::arange(in, at::TensorOptions().dtype(at::kInt).device(q.qweight.device()))
                  .div(gs, "floor")
                  .to(at::kInt);
  }
  validate_gptq(q, out, in, prefix, file);
  q.g_idx = q.g_idx.to(at::kInt).contiguous();
  q.qweight = q.qweight.contiguous();
  q.qzeros = q.qzeros.contiguous();
  q.scales = q.scales.contiguous();
  for (const char* name : {"qweight", "qzeros", "scales", "g_idx"}) tensors.erase(prefix + name);
  return q;
}

std::vector<std::pair<std::string, at::Tensor>> gptq_state_dict(const QuantizedGptq& q,
                                                                const std::string& prefix) {
  return {{prefix + "qweight", q.qweight},
          {prefix + "qzeros", q.qzeros},
          {prefix + "scales", q.scales},
          {prefix + "g_idx", q.g_idx}};
}

}  // namespace peft::quant
