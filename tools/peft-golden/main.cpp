// peft-golden DIR: runs every golden case folder in DIR (case.json + files, produced by PEFT
// itself) and prints "PASS <id> <max abs diff>", "FAIL <id> <reason>" or "SKIP <id> <reason>" per
// case; exits 1 if any failed. Dispatch is on the case's `kind` and recorded configuration, never
// on its id.

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "case.h"
#include "peft/error.h"
#include "peft/runtime.h"

namespace fs = std::filesystem;
using peft::golden::Case;
using peft::golden::CaseResult;

namespace {

CaseResult run_case(const Case& c) {
  const std::string kind = c.spec.value("kind", "");
  if (kind == "layer") return peft::golden::run_layer_case(c);
  if (kind == "targeting") return peft::golden::run_targeting_case(c);
  if (kind == "model") return peft::golden::run_model_case(c);
  if (kind == "combine") return peft::golden::run_combine_case(c);
  if (kind == "init") return peft::golden::run_init_case(c);
  if (kind == "train") return peft::golden::run_train_case(c);
  if (kind == "param") return peft::golden::run_param_case(c);
  if (kind == "datainit") return peft::golden::run_datainit_case(c);
  if (kind == "intruders") return peft::golden::run_intruders_case(c);
  if (kind == "arrow") return peft::golden::run_arrow_case(c);
  if (kind == "variant") return peft::golden::run_variant_case(c);
  return peft::golden::fail("unknown kind \"" + kind + "\"");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cerr << "usage: peft-golden DIR\n  runs every case folder (with a case.json) in DIR\n";
    return argc == 2 ? 0 : 2;
  }
  const fs::path root = argv[1];
  if (!fs::is_directory(root)) {
    std::cerr << "peft-golden: \"" << root.string() << "\" is not a directory\n";
    return 2;
  }
  peft::set_num_threads();
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root)) {
    if (e.is_directory() && fs::exists(e.path() / "case.json")) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  int passed = 0, failed = 0, skipped = 0;
  for (const auto& d : dirs) {
    Case c;
    c.dir = d.string();
    CaseResult r;
    try {
      std::ifstream f(d / "case.json");
      c.spec = nlohmann::json::parse(f);
      r = run_case(c);
    } catch (const c10::Error& e) {
      r = peft::golden::fail(std::string("LibTorch: ") + e.what_without_backtrace());
    } catch (const std::exception& e) {
      r = peft::golden::fail(e.what());
    }
    const std::string id = c.spec.is_object() ? c.id() : d.filename().string();
    switch (r.status) {
      case CaseResult::Status::kPass:
        std::printf("PASS %s %.3g\n", id.c_str(), r.max_abs_diff);
        ++passed;
        break;
      case CaseResult::Status::kFail:
        std::printf("FAIL %s %s\n", id.c_str(), r.reason.c_str());
        ++failed;
        break;
      case CaseResult::Status::kSkip:
        std::printf("SKIP %s %s\n", id.c_str(), r.reason.c_str());
        ++skipped;
        break;
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed == 0 ? 0 : 1;
}
