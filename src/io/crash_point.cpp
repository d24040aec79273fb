// PEFT_CRASH_AT: kill -9 at a named moment, for the crash-safety tests.
#include "peft/io/crash_point.h"

#include <csignal>
#include <cstdlib>
#include <mutex>
#include <string>

namespace peft::io {
namespace {

struct Target {
  std::string name;  // empty: no crash point armed
  long hit = 1;      // kill at this hit of `name`
  long seen = 0;
  std::mutex mutex;
};

Target& target() {
  static Target* t = [] {
    auto* out = new Target;  // never destroyed: crash points may run during static destruction
    const char* env = std::getenv("PEFT_CRASH_AT");
    if (env == nullptr || *env == '\0') return out;
    std::string spec(env);
    const size_t at = spec.rfind('@');
    if (at != std::string::npos) {
      char* end = nullptr;
      const long k = std::strtol(spec.c_str() + at + 1, &end, 10);
      if (end != nullptr && *end == '\0' && k > 0) {
        out->hit = k;
        spec.resize(at);
      }
    }
    out->name = spec;
    return out;
  }();
  return *t;
}

}  // namespace

void crash_point(std::string_view name) {
  Target& t = target();
  if (t.name.empty() || t.name != name) return;
  std::lock_guard<std::mutex> lock(t.mutex);
  if (++t.seen == t.hit) std::raise(SIGKILL);
}

}  // namespace peft::io
