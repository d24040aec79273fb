// check-layers SOURCE_DIR [--graph]: enforces the dependency rule of docs/architecture.md. The
// table between the markers
// "<!-- layers:begin -->" and "<!-- layers:end -->" there names each component, its layer and its
// paths; every
// `#include "..."` of a file may name its own component or a component of a strictly lower layer.
// Also refuses <torch/torch.h> outside tests, benchmarks and examples (25 s of compile per
// translation unit). Prints each violation as "file:line: component (layer) includes target:
// component (layer)" and exits 1 when there is one; 2 when the table cannot be read. --graph also
// prints, per component, the components its files include. Needs no LibTorch, so that it builds in
// seconds.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Component {
  std::string name;
  int layer = 0;
  std::vector<std::string>
      paths;  // relative to SOURCE_DIR: a folder ("src/lora") or a file ("src/kappa.cpp")
};

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t`");
  const auto e = s.find_last_not_of(" \t`");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// Rows "| name | layer | path path ... |" between the markers.
std::vector<Component> read_table(const fs::path& doc) {
  std::ifstream in(doc);
  if (!in) throw std::runtime_error("cannot read " + doc.string());
  std::vector<Component> out;
  bool inside = false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("<!-- layers:begin -->") != std::string::npos) inside = true;
    if (line.find("<!-- layers:end -->") != std::string::npos) break;
    if (!inside || line.rfind("|", 0) != 0 || line.find("---") != std::string::npos) continue;
    std::vector<std::string> cells;
    std::stringstream ss(line.substr(1));
    std::string cell;
    while (std::getline(ss, cell, '|')) cells.push_back(trim(cell));
    if (cells.size() < 3 || cells[1] == "layer") continue;
    Component c{cells[0], std::stoi(cells[1]), {}};
    std::stringstream paths(cells[2]);
    std::string p;
    while (paths >> p) c.paths.push_back(trim(p));
    out.push_back(c);
  }
  if (out.empty())
    throw std::runtime_error(doc.string() + " has no layer table between the markers");
  return out;
}

// The component whose path is the longest prefix of `rel` (a path relative to the source dir).
const Component* component_of(const std::vector<Component>& table, const std::string& rel) {
  const Component* best = nullptr;
  size_t best_len = 0;
  for (const auto& c : table) {
    for (const auto& p : c.paths) {
      const bool folder =
          rel.size() > p.size() && rel.compare(0, p.size(), p) == 0 && rel[p.size()] == '/';
      if ((rel == p || folder) && p.size() > best_len) {
        best = &c;
        best_len = p.size();
      }
    }
  }
  return best;
}

// Where `#include "target"` in `file` resolves: next to the file first, then include/.
std::optional<std::string> resolve(const fs::path& root, const fs::path& file,
                                   const std::string& target) {
  for (const fs::path& candidate : {file.parent_path() / target, root / "include" / target}) {
    if (fs::exists(candidate))
      return fs::relative(fs::weakly_canonical(candidate), root).generic_string();
  }
  return std::nullopt;
}

bool is_source(const fs::path& p) {
  const auto ext = p.extension().string();
  return ext == ".h" || ext == ".cpp" || ext == ".hpp" || ext == ".inc";
}

}  // namespace

int main(int argc, char** argv) {
  const bool graph = argc == 3 && std::string(argv[2]) == "--graph";
  if (argc != 2 && !graph) {
    std::cerr << "usage: check-layers SOURCE_DIR [--graph]\n";
    return 2;
  }
  const fs::path root = fs::weakly_canonical(argv[1]);
  std::vector<Component> table;
  try {
    table = read_table(root / "docs" / "architecture.md");
  } catch (const std::exception& e) {
    std::cerr << "check-layers: " << e.what() << "\n";
    return 2;
  }
  const std::regex include_re(R"(^\s*#\s*include\s*([<"])([^">]+)[">])");
  int violations = 0, files = 0, includes = 0;
  std::map<std::string, std::set<std::string>>
      uses;  // component -> the other components it includes
  for (const auto& c : table) {
    for (const auto& p : c.paths) {
      const fs::path start = root / p;
      if (!fs::exists(start)) {
        std::cerr << "check-layers: component " << c.name << " lists " << p
                  << ", which does not exist\n";
        ++violations;
        continue;
      }
      std::vector<fs::path> list;
      if (fs::is_directory(start)) {
        for (const auto& e : fs::recursive_directory_iterator(start)) {
          if (e.is_regular_file() && is_source(e.path())) list.push_back(e.path());
        }
      } else {
        list.push_back(start);
      }
      std::sort(list.begin(), list.end());
      for (const auto& file : list) {
        const std::string rel = fs::relative(file, root).generic_string();
        const Component* own = component_of(table, rel);
        if (own != &c) continue;  // a more specific component claims it
        ++files;
        std::ifstream in(file);
        std::string line;
        for (int n = 1; std::getline(in, line); ++n) {
          std::smatch m;
          if (!std::regex_search(line, m, include_re)) continue;
          const std::string target = m[2];
          if (m[1] == "<") {
            // The umbrella header only in tests, benchmarks and examples (user code).
            const bool exempt = rel.rfind("tests/", 0) == 0 || rel.rfind("bench/", 0) == 0 ||
                                rel.rfind("examples/", 0) == 0;
            if (target == "torch/torch.h" && !exempt) {
              std::cout << rel << ":" << n
                        << ": includes <torch/torch.h>; include the narrow LibTorch headers\n";
              ++violations;
            }
            continue;
          }
          ++includes;
          const auto resolved = resolve(root, file, target);
          if (!resolved) continue;  // a generated or third-party header
          const Component* dep = component_of(table, *resolved);
          if (!dep) {
            std::cout << rel << ":" << n << ": includes " << *resolved
                      << ", which no component of the table owns\n";
            ++violations;
            continue;
          }
          if (dep != own) uses[own->name].insert(dep->name);
          if (dep == own || dep->layer < own->layer) continue;
          std::cout << rel << ":" << n << ": " << own->name << " (layer " << own->layer
                    << ") includes " << *resolved << ": " << dep->name << " (layer " << dep->layer
                    << ")\n";
          ++violations;
        }
      }
    }
  }
  if (graph) {
    for (const auto& c : table) {
      std::cout << c.layer << " " << c.name << " ->";
      for (const auto& d : uses[c.name]) std::cout << " " << d;
      std::cout << "\n";
    }
  }
  std::cout << "check-layers: " << files << " files, " << includes << " includes, " << violations
            << " violation(s)\n";
  return violations == 0 ? 0 : 1;
}
