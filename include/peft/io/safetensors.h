// safetensors read (memory-mapped, zero-copy where the dtype allows) and write (temporary file +
// rename). Counterpart of the `safetensors` Python package used by PEFT's save_pretrained / load.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace peft::io {

// A safetensors file opened for reading. The file is memory-mapped; tensors returned by `get` share
// the mapping (zero-copy) when their bytes are suitably aligned, otherwise they are copied. Tensors
// keep the mapping alive, so a SafetensorsFile may be destroyed before the tensors it returned.
class SafetensorsFile {
 public:
  // Opens and validates `path`: header <= 100 MB and valid JSON, known dtypes only, offsets start
  // at 0, are contiguous, do not overlap and cover the data section exactly, byte length = elements
  // x dtype size. Any violation throws peft::FormatError naming the file and the rule.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const;
  // Tensor names in file order (by data offset).
  std::vector<std::string> keys() const;
  bool contains(const std::string& name) const;
  // Shape as stored (no data access).
  std::vector<int64_t> shape(const std::string& name) const;
  // "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL" (also I8, I16, F64 read).
  std::string dtype(const std::string& name) const;
  // The tensor (CPU). Throws peft::FormatError if the name is missing (listing a few names that
  // exist).
  at::Tensor get(const std::string& name) const;
  // The `__metadata__` string map (empty if absent).
  const std::map<std::string, std::string>& metadata() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Loads every tensor of a file (zero-copy where possible).
std::map<std::string, at::Tensor> load_safetensors(const std::string& path);

// Writes tensors (any device; moved to CPU, made contiguous) with optional __metadata__, to `path +
// ".tmp-XXXX"` then renames it onto `path`, so a crash never leaves a truncated file. Keys are
// written sorted, as the Python package does. Unsupported dtypes throw peft::UnsupportedError
// naming the tensor.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace peft::io
