// Safetensors files (https://github.com/huggingface/safetensors): named tensors plus string
// metadata. Layout: an 8-byte little-endian length N; N bytes of UTF-8 JSON mapping each
// name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets into the data section),
// with an optional "__metadata__": {string: string}; then the data section, the tensors'
// raw little-endian row-major bytes. Supported dtypes: F32, F64, BF16, I32, I64.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace longnet {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct SafetensorsFile {
  std::string source;  // the path read, or "<memory>"; names the file in errors
  // In the order of their data in the file (ties, possible only between zero-size
  // tensors, by name). CPU, contiguous, in the file's dtype, owning their storage.
  NamedTensors tensors;
  std::map<std::string, std::string> metadata;

  // The tensor called name; an error names it and lists the names present.
  const Tensor& at(const std::string& name) const;
};

// Reads a file. Any input that is not a valid file is a longnet::Error naming the file,
// the tensor and the numbers: too short, a header length past the end (or over 100 MB),
// a header that is not a JSON object, an entry without a well-typed dtype, shape or
// data_offsets, an unsupported dtype, a byte range that is reversed, leaves the data
// section, does not hold numel * element size bytes, or overlaps another, data bytes that
// belong to no tensor, and metadata values that are not strings. I/O failures name the
// path and the system's reason.
SafetensorsFile load_safetensors(const std::string& path);
// The same from the bytes of a file; source names them in errors.
SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& source = "<memory>");

// Writes tensors (any view, any device: host contiguous copies are made one at a time) in
// the order given, contiguously, after a header padded with spaces to a multiple of 8
// bytes. Names must be distinct, valid UTF-8 and not "__metadata__"; tensors must be
// defined. The file is written to path + ".tmp", flushed to disk and renamed over path, so
// path holds either its old contents or the whole new file. Nothing is written when the
// arguments are invalid.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// The bytes save_safetensors writes.
std::string serialize_safetensors(const NamedTensors& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace longnet
