// safetensors reader (mmap, zero-copy) and writer (temporary file + fsync + rename).
// Layout: 8-byte little-endian header length N, N bytes of JSON, then the data section. Every rule
// is checked before any tensor byte is touched, so a malformed or hostile file yields
// peft::FormatError instead of an out-of-bounds read.
#include "peft/io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <tuple>

#include "peft/error.h"
#include "peft/io/atomic_write.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"

namespace peft::io {
namespace {

constexpr const char* kComponent = "safetensors";
// Same limit as the reference Rust implementation: bounds the JSON parse of a hostile file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  uint64_t size;
  // Position in the Rust `Dtype` enum (increasing alignment). Writing by descending rank, then
  // name, as the Python package does, gives byte-identical files with every tensor aligned.
  int rank;
};

// clang-format off
constexpr std::array<DtypeInfo, 10> kDtypes{{
    {"F64", at::kDouble, 8, 8}, {"F32", at::kFloat, 4, 7}, {"F16", at::kHalf, 2, 4},
    {"BF16", at::kBFloat16, 2, 5}, {"I64", at::kLong, 8, 9}, {"I32", at::kInt, 4, 6},
    {"I16", at::kShort, 2, 3}, {"I8", at::kChar, 1, 2}, {"U8", at::kByte, 1, 1},
    {"BOOL", at::kBool, 1, 0}}};
// clang-format on

constexpr const char* kDtypeList = "F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL";

const DtypeInfo* dtype_by_name(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* dtype_by_type(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// Messages are built with a stream: GCC 12 warns falsely (-Wrestrict) on `"lit" + std::string&&`.
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

std::string quoted(const std::string& s) { return cat('"', s, '"'); }

// "[safetensors] \"<path>\": <what is wrong>: <observed>; expected <...>"
template <typename... Args>
[[noreturn]] void format_error(const std::string& path, const Args&... what) {
  throw FormatError(kComponent, cat(quoted(path), ": ", what...));
}

// Owns the mapping; shared by the file object and by every zero-copy tensor (via the deleter).
struct Mapping {
  void* addr = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (addr != MAP_FAILED) munmap(addr, size);
  }
};

struct Entry {
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// A non-negative JSON integer that fits in int64 (nlohmann parses those as unsigned).
std::optional<uint64_t> non_negative_int(const nlohmann::json& v) {
  if (!v.is_number_unsigned()) return std::nullopt;
  const auto u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return u;
}

Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& v) {
  const std::string where = cat("tensor ", quoted(name), ": ");
  if (!v.is_object()) format_error(path, where, "entry is not a JSON object: ", v.dump());
  Entry e;
  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) {
    format_error(path, where, "missing or non-string \"dtype\"; expected one of ", kDtypeList);
  }
  e.dtype = dtype_by_name(dt->get<std::string>());
  if (e.dtype == nullptr) {
    format_error(path, where, "unknown dtype: ", quoted(dt->get<std::string>()),
                 "; expected one of ", kDtypeList,
                 " (hint: quantized or FP8 checkpoints are not supported)");
  }
  const auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) format_error(path, where, "missing or non-array \"shape\"");
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    const auto dim = non_negative_int(d);
    if (!dim) {
      format_error(path, where, "invalid shape dimension: ", d.dump(),
                   "; expected a non-negative integer");
    }
    if (__builtin_mul_overflow(numel, *dim, &numel)) {
      format_error(path, where, "shape element count overflows: ", sh->dump());
    }
    e.shape.push_back(static_cast<int64_t>(*dim));
  }
  const auto off = v.find("data_offsets");
  std::optional<uint64_t> begin, end;
  if (off != v.end() && off->is_array() && off->size() == 2) {
    begin = non_negative_int((*off)[0]);
    end = non_negative_int((*off)[1]);
  }
  if (!begin || !end) {
    format_error(path, where,
                 "invalid \"data_offsets\": ", off == v.end() ? "missing" : off->dump(),
                 "; expected [begin, end] of non-negative integers");
  }
  if (*begin > *end) {
    format_error(path, where, "data_offsets begin > end: [", *begin, ", ", *end,
                 "]; expected begin <= end");
  }
  e.begin = *begin;
  e.end = *end;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, e.dtype->size, &nbytes)) {
    format_error(path, where, "shape element count overflows: ", sh->dump());
  }
  if (nbytes != e.end - e.begin) {
    format_error(path, where, "byte length != elements x dtype size: ", e.end - e.begin,
                 " bytes; expected ", numel, " x ", e.dtype->size, " = ", nbytes, " (",
                 e.dtype->name, ", shape ", sh->dump(), ")");
  }
  return e;
}

}  // namespace

struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> mapping;
  uint64_t data_start = 0;  // 8 + N
  std::map<std::string, Entry> entries;
  std::vector<std::string> order;  // by data offset
  std::map<std::string, std::string> metadata;

  const Entry& lookup(const std::string& name) const {
    const auto it = entries.find(name);
    if (it != entries.end()) return it->second;
    std::ostringstream os;
    os << "tensor " << quoted(name) << " not found: file has " << order.size()
       << " tensors; expected one of";
    for (size_t i = 0; i < order.size() && i < 5; ++i) os << (i ? ", " : " ") << quoted(order[i]);
    if (order.size() > 5) os << ", ... (" << order.size() - 5 << " more)";
    os << " (hint: check the adapter name / module prefix)";
    format_error(path, os.str());
  }
};

SafetensorsFile::SafetensorsFile(const std::string& path) : impl_(std::make_shared<Impl>()) {
  impl_->path = path;
  // A FIFO, directory or symlink loop is refused here, without blocking.
  RegularFile file(path, kComponent);
  const uint64_t file_size = file.size();
  const int fd = file.release();
  if (file_size < 8) {
    ::close(fd);
    format_error(path, "file shorter than 8 bytes: ", file_size,
                 " bytes; expected an 8-byte header length (hint: truncated download?)");
  }
  // MAP_PRIVATE + PROT_WRITE: an in-place op on a returned tensor gets private copy-on-write pages
  // and never reaches the file (with PROT_READ alone it would SIGSEGV).
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(file_size);
  mapping->addr = ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // The mapping holds its own reference to the file.
  if (mapping->addr == MAP_FAILED) {
    throw Error(kComponent, cat(quoted(path), ": mmap failed: ", std::strerror(mmap_errno)));
  }
  impl_->mapping = mapping;
  const auto* bytes = static_cast<const uint8_t*>(mapping->addr);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian, independent of the host
  if (n > kMaxHeaderBytes) {
    format_error(path, "header length too large: ", n, " bytes; expected <= ", kMaxHeaderBytes,
                 " (hint: not a safetensors file?)");
  }
  if (n > file_size - 8) {
    format_error(path, "header extends past end of file: header length ", n, " but only ",
                 file_size - 8,
                 " bytes follow; expected a complete header (hint: truncated file?)");
  }
  impl_->data_start = 8 + n;
  const uint64_t data_size = file_size - impl_->data_start;

  nlohmann::json header;
  {
    const std::string_view text(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(n));
    check_json_depth(text, kComponent, quoted(path) + ": header");
    // The JSON parser keeps the last of two equal keys; a tensor named twice is refused instead.
    std::set<std::string> names;
    const nlohmann::json::parser_callback_t no_duplicates =
        [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (depth == 1 && event == nlohmann::json::parse_event_t::key &&
              !names.insert(parsed.get<std::string>()).second) {
            format_error(path, "tensor ", quoted(parsed.get<std::string>()),
                         " is named twice in the header; expected unique names (hint: the file "
                         "is corrupt or hostile)");
          }
          return true;
        };
    try {
      header = nlohmann::json::parse(text.begin(), text.end(), no_duplicates);
    } catch (const nlohmann::json::exception& e) {
      format_error(path, "header is not valid JSON: ", e.what(), "; expected a JSON object");
    }
  }
  if (!header.is_object()) {
    format_error(path, "header is not a JSON object: ", header.type_name(),
                 "; expected {\"name\": {...}, ...}");
  }

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) format_error(path, "__metadata__ is not an object: ", value.dump());
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          format_error(path, "__metadata__ is not a string->string map: key ", quoted(k), " has ",
                       v.dump(), "; expected a string value");
        }
        impl_->metadata[k] = v.get<std::string>();
      }
      continue;
    }
    impl_->entries[name] = parse_entry(path, name, value);
  }
  std::vector<std::pair<std::string, const Entry*>> sorted;
  for (const auto& [name, e] : impl_->entries) sorted.emplace_back(name, &e);
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second->begin, a.second->end, a.first) <
           std::tie(b.second->begin, b.second->end, b.first);
  });
  // Sorted by begin, the ranges must tile [0, data_size) exactly. This one pass rules out overlap,
  // gaps and out-of-bounds ranges, which is what makes the pointer arithmetic in get() safe.
  uint64_t cursor = 0;
  for (const auto& [name, e] : sorted) {
    if (e->begin < cursor) {
      format_error(path, "tensor ", quoted(name), " data_offsets overlap the previous tensor: [",
                   e->begin, ", ", e->end, "]; expected begin >= ", cursor);
    }
    if (e->begin > cursor && impl_->order.empty()) {
      format_error(path, "data_offsets do not start at 0: first tensor ", quoted(name),
                   " begins at ", e->begin, "; expected 0");
    }
    if (e->begin > cursor) {
      format_error(path, "gap between data_offsets: tensor ", quoted(name), " begins at ", e->begin,
                   "; expected ", cursor, " (where the previous tensor ends)");
    }
    cursor = e->end;
    impl_->order.push_back(name);
  }
  if (cursor != data_size) {
    format_error(path, "data section not covered exactly by data_offsets: tensors end at ", cursor,
                 "; expected ", data_size,
                 cursor < data_size ? " (trailing bytes)" : " (data extends past end of file)");
  }
}

SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const { return impl_->path; }

std::vector<std::string> SafetensorsFile::keys() const { return impl_->order; }

bool SafetensorsFile::contains(const std::string& name) const {
  return impl_->entries.count(name) > 0;
}

std::vector<int64_t> SafetensorsFile::shape(const std::string& name) const {
  return impl_->lookup(name).shape;
}

std::string SafetensorsFile::dtype(const std::string& name) const {
  return impl_->lookup(name).dtype->name;
}

at::Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = impl_->lookup(name);
  const auto options = at::TensorOptions().dtype(e.dtype->type).device(at::kCPU);
  if (e.begin == e.end) return at::empty(e.shape, options);
  // In bounds: the constructor checked that every range lies inside the data section.
  uint8_t* data = static_cast<uint8_t*>(impl_->mapping->addr) + impl_->data_start + e.begin;
  const size_t nbytes = static_cast<size_t>(e.end - e.begin);
  if (e.dtype->type == at::kBool) {
    // A bool byte other than 0/1 is undefined behaviour for LibTorch kernels.
    for (size_t i = 0; i < nbytes; ++i) {
      if (data[i] > 1) {
        format_error(impl_->path, "tensor ", quoted(name), ": BOOL byte ",
                     static_cast<int>(data[i]), " at element ", i, "; expected 0 or 1");
      }
    }
  }
  if (reinterpret_cast<uintptr_t>(data) % e.dtype->size == 0) {
    std::shared_ptr<Mapping> keep = impl_->mapping;
    return at::from_blob(
        data, e.shape, [keep](void*) {}, options);
  }
  // Misaligned (header length not padded as the Python writer does): element loads would be UB.
  at::Tensor t = at::empty(e.shape, options);
  std::memcpy(t.data_ptr(), data, nbytes);
  return t;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}

std::map<std::string, at::Tensor> load_safetensors(const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& name : file.keys()) out.emplace(name, file.get(name));
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Validate everything before touching the filesystem.
  std::vector<std::pair<std::string, const at::Tensor*>> sorted;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    PEFT_CHECK(
        seen.insert(name).second, Error, kComponent,
        quoted(path) << ": duplicate tensor name: " << quoted(name) << "; expected unique names");
    PEFT_CHECK(name != "__metadata__", Error, kComponent,
               quoted(path) << ": tensor name \"__metadata__\" is reserved; expected another name");
    PEFT_CHECK(t.defined(), Error, kComponent,
               quoted(path) << ": tensor " << quoted(name) << " is undefined; expected a tensor");
    PEFT_CHECK(t.layout() == at::kStrided && dtype_by_type(t.scalar_type()) != nullptr,
               UnsupportedError, kComponent,
               quoted(path) << ": tensor " << quoted(name)
                            << " has unsupported dtype/layout: " << t.scalar_type() << "/"
                            << t.layout() << "; expected a dense tensor of " << kDtypeList);
    sorted.emplace_back(name, &t);
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    const int ra = dtype_by_type(a.second->scalar_type())->rank;
    const int rb = dtype_by_type(b.second->scalar_type())->rank;
    return ra != rb ? ra > rb : a.first < b.first;
  });

  // As the Python package: __metadata__ first, then tensors in data order; compact JSON.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    const auto nbytes = static_cast<uint64_t>(t->numel()) * dtype_by_type(t->scalar_type())->size;
    header[name] = {{"dtype", dtype_by_type(t->scalar_type())->name},
                    {"shape", t->sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(kComponent, cat(quoted(path), ": cannot encode header: ", e.what(),
                                "; expected UTF-8 tensor names and metadata"));
  }
  // Pad so the data section starts 8-byte aligned, which lets readers map every dtype zero-copy.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  write_file_atomically(
      path,
      [&](const ByteSink& sink) {
        uint8_t len_bytes[8];
        for (int i = 0; i < 8; ++i)
          len_bytes[i] = static_cast<uint8_t>(header_text.size() >> (8 * i));
        sink(len_bytes, 8);
        sink(header_text.data(), header_text.size());
        for (const auto& [name, t] : sorted) {
          // One tensor at a time, so a GPU model never needs a full CPU copy.
          const at::Tensor cpu = t->detach().to(at::kCPU).contiguous();
          if (cpu.numel() > 0) sink(cpu.data_ptr(), cpu.nbytes());
        }
      },
      kComponent);
}

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  save_safetensors(path,
                   std::vector<std::pair<std::string, at::Tensor>>(tensors.begin(), tensors.end()),
                   metadata);
}

}  // namespace peft::io
