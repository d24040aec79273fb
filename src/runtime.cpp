#include "peft/runtime.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "peft/error.h"

namespace peft {

int set_num_threads(int threads) {
  PEFT_CHECK(threads <= kMaxThreads, ConfigError, "runtime",
             "threads must be at most " << kMaxThreads << "; got " << threads
                                        << " (hint: 0 = one per physical core)");
  if (threads > 0) at::set_num_threads(threads);
  return at::get_num_threads();
}

std::string blas_libraries() {
  std::set<std::string> libs;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    auto base = std::filesystem::path(path).filename().string();
    if (base.find("blas") == std::string::npos && base.find("lapack") == std::string::npos)
      continue;
    std::error_code ec;
    auto real = std::filesystem::canonical(path, ec);
    libs.insert(ec ? path : real.string());
  }
  std::string out;
  for (const auto& l : libs) {
    if (!out.empty()) out += ", ";
    out += l;
  }
  return out.empty() ? "unknown" : out;
}

}  // namespace peft
