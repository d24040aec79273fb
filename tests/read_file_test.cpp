// Reading files a stranger may have made: regular files only (a FIFO never hangs a read), bounded
// size, bounded JSON nesting, outputs never on or inside inputs.
#include "peft/io/read_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <functional>
#include <string>

#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/io/output_path.h"
#include "peft/io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace peft {
namespace {

using peft::test::message_of;

TEST(ReadFile, ReadsARegularFileAndRefusesEverythingElse) {
  test::TempDir tmp;
  test::write_file(tmp.str("a.txt"), "hello");
  EXPECT_EQ(io::read_file(tmp.str("a.txt"), "test"), "hello");

  EXPECT_THROW(io::read_file(tmp.str("missing.txt"), "test"), FormatError);
  EXPECT_NE(message_of([&] { io::read_file(tmp.str("missing.txt"), "test"); }).find("missing.txt"),
            std::string::npos);
  // A directory.
  EXPECT_NE(message_of([&] { io::read_file(tmp.str(), "test"); }).find("a directory"),
            std::string::npos);
  // A FIFO with no writer: refused at once instead of blocking forever in open().
  ASSERT_EQ(::mkfifo(tmp.str("fifo").c_str(), 0600), 0);
  EXPECT_THROW(io::read_file(tmp.str("fifo"), "test"), FormatError);
  EXPECT_NE(message_of([&] { io::read_file(tmp.str("fifo"), "test"); }).find("FIFO"),
            std::string::npos);
  // A symlink loop.
  fs::create_symlink(tmp.path() / "loop_b", tmp.path() / "loop_a");
  fs::create_symlink(tmp.path() / "loop_a", tmp.path() / "loop_b");
  EXPECT_NE(message_of([&] { io::read_file(tmp.str("loop_a"), "test"); }).find("symlink loop"),
            std::string::npos);
  // Larger than the caller's bound.
  EXPECT_NE(message_of([&] { io::read_file(tmp.str("a.txt"), "test", 4); }).find("at most 4"),
            std::string::npos);
}

TEST(ReadFile, SafetensorsAndAdapterConfigRefuseAFifo) {
  test::TempDir tmp;
  ASSERT_EQ(::mkfifo(tmp.str("adapter_model.safetensors").c_str(), 0600), 0);
  EXPECT_THROW(io::SafetensorsFile(tmp.str("adapter_model.safetensors")), FormatError);
  ASSERT_EQ(::mkfifo(tmp.str("adapter_config.json").c_str(), 0600), 0);
  EXPECT_THROW(load_lora_config(tmp.str("adapter_config.json")), FormatError);
}

TEST(JsonDepth, DeepNestingIsRefusedAndStringsDoNotCount) {
  const std::string ok = std::string(io::kMaxJsonDepth, '[') + std::string(io::kMaxJsonDepth, ']');
  EXPECT_NO_THROW(io::check_json_depth(ok, "test", "ok.json"));
  const std::string deep = "[" + ok + "]";
  EXPECT_THROW(io::check_json_depth(deep, "test", "deep.json"), FormatError);
  EXPECT_THROW(io::check_json_depth(deep, "test", "deep.json", io::JsonRole::kConfig), ConfigError);
  EXPECT_NE(message_of([&] { io::check_json_depth(deep, "test", "deep.json"); }).find("deep.json"),
            std::string::npos);
  // Brackets inside strings (escaped quotes included) are text, not nesting.
  const std::string in_string = "{\"a\": \"\\\"" + std::string(100000, '[') + "\"}";
  EXPECT_NO_THROW(io::check_json_depth(in_string, "test", "s.json"));
  EXPECT_EQ(io::parse_json(in_string, "test", "s.json")["a"].get<std::string>().size(), 100001u);
  // 100,000 levels: an error, not a stack overflow.
  const std::string hostile = std::string(100000, '{') + "\"k\":1" + std::string(100000, '}');
  EXPECT_THROW(io::parse_json(hostile, "test", "h.json"), FormatError);
  EXPECT_THROW(io::parse_json("{oops", "test", "bad.json", io::JsonRole::kConfig), ConfigError);
}

TEST(SafetensorsHostile, DeepHeaderAndDuplicateNamesAreRefused) {
  test::TempDir tmp;
  auto write_raw = [&](const std::string& name, const std::string& header) {
    std::string bytes(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    test::write_file(tmp.str(name), bytes + header);
    return tmp.str(name);
  };
  const std::string deep =
      write_raw("deep.safetensors", R"({"__metadata__": )" + std::string(100000, '[') + "}");
  EXPECT_NE(message_of([&] { io::SafetensorsFile f(deep); }).find("nested more than"),
            std::string::npos);
  const std::string twice = write_raw(
      "twice.safetensors", R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, )"
                           R"("a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})");
  EXPECT_THROW(io::SafetensorsFile f(twice), FormatError);
  EXPECT_NE(message_of([&] { io::SafetensorsFile f(twice); }).find("named twice"),
            std::string::npos);
}

TEST(OutputPath, EqualOrInsideAnInputIsRefusedHoweverSpelled) {
  test::TempDir tmp;
  const fs::path model = tmp.path() / "model";
  fs::create_directories(model);
  fs::create_symlink(model, tmp.path() / "link");
  const std::vector<io::NamedPath> inputs = {{"--model", model.string()}, {"--data", ""}};
  for (const std::string& out :
       {model.string(), model.string() + "/", model.string() + "/.", (model / "sub").string(),
        (tmp.path() / "x" / ".." / "model").string(), (tmp.path() / "link").string(),
        (tmp.path() / "link" / "new").string()}) {
    EXPECT_THROW(io::check_output_outside_inputs({"--out", out}, inputs, "test"), ConfigError)
        << out;
  }
  const std::string msg = message_of([&] {
    io::check_output_outside_inputs({"--out", model.string() + "/"}, inputs, "test");
  });
  EXPECT_NE(msg.find("--out"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--model"), std::string::npos) << msg;
  // Beside, above, or a name that only starts like the input: allowed.
  for (const std::string& out :
       {(tmp.path() / "out").string(), tmp.path().string(), (tmp.path() / "model2").string()}) {
    EXPECT_NO_THROW(io::check_output_outside_inputs({"--out", out}, inputs, "test")) << out;
  }
}

}  // namespace
}  // namespace peft
