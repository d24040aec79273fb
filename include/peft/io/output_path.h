// Outputs never land on or inside inputs: the check every writing verb makes before it writes.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace peft::io {

// An input or output path and the option that named it ("--model", "--out").
struct NamedPath {
  std::string flag;
  std::string path;
};

// Throws peft::ConfigError(component) naming both options when `out` is the same file or folder as
// an input, or lies inside an input folder. Paths are compared canonically (absolute, ".." and
// trailing slashes removed, symlinks of the existing part resolved), so "MODEL/", "./MODEL" and a
// symlink to MODEL are all MODEL. Inputs with an empty path are skipped.
void check_output_outside_inputs(const NamedPath& out, const std::vector<NamedPath>& inputs,
                                 const std::string& component);

}  // namespace peft::io
