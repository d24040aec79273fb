// The saved-file layout check of "model" cases with an expected.json: for every folder listed
// there, save the adapters that folder holds and compare file names, safetensors keys / shapes /
// dtypes and adapter_config.json.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "case.h"
#include "peft/io/safetensors.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace peft::golden {
namespace {

std::set<std::string> list_files(const fs::path& root) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) out.insert(fs::relative(e.path(), root).generic_string());
  }
  return out;
}

// Keys whose values legitimately differ: the writer's version and the base model's local path.
json normalized_config(json j) {
  j.erase("peft_version");
  j.erase("base_model_name_or_path");
  for (const char* key : {"target_modules", "exclude_modules", "modules_to_save"}) {
    if (j.contains(key) && j[key].is_array()) {
      auto v = j[key].get<std::vector<std::string>>();  // written from Python sets: order carries
                                                        // no meaning
      std::sort(v.begin(), v.end());
      j[key] = v;
    }
  }
  return j;
}

std::string dtype_name(const std::string& st) {
  static const std::map<std::string, std::string> names{
      {"F32", "float32"}, {"F16", "float16"}, {"BF16", "bfloat16"}, {"I64", "int64"},
      {"I32", "int32"},   {"U8", "uint8"},    {"BOOL", "bool"},     {"F64", "float64"}};
  auto it = names.find(st);
  return it == names.end() ? st : it->second;
}

}  // namespace

CaseResult compare_saved_layout(const Case& c, const PeftModel& pm) {
  std::ifstream f(fs::path(c.dir) / c.spec.value("expected_file", "expected.json"));
  if (!f.good()) return fail("cannot open expected.json");
  json expected = json::parse(f);
  const fs::path tmp =
      fs::temp_directory_path() / ("peft_golden_layout_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  int folders = 0;
  for (const auto& [folder, listing] : expected.items()) {
    if (!listing.is_object()) continue;  // notes
    ++folders;
    // The adapters a folder holds: adapter_config.json at its root is "default",
    // <name>/adapter_config.json is name.
    std::vector<std::string> selected;
    for (const auto& [file, content] : listing.items()) {
      if (file == "adapter_config.json") selected.push_back("default");
      auto slash = file.find('/');
      if (slash != std::string::npos && file.substr(slash + 1) == "adapter_config.json") {
        selected.push_back(file.substr(0, slash));
      }
    }
    const fs::path out = tmp / folder;
    pm.save_pretrained(out.string(), selected);
    std::set<std::string> want;
    for (const auto& [file, content] : listing.items()) want.insert(file);
    const auto got = list_files(out);
    if (got != want) {
      std::string g, w;
      for (const auto& s : got) g += s + " ";
      for (const auto& s : want) w += s + " ";
      fs::remove_all(tmp);
      return fail(folder + ": files [" + g + "] vs expected [" + w + "]");
    }
    for (const auto& [file, content] : listing.items()) {
      const fs::path p = out / file;
      std::string problem;
      if (file.size() > 12 && file.substr(file.size() - 12) == ".safetensors") {
        io::SafetensorsFile st(p.string());
        const std::vector<std::string> key_list = st.keys();
        std::set<std::string> keys(key_list.begin(), key_list.end());
        std::set<std::string> want_keys;
        for (const auto& [key, info] : content.items()) {
          want_keys.insert(key);
          if (!st.contains(key)) continue;
          if (st.shape(key) != info.at("shape").get<std::vector<int64_t>>())
            problem = key + ": shape differs";
          if (dtype_name(st.dtype(key)) != info.at("dtype").get<std::string>())
            problem = key + ": dtype differs";
        }
        if (keys != want_keys) problem = "tensor names differ";
      } else if (file.size() > 5 && file.substr(file.size() - 5) == ".json") {
        std::ifstream jf(p);
        json ours = json::parse(jf);
        if (normalized_config(ours) != normalized_config(content)) {
          problem = "content differs: ours " + normalized_config(ours).dump() + " vs " +
                    normalized_config(content).dump();
        }
      }
      if (!problem.empty()) {
        fs::remove_all(tmp);
        return fail(folder + "/" + file + ": " + problem);
      }
    }
  }
  fs::remove_all(tmp);
  if (folders == 0) return fail("expected.json lists no folders");
  return {};
}

}  // namespace peft::golden
