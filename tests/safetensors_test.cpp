// Tests for peft::io safetensors read/write: bit-exact round trips, zero-copy mapping, atomic
// replace, and one malformed-file test per validation rule (files built from raw bytes).
#include "peft/io/safetensors.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "peft/error.h"
#include "test_util.h"

namespace peft::io {
namespace {

namespace fs = std::filesystem;
using peft::test::read_file;
using peft::test::TempDir;
using peft::test::write_file;
using Tensors = std::map<std::string, at::Tensor>;

// 8-byte little-endian length + header + data.
std::string raw_file(const std::string& header, const std::string& data = "",
                     uint64_t len = UINT64_MAX) {
  if (len == UINT64_MAX) len = header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + header + data;
}

bool bytes_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto ca = a.contiguous();
  const auto cb = b.contiguous();
  if (ca.nbytes() != cb.nbytes()) return false;
  return ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

int count_tmp_files(const fs::path& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(".tmp-") != std::string::npos) ++n;
  }
  return n;
}

// Writes `bytes` and expects opening it to throw FormatError whose message names the file and
// `rule`.
void expect_format_error(const std::string& bytes, const std::string& rule) {
  TempDir dir;
  const std::string path = dir.str("bad.safetensors");
  write_file(path, bytes);
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "no FormatError; expected one mentioning: " << rule;
  } catch (const peft::FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(rule), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("[safetensors] ", 0), 0u) << msg;
  }
  EXPECT_THROW(SafetensorsFile{path}, peft::FormatError);
}

TEST(SafetensorsTest, RoundTripEveryDtypeBitExact) {
  TempDir dir;
  torch::manual_seed(0);
  const auto f = torch::randn({3, 5});
  std::map<std::string, at::Tensor> tensors{
      {"f64", torch::randn({4, 2}, torch::kFloat64)},
      {"f32", f},
      {"f16", f.to(torch::kHalf)},
      {"bf16", f.to(torch::kBFloat16)},
      {"i64", torch::randint(-(int64_t{1} << 40), int64_t{1} << 40, {7}, torch::kLong)},
      {"i32", torch::randint(-100000, 100000, {2, 3, 2}, torch::kInt)},
      {"i16", torch::randint(-30000, 30000, {5}, torch::kShort)},
      {"i8", torch::randint(-128, 127, {9}, torch::kChar)},
      {"u8", torch::randint(0, 255, {3, 3}, torch::kByte)},
      {"bool", torch::rand({11}) > 0.5},
      {"scalar", torch::tensor(3.25f).reshape({})},
      {"empty", torch::empty({0, 4})},
      {"empty_i64", torch::empty({3, 0}, torch::kLong)},
  };
  const std::string path = dir.str("all.safetensors");
  save_safetensors(path, tensors);
  SafetensorsFile file(path);
  EXPECT_EQ(file.keys().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    const at::Tensor got = file.get(name);
    EXPECT_TRUE(bytes_equal(got, expected)) << got << "\nvs\n" << expected;
    EXPECT_EQ(file.shape(name), expected.sizes().vec());
  }
  EXPECT_EQ(file.dtype("bf16"), "BF16");
  EXPECT_EQ(file.dtype("f16"), "F16");
  EXPECT_EQ(file.dtype("bool"), "BOOL");
  EXPECT_EQ(file.dtype("u8"), "U8");
  EXPECT_EQ(file.get("scalar").dim(), 0);
  const auto loaded = load_safetensors(path);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, expected] : tensors)
    EXPECT_TRUE(bytes_equal(loaded.at(name), expected)) << name;
}

TEST(SafetensorsTest, MetadataRoundTripAndHeaderPadding) {
  TempDir dir;
  const std::string path = dir.str("m.safetensors");
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "ünïcode \"quoted\""}};
  save_safetensors(path, Tensors{{"b", torch::ones({2})}, {"A", torch::zeros({1})}}, meta);
  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata(), meta);
  EXPECT_EQ(file.keys(), (std::vector<std::string>{"A", "b"}));
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(bytes.substr(8, 16), "{\"__metadata__\":");
}

// Byte-for-byte what the Python package writes (cases from its own serialization tests).
TEST(SafetensorsTest, OutputIsByteIdenticalToPythonPackage) {
  TempDir dir;
  const std::string path = dir.str("g.safetensors");
  save_safetensors(path, Tensors{});
  EXPECT_EQ(read_file(path), raw_file("{}      "));
  save_safetensors(path, Tensors{}, {{"framework", "pt"}});
  EXPECT_EQ(read_file(path),
            raw_file(R"({"__metadata__":{"framework":"pt"}})" + std::string(5, ' ')));
  save_safetensors(path, Tensors{{"attn0", torch::arange(6, torch::kFloat).reshape({1, 1, 2, 3})}});
  const float data[6] = {0, 1, 2, 3, 4, 5};
  EXPECT_EQ(read_file(path),
            raw_file(R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" +
                         std::string(7, ' '),
                     std::string(reinterpret_cast<const char*>(data), sizeof(data))));
}

// Mixed dtypes are laid out by descending alignment, then name (as the Python package does), so
// every tensor lands aligned and is read zero-copy.
TEST(SafetensorsTest, MixedDtypesLaidOutByAlignment) {
  TempDir dir;
  const std::string path = dir.str("mix.safetensors");
  save_safetensors(path, Tensors{{"a_bool", torch::ones({3}, torch::kBool)},
                                 {"b_f16", torch::ones({3}, torch::kHalf)},
                                 {"c_f32", torch::ones({3})},
                                 {"d_i64", torch::ones({3}, torch::kLong)},
                                 {"e_f32", torch::ones({1})}});
  SafetensorsFile file(path);
  EXPECT_EQ(file.keys(), (std::vector<std::string>{"d_i64", "c_f32", "e_f32", "b_f16", "a_bool"}));
  // Each tensor is a view of the mapped file at its data offset (zero-copy), and that address is a
  // multiple of its element size (the data section starts 8-byte aligned and larger elements come
  // first).
  const char* base = static_cast<const char*>(file.get("d_i64").data_ptr());
  int64_t offset = 0;
  for (const auto& k : file.keys()) {
    const at::Tensor t = file.get(k);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % static_cast<uintptr_t>(t.element_size()),
              0u)
        << k;
    EXPECT_EQ(static_cast<const char*>(t.data_ptr()) - base, offset)
        << k << " was copied or misplaced";
    offset += static_cast<int64_t>(t.nbytes());
  }
  EXPECT_EQ(reinterpret_cast<uintptr_t>(base) % 8, 0u);
}

TEST(SafetensorsTest, ZeroCopyAndTensorsOutliveFile) {
  TempDir dir;
  const std::string path = dir.str("z.safetensors");
  const auto w = torch::arange(12, torch::kFloat).reshape({3, 4});
  save_safetensors(path, Tensors{{"w", w}, {"h", torch::ones({5}, torch::kHalf)}});
  const std::string before = read_file(path);
  at::Tensor t;
  {
    SafetensorsFile file(path);
    t = file.get("w");
    EXPECT_EQ(file.get("w").data_ptr(), t.data_ptr());  // both views of the same mapped bytes
  }
  EXPECT_TRUE(bytes_equal(t, w));  // the mapping outlives the SafetensorsFile
  t.add_(1.0);                     // copy-on-write: never reaches the file
  EXPECT_TRUE(bytes_equal(t, w + 1));
  EXPECT_EQ(read_file(path), before);
  EXPECT_TRUE(bytes_equal(SafetensorsFile(path).get("w"), w));
}

TEST(SafetensorsTest, MisalignedDataIsCopied) {
  TempDir dir;
  const std::string path = dir.str("u.safetensors");
  // Header length 57: data starts at byte 65, misaligned for F32 -> get() must copy.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append(57 - header.size(), ' ');
  const float data[2] = {1.5f, -2.0f};
  write_file(path, raw_file(header, std::string(reinterpret_cast<const char*>(data), 8)));
  const auto t = SafetensorsFile(path).get("x");
  EXPECT_TRUE(bytes_equal(t, torch::tensor({1.5f, -2.0f})));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 4, 0u);
}

TEST(SafetensorsTest, WritesNonContiguousAndVectorOverload) {
  TempDir dir;
  const std::string path = dir.str("nc.safetensors");
  const auto base = torch::arange(6, torch::kFloat).reshape({2, 3});
  save_safetensors(path, std::vector<std::pair<std::string, at::Tensor>>{{"t", base.t()}});
  EXPECT_TRUE(bytes_equal(SafetensorsFile(path).get("t"), base.t().contiguous()));
}

TEST(SafetensorsTest, AtomicReplaceLeavesNoTempFiles) {
  TempDir dir;
  const std::string path = dir.str("r.safetensors");
  save_safetensors(path, Tensors{{"v", torch::full({4}, 1.0f)}});
  SafetensorsFile old_file(path);
  const auto old_t = old_file.get("v");
  save_safetensors(path, Tensors{{"v", torch::full({4}, 2.0f)}, {"extra", torch::ones({1})}});
  EXPECT_EQ(count_tmp_files(dir.path()), 0);
  // rename() swapped the directory entry; the old mapping still sees the old inode intact.
  EXPECT_TRUE(bytes_equal(old_t, torch::full({4}, 1.0f)));
  EXPECT_EQ(old_file.keys().size(), 1u);
  SafetensorsFile new_file(path);
  EXPECT_TRUE(bytes_equal(new_file.get("v"), torch::full({4}, 2.0f)));
  EXPECT_TRUE(new_file.contains("extra"));
}

TEST(SafetensorsTest, WriteFailureRemovesTempFileAndNamesPath) {
  TempDir dir;
  // The target is a non-empty directory, so the final rename fails after the temp file was written.
  const std::string path = dir.str("target");
  write_file(path + "/keep", "x");
  try {
    save_safetensors(path, Tensors{{"v", torch::ones({2})}});
    ADD_FAILURE() << "expected peft::Error";
  } catch (const peft::Error& e) {
    EXPECT_EQ(e.component(), "safetensors");
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_EQ(count_tmp_files(dir.path()), 0);
  EXPECT_THROW(
      save_safetensors(dir.str("no/such/dir/x.safetensors"), Tensors{{"v", torch::ones({2})}}),
      peft::Error);
}

TEST(SafetensorsTest, UnsupportedDtypeAndDuplicateNames) {
  TempDir dir;
  const std::string path = dir.str("x.safetensors");
  try {
    save_safetensors(path, Tensors{{"cplx", torch::zeros({2}, torch::kComplexFloat)}});
    ADD_FAILURE() << "expected UnsupportedError";
  } catch (const peft::UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("cplx"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(path));
  const std::vector<std::pair<std::string, at::Tensor>> dup{{"a", torch::ones({1})},
                                                            {"a", torch::ones({1})}};
  EXPECT_THROW(save_safetensors(path, dup), peft::Error);
  EXPECT_THROW(save_safetensors(path, Tensors{{"__metadata__", torch::ones({1})}}), peft::Error);
  EXPECT_EQ(count_tmp_files(dir.path()), 0);
}

TEST(SafetensorsTest, GetMissingNameListsExistingNames) {
  TempDir dir;
  const std::string path = dir.str("k.safetensors");
  std::map<std::string, at::Tensor> tensors;
  for (int i = 0; i < 7; ++i) tensors["t" + std::to_string(i)] = torch::ones({1});
  save_safetensors(path, tensors);
  SafetensorsFile file(path);
  EXPECT_FALSE(file.contains("nope"));
  try {
    file.get("nope");
    ADD_FAILURE() << "expected FormatError";
  } catch (const peft::FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("\"nope\" not found"), std::string::npos) << msg;
    EXPECT_NE(msg.find("\"t0\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("\"t4\""), std::string::npos) << msg;
    EXPECT_EQ(msg.find("\"t5\""), std::string::npos) << msg;  // at most 5 listed
  }
  EXPECT_THROW(file.shape("nope"), peft::FormatError);
  EXPECT_THROW(file.dtype("nope"), peft::FormatError);
}

// ---- malformed files: one rule each ----

const std::string kEight(8, '\0');  // 8 data bytes

TEST(SafetensorsBadInputTest, ShorterThan8Bytes) {
  expect_format_error("", "shorter than 8 bytes");
  expect_format_error(std::string("\x10\0\0", 3), "shorter than 8 bytes");
}

TEST(SafetensorsBadInputTest, HeaderCutShort) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32")", "", 100),
                      "header extends past end of file");
}

TEST(SafetensorsBadInputTest, HugeHeaderLength) {
  expect_format_error(raw_file("{}", "", uint64_t{1} << 40), "header length too large");
  expect_format_error(raw_file("{}", "", UINT64_MAX - 1), "header length too large");
}

TEST(SafetensorsBadInputTest, HeaderNotJsonOrNotObject) {
  expect_format_error(raw_file("{\"a\": nope}"), "header is not valid JSON");
  expect_format_error(raw_file("[1, 2]"), "header is not a JSON object");
  // Deep nesting is refused before parsing (printing such a value in an error would overflow the
  // stack).
  expect_format_error(raw_file(std::string(300'000, '[') + std::string(300'000, ']')),
                      "nested more than 128 levels");
}

TEST(SafetensorsBadInputTest, OverlappingOffsets) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               kEight),
                      "overlap");
}

TEST(SafetensorsBadInputTest, GapBetweenOffsets) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"I8","shape":[2],"data_offsets":[6,8]}})",
                               kEight),
                      "gap between data_offsets");
}

TEST(SafetensorsBadInputTest, OffsetsNotStartingAtZero) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", kEight),
                      "do not start at 0");
}

TEST(SafetensorsBadInputTest, DataNotCoveredExactly) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", kEight),
                      "trailing bytes");
  expect_format_error(
      raw_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", kEight),
      "past end of file");
  expect_format_error(raw_file("{}", kEight), "trailing bytes");
}

TEST(SafetensorsBadInputTest, ByteLengthMismatch) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", kEight),
                      "byte length != elements x dtype size");
  // Element count overflowing 64 bits must not wrap around to a "valid" length.
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],)"
                               R"("data_offsets":[0,8]}})",
                               kEight),
                      "overflows");
}

TEST(SafetensorsBadInputTest, UnknownDtype) {
  expect_format_error(raw_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", kEight),
                      "unknown dtype: \"Q4\"");
  expect_format_error(raw_file(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", kEight),
                      "dtype");
}

TEST(SafetensorsBadInputTest, BadShape) {
  expect_format_error(
      raw_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", kEight),
      "invalid shape dimension: -2");
  expect_format_error(
      raw_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", kEight),
      "invalid shape dimension");
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", kEight),
                      "\"shape\"");
}

TEST(SafetensorsBadInputTest, BadOffsetsOrEntry) {
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", kEight),
                      "begin > end");
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", kEight),
                      "invalid \"data_offsets\"");
  expect_format_error(raw_file(R"({"a":{"dtype":"F32","shape":[2]}})", kEight),
                      "invalid \"data_offsets\"");
  expect_format_error(raw_file(R"({"a":[1,2]})", kEight), "entry is not a JSON object");
}

TEST(SafetensorsBadInputTest, MetadataNotStringMap) {
  expect_format_error(raw_file(R"({"__metadata__":{"format":1}})"), "not a string->string map");
  expect_format_error(raw_file(R"({"__metadata__":["pt"]})"), "__metadata__ is not an object");
}

TEST(SafetensorsBadInputTest, InvalidBoolByteRejectedOnGet) {
  TempDir dir;
  const std::string path = dir.str("b.safetensors");
  write_file(path,
             raw_file(R"({"b":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", "\x01\x07"));
  SafetensorsFile file(path);
  EXPECT_THROW(file.get("b"), peft::FormatError);
}

TEST(SafetensorsBadInputTest, TruncationsAndByteFlipsNeverCrash) {
  TempDir dir;
  const std::string good_path = dir.str("good.safetensors");
  save_safetensors(
      good_path,
      Tensors{{"a", torch::arange(6, torch::kFloat)}, {"b", torch::ones({3}, torch::kLong)}},
      {{"k", "v"}});
  const std::string good = read_file(good_path);
  const std::string path = dir.str("mut.safetensors");
  auto try_open = [&](const std::string& bytes) {
    write_file(path, bytes);
    try {
      SafetensorsFile file(path);
      for (const auto& k : file.keys()) (void)file.get(k).sum().item<double>();
    } catch (const peft::Error&) {
      // expected for most mutations
    }
  };
  for (size_t len = 0; len < good.size(); ++len) try_open(good.substr(0, len));
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    std::string bytes = good;
    bytes[rng() % bytes.size()] = static_cast<char>(rng() & 0xff);
    try_open(bytes);
  }
}

}  // namespace
}  // namespace peft::io
