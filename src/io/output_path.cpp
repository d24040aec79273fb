// Canonical comparison of output and input paths.
#include "peft/io/output_path.h"

#include <filesystem>
#include <system_error>

#include "peft/error.h"

namespace fs = std::filesystem;

namespace peft::io {
namespace {

// Absolute, symlinks of the existing prefix resolved, lexically normal, no trailing separator.
fs::path canonical_form(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path), ec);
  if (ec) p = fs::absolute(path);
  p = p.lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

// True when `inner` is `outer` or lies below it.
bool same_or_inside(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // a trailing "" element
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

}  // namespace

void check_output_outside_inputs(const NamedPath& out, const std::vector<NamedPath>& inputs,
                                 const std::string& component) {
  if (out.path.empty()) return;
  const fs::path o = canonical_form(out.path);
  for (const auto& in : inputs) {
    if (in.path.empty()) continue;
    const fs::path i = canonical_form(in.path);
    if (!same_or_inside(o, i)) continue;
    const bool same = o == i;
    throw ConfigError(component,
                      out.flag + " \"" + out.path + "\" " +
                          (same ? "is the same path as " : "lies inside ") + in.flag + " \"" +
                          in.path + "\" (resolved: " + o.string() +
                          (same ? "" : " inside " + i.string()) +
                          "); an output must never overwrite an input (hint: choose a new " +
                          out.flag + " folder outside every input)");
  }
}

}  // namespace peft::io
