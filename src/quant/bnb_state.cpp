// bitsandbytes' state-dict serialization of a quantized weight, as found in Hugging Face
// repositories saved with load_in_4bit / load_in_8bit: Params4bit + QuantState.as_dict(packed=True)
// (bitsandbytes/functional.py), whose non-tensor items travel as JSON bytes in a uint8 tensor
// (utils.pack_dict_to_tensor: json.dumps, then the UTF-8 bytes), and Int8Params' "weight" + "SCB"
// (+ "weight_format", written by Linear8bitLt and ignored here).
#include <ATen/ATen.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "peft/dtype.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/quant/quantized_weight.h"
#include "quant_common.h"

namespace peft::quant {

namespace {

constexpr const char* kComponent = "bitsandbytes";

// Python's repr(float) (what json.dumps writes): the shortest round-tripping digits, positional
// notation for exponents in [-4, 16), otherwise d[.ddd]e+XX.
std::string python_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  const std::string s(buf, res.ptr);
  const size_t epos = s.find('e');
  const int exp = std::atoi(s.c_str() + epos + 1);
  std::string mant = s.substr(0, epos);
  std::string sign;
  if (mant[0] == '-') {
    sign = "-";
    mant.erase(0, 1);
  }
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  const int k = static_cast<int>(digits.size());
  if (exp < -4 || exp >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (k > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + e;
  }
  const auto z = [](int count) { return std::string(static_cast<size_t>(count), '0'); };
  if (exp < 0) return sign + "0." + z(-exp - 1) + digits;
  const auto point = static_cast<size_t>(exp + 1);
  if (digits.size() <= point) return sign + digits + z(exp + 1 - k) + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

bool allowed_blocksize(int64_t b) {
  return std::find(std::begin(kAllowedBlocksizes), std::end(kAllowedBlocksizes), b) !=
         std::end(kAllowedBlocksizes);
}

using detail::describe;

// Reads one checkpoint's entries for a layer; every complaint names the file and the tensor.
class Reader {
 public:
  Reader(std::map<std::string, at::Tensor>& tensors, const std::string& file)
      : tensors_(tensors), file_(file) {}

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    throw FormatError(kComponent, file_ + ": \"" + key + "\" " + msg);
  }
  const at::Tensor& need(const std::string& key, const std::string& what) const {
    auto it = tensors_.find(key);
    if (it == tensors_.end())
      fail(key, "is missing; expected " + what + " (hint: is the checkpoint complete?)");
    return it->second;
  }
  const nlohmann::json& field(const nlohmann::json& j, const std::string& key,
                              const std::string& name, const std::string& expected) const {
    if (!j.contains(name)) fail(key, "has no \"" + name + "\"; expected " + expected);
    return j.at(name);
  }
  int64_t int_field(const nlohmann::json& j, const std::string& key,
                    const std::string& name) const {
    const nlohmann::json& v = field(j, key, name, "an integer");
    if (!v.is_number_integer())
      fail(key, "has \"" + name + "\": " + v.dump() + "; expected an integer");
    return v.get<int64_t>();
  }
  std::string string_field(const nlohmann::json& j, const std::string& key,
                           const std::string& name) const {
    const nlohmann::json& v = field(j, key, name, "a string");
    if (!v.is_string()) fail(key, "has \"" + name + "\": " + v.dump() + "; expected a string");
    return v.get<std::string>();
  }

 private:
  std::map<std::string, at::Tensor>& tensors_;
  const std::string& file_;
};

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> QuantizedWeight::bnb_state_dict(
    const std::string& prefix) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (q8_) {
    out.emplace_back(prefix + "weight", q8_->CB);
    out.emplace_back(prefix + "SCB", q8_->SCB);
    return out;
  }
  const Quantized4bit& q = *q4_;
  const std::string w = prefix + "weight";
  out.emplace_back(w, q.packed);
  out.emplace_back(w + ".absmax", q.absmax);
  out.emplace_back(w + ".quant_map", code_);
  // json.dumps of the non-tensor items in QuantState.as_dict's order.
  std::ostringstream js;
  js << "{\"quant_type\": \"" << to_string(q.quant_type) << "\", \"blocksize\": " << q.blocksize
     << ", \"dtype\": \"" << dtype_name(q.dtype) << "\", \"shape\": [" << q.shape[0] << ", "
     << q.shape[1] << "]";
  if (q.nested) {
    out.emplace_back(w + ".nested_absmax", q.nested_absmax);
    out.emplace_back(w + ".nested_quant_map", q.nested_code);
    js << ", \"nested_blocksize\": " << q.nested_blocksize
       << ", \"nested_dtype\": \"float32\", \"nested_offset\": "
       << python_float(static_cast<double>(q.offset));
  }
  js << "}";
  const std::string text = js.str();
  at::Tensor bytes =
      at::empty({static_cast<int64_t>(text.size())}, at::TensorOptions().dtype(at::kByte));
  std::copy(text.begin(), text.end(), bytes.data_ptr<uint8_t>());
  out.emplace_back(w + ".quant_state.bitsandbytes__" + to_string(q.quant_type), bytes);
  return out;
}

std::optional<std::shared_ptr<QuantizedWeight>> take_bnb_weight(
    std::map<std::string, at::Tensor>& tensors, const std::string& prefix,
    const std::vector<int64_t>& shape, at::ScalarType compute_dtype, const std::string& file) {
  PEFT_CHECK(shape.size() == 2 && shape[0] > 0 && shape[1] > 0, ShapeMismatchError, kComponent,
             "layer \"" << prefix << "\" has shape " << at::IntArrayRef(shape)
                        << "; expected a 2-D (out_features, in_features) Linear shape");
  const Reader r(tensors, file);
  const std::string wkey = prefix + "weight";
  const std::string qs_prefix = wkey + ".quant_state.";
  std::vector<std::string> qs_keys;
  for (auto it = tensors.lower_bound(qs_prefix);
       it != tensors.end() && it->first.compare(0, qs_prefix.size(), qs_prefix) == 0; ++it) {
    qs_keys.push_back(it->first);
  }
  const bool has_4bit_state = !qs_keys.empty() || tensors.count(wkey + ".absmax") > 0;
  const auto wit = tensors.find(wkey);
  if (wit == tensors.end()) {
    if (has_4bit_state) r.fail(wkey, "is missing although its bitsandbytes quant state is present");
    return std::nullopt;
  }
  const at::Tensor w = wit->second;
  const int64_t out = shape[0], in = shape[1];

  // --- LLM.int8: int8 "weight" (out, in) and float32 "SCB" (out).
  if (w.scalar_type() == at::kChar) {
    if (has_4bit_state)
      r.fail(wkey, "is int8 but has 4-bit quant-state entries; expected one or the other");
    if (w.sizes() != at::IntArrayRef(shape)) {
      r.fail(wkey, "has shape " + describe(w) + "; expected (" + std::to_string(out) + ", " +
                       std::to_string(in) + ") for this layer");
    }
    const std::string skey = prefix + "SCB";
    const at::Tensor& scb =
        r.need(skey, "the float32 row scales of the int8 weight (" + std::to_string(out) + ")");
    if (!at::isFloatingType(scb.scalar_type()) || scb.numel() != out) {
      r.fail(skey, "is " + describe(scb) + "; expected float32 (" + std::to_string(out) + ")");
    }
    QuantizedInt8 q;
    q.CB = w;
    q.SCB = scb.to(at::kFloat).reshape({out});
    auto result = QuantizedWeight::from_int8(std::move(q), compute_dtype);
    tensors.erase(wkey);
    tensors.erase(skey);
    tensors.erase(prefix +
                  "weight_format");  // Linear8bitLt's layout tag ("row"); nothing to do with it
    return result;
  }
  if (at::isFloatingType(w.scalar_type()) && !has_4bit_state)
    return std::nullopt;  // a float weight

  // --- 4-bit: packed "weight" + QuantState entries.
  if (qs_keys.empty()) {
    r.fail(qs_prefix + "bitsandbytes__nf4",
           "is missing; expected the packed quant state of the 4-bit weight \"" + wkey + "\"");
  }
  if (qs_keys.size() != 1) {
    std::string list;
    for (const auto& k : qs_keys) list += (list.empty() ? "\"" : ", \"") + k + "\"";
    r.fail(wkey, "has " + std::to_string(qs_keys.size()) + " quant-state entries (" + list +
                     "); expected exactly one bitsandbytes__nf4 or bitsandbytes__fp4");
  }
  const std::string& qs_key = qs_keys[0];
  const std::string suffix = qs_key.substr(qs_prefix.size());
  QuantType type = QuantType::kNF4;
  if (suffix == "bitsandbytes__nf4") {
    type = QuantType::kNF4;
  } else if (suffix == "bitsandbytes__fp4") {
    type = QuantType::kFP4;
  } else {
    r.fail(qs_key, "is not a bitsandbytes quant state; expected \"" + qs_prefix +
                       "bitsandbytes__nf4\" or \"" + qs_prefix + "bitsandbytes__fp4\"");
  }
  const at::Tensor& qs = tensors.at(qs_key);
  if (qs.scalar_type() != at::kByte)
    r.fail(qs_key, "is " + describe(qs) + "; expected uint8 JSON bytes");
  const at::Tensor qs_bytes = qs.reshape({-1}).contiguous().to(at::kCPU);
  const auto* begin = qs_bytes.data_ptr<uint8_t>();
  const std::string text(begin, begin + qs_bytes.numel());
  nlohmann::json j;
  try {
    io::check_json_depth(text, "bitsandbytes", qs_key);
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    r.fail(qs_key,
           std::string("is not valid JSON (") + e.what() +
               "); expected bitsandbytes' packed quant state, e.g. {\"quant_type\": \"nf4\", "
               "\"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [out, in]}");
  }
  if (!j.is_object()) r.fail(qs_key, "holds " + j.dump() + "; expected a JSON object");

  const std::string qt = r.string_field(j, qs_key, "quant_type");
  if (qt != to_string(type))
    r.fail(qs_key, "has quant_type \"" + qt + "\"; expected \"" + to_string(type) + "\"");
  Quantized4bit q;
  q.quant_type = type;
  q.blocksize = r.int_field(j, qs_key, "blocksize");
  if (!allowed_blocksize(q.blocksize)) {
    r.fail(qs_key,
           "has blocksize " + std::to_string(q.blocksize) + "; expected one of 64, 128, ..., 4096");
  }
  const std::string dt = r.string_field(j, qs_key, "dtype");
  const auto dtype = find_dtype(dt);
  if (!dtype)
    r.fail(qs_key, "has dtype \"" + dt + "\"; expected \"float32\", \"float16\" or \"bfloat16\"");
  q.dtype = *dtype;
  const nlohmann::json& js = r.field(j, qs_key, "shape", "the weight shape [out, in]");
  if (!js.is_array() || js.size() != 2 || !js[0].is_number_integer() ||
      !js[1].is_number_integer() || js[0].get<int64_t>() != out || js[1].get<int64_t>() != in) {
    r.fail(qs_key, "has shape " + js.dump() + "; expected [" + std::to_string(out) + ", " +
                       std::to_string(in) + "] (the layer's shape)");
  }
  q.shape = {out, in};
  const int64_t n = out * in;
  const int64_t nblocks = (n + q.blocksize - 1) / q.blocksize;

  // Packed data: uint8 ((n + 1) / 2, 1); a non-uint8 quant_storage holds the same bytes.
  at::Tensor packed = w.contiguous();
  if (packed.scalar_type() != at::kByte) packed = packed.reshape({-1}).view(at::kByte);
  if (packed.numel() != (n + 1) / 2) {
    r.fail(wkey, "is " + describe(w) + " (" + std::to_string(packed.numel()) +
                     " bytes); expected " + std::to_string((n + 1) / 2) +
                     " packed bytes for shape [" + std::to_string(out) + ", " + std::to_string(in) +
                     "]");
  }
  q.packed = packed.reshape({-1, 1});

  const std::string nakey = wkey + ".nested_absmax", nmkey = wkey + ".nested_quant_map";
  q.nested = j.contains("nested_offset") || tensors.count(nakey) > 0;
  const std::string akey = wkey + ".absmax";
  const at::Tensor& absmax = r.need(akey, "the per-block absmax of the 4-bit weight");
  const at::ScalarType absmax_dtype = q.nested ? at::kByte : at::kFloat;
  if (absmax.scalar_type() != absmax_dtype || absmax.numel() != nblocks) {
    r.fail(akey, "is " + describe(absmax) + "; expected " + c10::toString(absmax_dtype) + " (" +
                     std::to_string(nblocks) + ")" + (q.nested ? " (double quantization)" : ""));
  }
  q.absmax = absmax.reshape({-1});

  // quant_map: the 16 code values. The kernel uses the built-in NF4 / FP4 book, so the file's must
  // match it.
  const std::string qmkey = wkey + ".quant_map";
  const at::Tensor& qmap = r.need(qmkey, "the 16 code values of the 4-bit data type");
  const std::vector<float> book = type == QuantType::kNF4 ? nf4_code() : fp4_code();
  if (!at::isFloatingType(qmap.scalar_type()) || qmap.numel() != 16 ||
      (qmap.reshape({-1}).to(at::kFloat) - at::tensor(book, at::TensorOptions().dtype(at::kFloat)))
              .abs()
              .max()
              .item<float>() > 1e-6f) {
    r.fail(qmkey, "is " + describe(qmap) + " and does not hold the " + to_string(type) +
                      " code book; expected bitsandbytes' get_4bit_type(\"" + to_string(type) +
                      "\")");
  }

  if (q.nested) {
    q.nested_blocksize = r.int_field(j, qs_key, "nested_blocksize");
    if (!allowed_blocksize(q.nested_blocksize)) {
      r.fail(qs_key, "has nested_blocksize " + std::to_string(q.nested_blocksize) +
                         "; expected 64 .. 4096");
    }
    const nlohmann::json& off = r.field(j, qs_key, "nested_offset", "a number");
    if (!off.is_number()) r.fail(qs_key, "has nested_offset " + off.dump() + "; expected a number");
    q.offset = static_cast<float>(off.get<double>());  // torch.tensor(float(...)): float32
    if (j.contains("nested_dtype")) {
      const std::string nd = r.string_field(j, qs_key, "nested_dtype");
      if (find_dtype(nd) != at::kFloat)
        r.fail(qs_key, "has nested_dtype \"" + nd + "\"; expected \"float32\"");
    }
    const int64_t nested_blocks = (nblocks + q.nested_blocksize - 1) / q.nested_blocksize;
    const at::Tensor& na = r.need(nakey, "the float32 absmax of the double quantization");
    if (na.scalar_type() != at::kFloat || na.numel() != nested_blocks) {
      r.fail(nakey,
             "is " + describe(na) + "; expected float32 (" + std::to_string(nested_blocks) + ")");
    }
    const at::Tensor& nm = r.need(nmkey, "the 256-value dynamic map of the double quantization");
    if (!at::isFloatingType(nm.scalar_type()) || nm.numel() != 256) {
      r.fail(nmkey, "is " + describe(nm) + "; expected float32 (256)");
    }
    q.nested_absmax = na.reshape({-1});
    q.nested_code = nm.reshape({-1}).to(at::kFloat);
  } else if (tensors.count(nmkey) > 0) {
    r.fail(nmkey,
           "is present but the quant state has no nested_offset / nested_absmax; expected both or "
           "neither");
  }

  auto result = QuantizedWeight::from_4bit(std::move(q), compute_dtype);
  for (const std::string& k : {wkey, akey, qmkey, nakey, nmkey, qs_key}) tensors.erase(k);
  return result;
}

}  // namespace peft::quant
