#include "train/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "tensor/copy.h"
#include "train/file_io.h"

namespace longnet {

namespace {

using nlohmann::json;

// Tensor bytes go to and from the file as they lie in memory.
static_assert(std::endian::native == std::endian::little, "safetensors needs a little-endian host");

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr std::uint64_t kMaxInt64 = std::numeric_limits<std::int64_t>::max();
const std::string kMetadataKey = "__metadata__";

const char* format_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::bf16:
      return "BF16";
    case DType::i32:
      return "I32";
    case DType::i64:
      break;
  }
  return "I64";
}

std::optional<DType> parse_dtype(const std::string& text) {
  for (DType d : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
    if (text == format_name(d)) return d;
  }
  return std::nullopt;
}

// A JSON value for an error message: scalars as written (cut short), containers by type,
// so that a hostile header never makes a long message or a deep recursion.
std::string show(const json& v) {
  if (v.is_structured()) return cat("a JSON ", v.type_name());
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) {
    text.resize(40);
    text += "...";
  }
  return text;
}

// v as a u64 when it is a non-negative JSON integer.
std::optional<std::uint64_t> as_count(const json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    return static_cast<std::uint64_t>(v.get<std::int64_t>());
  }
  return std::nullopt;
}

// One header entry, checked on its own.
struct Entry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

std::string offsets_text(const Entry& e) { return cat("[", e.begin, ", ", e.end, "]"); }

Entry parse_entry(const std::string& name, const json& v, std::uint64_t data_bytes,
                  const std::string& source) {
  std::string where = cat(source, ": tensor '", name, "'");
  LN_CHECK(v.is_object(), where, ": entry is ", show(v), ", not an object");
  Entry e;
  e.name = name;

  auto dtype = v.find("dtype");
  LN_CHECK(dtype != v.end(), where, ": entry has no \"dtype\"");
  LN_CHECK(dtype->is_string(), where, ": \"dtype\" is ", show(*dtype), ", not a string");
  auto parsed = parse_dtype(dtype->get<std::string>());
  LN_CHECK(parsed, where, ": unsupported dtype ", show(*dtype),
           " (supported: F32, F64, BF16, I32, I64)");
  e.dtype = *parsed;

  auto shape = v.find("shape");
  LN_CHECK(shape != v.end(), where, ": entry has no \"shape\"");
  LN_CHECK(shape->is_array(), where, ": \"shape\" is ", show(*shape), ", not an array");
  // numel is computed in u64 with every product checked, and must fit an i64.
  std::uint64_t numel = 1;
  bool has_zero = false;
  bool overflow = false;
  for (std::size_t i = 0; i < shape->size(); ++i) {
    auto dim = as_count((*shape)[i]);
    LN_CHECK(dim && *dim <= kMaxInt64, where, ": shape dimension ", i, " is ", show((*shape)[i]),
             ", not a non-negative integer");
    e.shape.push_back(static_cast<std::int64_t>(*dim));
    has_zero = has_zero || *dim == 0;
    overflow = overflow || __builtin_mul_overflow(numel, *dim, &numel) || numel > kMaxInt64;
  }
  if (has_zero) numel = 0;
  LN_CHECK(!overflow || has_zero, where, ": shape ", str(e.shape),
           " has more elements than fit in 64 bits");

  auto offsets = v.find("data_offsets");
  LN_CHECK(offsets != v.end(), where, ": entry has no \"data_offsets\"");
  LN_CHECK(offsets->is_array(), where, ": \"data_offsets\" is ", show(*offsets),
           ", not an array [begin, end]");
  LN_CHECK(offsets->size() == 2, where, ": \"data_offsets\" has ", offsets->size(),
           " elements, not 2 [begin, end]");
  auto begin = as_count((*offsets)[0]);
  auto end = as_count((*offsets)[1]);
  LN_CHECK(begin && end, where, ": \"data_offsets\" [", show((*offsets)[0]), ", ",
           show((*offsets)[1]), "] are not non-negative integers");
  e.begin = *begin;
  e.end = *end;
  LN_CHECK(e.begin <= e.end, where, ": data_offsets ", offsets_text(e), " begin after they end");
  LN_CHECK(e.end <= data_bytes, where, ": data_offsets ", offsets_text(e), " end past the ",
           data_bytes, "-byte data section");
  std::uint64_t bytes = 0;
  bool too_big = __builtin_mul_overflow(numel, element_size(e.dtype), &bytes);
  LN_CHECK(!too_big && bytes == e.end - e.begin, where, ": dtype ", format_name(e.dtype),
           " and shape ", str(e.shape), " need ", numel, " x ", element_size(e.dtype),
           " bytes, but data_offsets ", offsets_text(e), " hold ", e.end - e.begin);
  return e;
}

struct Header {
  std::vector<Entry> entries;  // sorted by data offsets
  std::map<std::string, std::string> metadata;
};

Header parse_header(const std::string& text, std::uint64_t data_bytes, const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(cat(source, ": header is not valid JSON: ", e.what()));
  }
  LN_CHECK(root.is_object(), source, ": header is ", show(root), ", not a JSON object");

  Header h;
  for (const auto& [key, value] : root.items()) {
    if (key == kMetadataKey) {
      LN_CHECK(value.is_object(), source, ": __metadata__ is ", show(value), ", not an object");
      for (const auto& [k, v] : value.items()) {
        LN_CHECK(v.is_string(), source, ": __metadata__ value for key '", k, "' is ", show(v),
                 ", not a string");
        h.metadata.emplace(k, v.get<std::string>());
      }
    } else {
      h.entries.push_back(parse_entry(key, value, data_bytes, source));
    }
  }

  // The ranges must tile the data section exactly: in offset order each begins where the
  // previous one ended, and the last ends at the end of the section.
  std::sort(h.entries.begin(), h.entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t covered = 0;
  std::string previous;  // "'name' data_offsets [begin, end]" of the last entry
  for (const Entry& e : h.entries) {
    LN_CHECK(e.begin >= covered, source, ": tensor '", e.name, "' data_offsets ", offsets_text(e),
             " overlap tensor ", previous);
    LN_CHECK(e.begin == covered, source, ": data bytes [", covered, ", ", e.begin,
             ") belong to no tensor (a hole before tensor '", e.name, "')");
    covered = e.end;
    previous = cat("'", e.name, "' data_offsets ", offsets_text(e));
  }
  LN_CHECK(covered == data_bytes, source, ": data bytes [", covered, ", ", data_bytes,
           ") belong to no tensor (a hole at the end of the ", data_bytes, "-byte data section)");
  return h;
}

std::uint64_t read_u64_le(const unsigned char* p) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];
  return n;
}

// Parses a file of size bytes; read_at(offset, dst, n) copies bytes [offset, offset + n)
// of it, and is only called with ranges inside [0, size).
template <class ReadAt>
SafetensorsFile parse(std::uint64_t size, const ReadAt& read_at, const std::string& source) {
  LN_CHECK(size >= 8, source, ": ", size,
           " bytes is too short for a safetensors file (the header length alone takes 8)");
  unsigned char prefix[8];
  read_at(0, prefix, 8);
  std::uint64_t header_bytes = read_u64_le(prefix);
  LN_CHECK(header_bytes <= kMaxHeaderBytes, source, ": header length ", header_bytes,
           " is over the ", kMaxHeaderBytes, "-byte limit (not a safetensors file?)");
  LN_CHECK(header_bytes <= size - 8, source, ": header length ", header_bytes, " is past the ",
           size - 8, " bytes that follow the length (file truncated?)");
  std::string text(header_bytes, '\0');
  read_at(8, text.data(), header_bytes);
  std::uint64_t data_start = 8 + header_bytes;
  Header h = parse_header(text, size - data_start, source);

  SafetensorsFile file;
  file.source = source;
  file.metadata = std::move(h.metadata);
  for (const Entry& e : h.entries) {
    Tensor t = empty(e.shape, {e.dtype, Device::cpu()});
    if (e.end > e.begin) read_at(data_start + e.begin, t.raw_data(), e.end - e.begin);
    file.tensors.emplace_back(e.name, std::move(t));
  }
  return file;
}

// An open file descriptor, closed on scope exit.

// A string as a JSON string literal; what names it in the error when it is not UTF-8.
std::string json_string(const std::string& s, const std::string& what) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    throw Error(cat(what, " is not valid UTF-8"));
  }
}

std::uint64_t byte_size(const Tensor& t) {
  return static_cast<std::uint64_t>(t.numel()) * element_size(t.dtype());
}

// The length prefix, the header JSON and its padding, after checking the arguments; where
// names the destination in errors.
std::string encode_header(const NamedTensors& tensors,
                          const std::map<std::string, std::string>& metadata,
                          const std::string& where) {
  std::string json_text = "{";
  if (!metadata.empty()) {
    json_text += json_string(kMetadataKey, "") + ":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) json_text += ',';
      first = false;
      json_text += json_string(key, cat(where, ": metadata key '", key, "'"));
      json_text += ':';
      json_text += json_string(value, cat(where, ": metadata value for key '", key, "'"));
    }
    json_text += '}';
  }
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    LN_CHECK(name != kMetadataKey, where, ": a tensor may not be called '__metadata__'");
    LN_CHECK(seen.insert(name).second, where, ": two tensors are called '", name, "'");
    LN_CHECK(t.defined(), where, ": tensor '", name, "' is undefined");
    if (json_text.size() > 1) json_text += ',';
    json_text += json_string(name, cat(where, ": tensor name '", name, "'"));
    json_text += cat(R"(:{"dtype":")", format_name(t.dtype()), R"(","shape":[)");
    for (std::size_t i = 0; i < t.shape().size(); ++i) {
      json_text += cat(i == 0 ? "" : ",", t.shape()[i]);
    }
    std::uint64_t end = offset + byte_size(t);
    json_text += cat(R"(],"data_offsets":[)", offset, ',', end, "]}");
    offset = end;
  }
  json_text += '}';
  // Spaces are JSON whitespace; they align the data section to 8 bytes.
  json_text.append((8 - json_text.size() % 8) % 8, ' ');

  std::string out(8, '\0');
  std::uint64_t n = json_text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFFU);
  return out + json_text;
}

// A contiguous host copy of t (t itself when it is one). CUDA cannot yet copy a strided
// view (clone needs a contiguous source), so a strided device view comes to the host as the
// span of storage it touches and is made contiguous there.
Tensor host_contiguous(const Tensor& t) {
  if (t.numel() == 0) return empty(t.shape(), {t.dtype(), Device::cpu()});
  if (t.device().is_cpu() || t.is_contiguous()) return contiguous(to(t, Device::cpu()));
  std::int64_t first = t.offset();
  std::int64_t last = t.offset();
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    std::int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach < 0 ? first : last) += reach;
  }
  Tensor span(t.storage(), {last - first + 1}, {1}, first, t.dtype());
  Tensor host = to(span, Device::cpu());
  return contiguous(Tensor(host.storage(), t.shape(), t.strides(), t.offset() - first, t.dtype()));
}

// Calls sink(bytes, n) with each tensor's data in order, copying one tensor at a time to
// the host.
template <class Sink>
void write_data(const NamedTensors& tensors, const Sink& sink) {
  for (const auto& [name, t] : tensors) {
    Tensor host = host_contiguous(t);
    if (byte_size(host) > 0) sink(host.raw_data(), byte_size(host));
  }
}

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [key, t] : tensors) {
    if (key == name) return t;
  }
  std::string present;
  constexpr std::size_t kShown = 20;
  for (std::size_t i = 0; i < tensors.size() && i < kShown; ++i) {
    present += cat(i == 0 ? "" : ", ", "'", tensors[i].first, "'");
  }
  if (tensors.size() > kShown) present += cat(" and ", tensors.size() - kShown, " more");
  if (tensors.empty()) present = "none";
  throw Error(cat(source, ": no tensor '", name, "'; tensors present: ", present));
}

SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& source) {
  auto read_at = [&](std::uint64_t offset, void* dst, std::uint64_t n) {
    // parse stays inside the file; checked again here so no input can read past it.
    LN_CHECK(offset <= bytes.size() && n <= bytes.size() - offset, source,
             ": internal error: read of [", offset, ", +", n, ") past ", bytes.size(), " bytes");
    std::memcpy(dst, bytes.data() + offset, n);
  };
  return parse(bytes.size(), read_at, source);
}

SafetensorsFile load_safetensors(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  LN_CHECK(fd.get() >= 0, "cannot open ", path, ": ", errno_text(errno));
  struct stat info {};
  LN_CHECK(::fstat(fd.get(), &info) == 0, "cannot stat ", path, ": ", errno_text(errno));
  LN_CHECK(S_ISREG(info.st_mode), path, " is not a regular file");
  auto read_at = [&](std::uint64_t offset, void* dst, std::uint64_t n) {
    read_exact(fd.get(), offset, dst, n, path);
  };
  return parse(static_cast<std::uint64_t>(info.st_size), read_at, path);
}

std::string serialize_safetensors(const NamedTensors& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::string out = encode_header(tensors, metadata, "serialize_safetensors");
  write_data(tensors,
             [&](const void* p, std::uint64_t n) { out.append(static_cast<const char*>(p), n); });
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::string header = encode_header(tensors, metadata, path);
  write_file_atomically(path, [&](const ByteSink& sink) {
    sink(header.data(), header.size());
    write_data(tensors, sink);
  });
}

}  // namespace longnet
