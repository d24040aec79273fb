// PEFT adapter folders: where each adapter goes, what a loadable folder holds, and the checkpoint
// key prefix.
#include "peft/io/adapter_io.h"

#include <filesystem>

#include "peft/error.h"

namespace fs = std::filesystem;

namespace peft::io {

std::string adapter_subdir(const std::string& dir, const std::string& adapter) {
  return adapter == "default" ? dir : (fs::path(dir) / adapter).string();
}

void check_adapter_dir(const std::string& dir) {
  PEFT_CHECK(
      fs::is_directory(dir), FormatError, "load_adapter",
      "\"" << dir << "\" is not a directory (hint: pass the folder written by save_pretrained)");
  const fs::path cfg = fs::path(dir) / kAdapterConfigName;
  PEFT_CHECK(fs::exists(cfg), FormatError, "load_adapter",
             "\"" << dir << "\" has no " << kAdapterConfigName
                  << " (hint: is this a PEFT adapter folder?)");
  const fs::path weights = fs::path(dir) / kAdapterWeightsName;
  if (!fs::exists(weights)) {
    PEFT_CHECK(
        !fs::exists(fs::path(dir) / "adapter_model.bin"), UnsupportedError, "load_adapter",
        "\"" << dir << "\" holds adapter_model.bin (a Python pickle), which peft.cpp does not read "
             << "(hint: re-save it in Python with save_pretrained(..., safe_serialization=True))");
    throw FormatError("load_adapter", "\"" + dir + "\" has no " + kAdapterWeightsName);
  }
}

std::string strip_checkpoint_prefix(const std::string& key) {
  const std::string p = kCheckpointPrefix;
  return key.rfind(p, 0) == 0 ? key.substr(p.size()) : key;
}

}  // namespace peft::io
