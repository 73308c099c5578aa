#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>

#include "tensor/error.h"
#include "train/file_io.h"

namespace longnet {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "longnet-checkpoint";
constexpr int kVersion = 1;
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kMetaFile = "meta.json";

std::string step_dir_name(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "ckpt-%08lld", static_cast<long long>(step));
  return name;
}

// The step of a complete checkpoint directory's name, or -1.
std::int64_t parse_step_dir_name(const std::string& name) {
  if (name.size() <= 5 || name.rfind("ckpt-", 0) != 0) return -1;
  std::int64_t step = 0;
  for (char c : name.substr(5)) {
    if (c < '0' || c > '9' || step > (INT64_MAX - 9) / 10) return -1;
    step = step * 10 + (c - '0');
  }
  return step;
}

class Crc32 {
 public:
  Crc32() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
      table_[i] = c;
    }
  }
  std::uint32_t update(std::uint32_t crc, const char* p, std::size_t n) const {
    crc = ~crc;
    for (std::size_t i = 0; i < n; ++i) {
      crc = table_[(crc ^ static_cast<unsigned char>(p[i])) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
  }

 private:
  std::array<std::uint32_t, 256> table_{};
};

const Crc32& crc_table() {
  static const Crc32 table;
  return table;
}

struct FileSum {
  std::uint64_t bytes = 0;
  std::uint32_t crc = 0;
};

FileSum sum_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LN_CHECK(in, "cannot read ", path, ": ", errno_text(errno));
  FileSum sum;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    auto got = static_cast<std::size_t>(in.gcount());
    sum.crc = crc_table().update(sum.crc, buffer.data(), got);
    sum.bytes += got;
  }
  LN_CHECK(in.eof(), "reading ", path, ": ", errno_text(errno));
  return sum;
}

std::string hex32(std::uint32_t v) {
  char text[16];
  std::snprintf(text, sizeof text, "%08x", v);
  return text;
}

template <class T>
T meta_field(const json& meta, const char* key, const std::string& path) {
  LN_CHECK(meta.contains(key), path, ": missing \"", key, "\"");
  try {
    return meta[key].get<T>();
  } catch (const json::exception&) {
    throw Error(cat(path, ": \"", key, "\" has the wrong type: ", meta[key].dump()));
  }
}

}  // namespace

std::uint32_t crc32(std::string_view bytes) {
  return crc_table().update(0, bytes.data(), bytes.size());
}

std::string save_checkpoint(const std::string& out_dir, const Checkpoint& checkpoint,
                            std::int64_t keep) {
  LN_CHECK(keep >= 1, "keep is ", keep, "; keep at least one checkpoint");
  std::string final_dir = (fs::path(out_dir) / step_dir_name(checkpoint.step)).string();
  std::string tmp_dir = final_dir + ".tmp";
  fs::remove_all(tmp_dir);
  fs::create_directory(tmp_dir);

  json files = json::object();
  auto write_tensors = [&](const char* file, const NamedTensors& tensors) {
    std::string path = (fs::path(tmp_dir) / file).string();
    save_safetensors(path, tensors, {{"format", "pt"}});
    FileSum sum = sum_file(path);
    files[file] = {{"bytes", sum.bytes}, {"crc32", hex32(sum.crc)}};
  };
  write_tensors(kModelFile, checkpoint.model);
  write_tensors(kOptimizerFile, checkpoint.optimizer);
  json meta = {{"format", kFormat},
               {"version", kVersion},
               {"step", checkpoint.step},
               {"data_position", checkpoint.data_position},
               {"rng", {{"seed", checkpoint.rng_seed}, {"offset", checkpoint.rng_offset}}},
               {"bad_steps", checkpoint.bad_steps},
               {"config", checkpoint.config},
               {"files", files}};
  write_file_atomically((fs::path(tmp_dir) / kMetaFile).string(), meta.dump(2) + "\n");
  sync_directory(tmp_dir);

  // A checkpoint of this step already there (a rerun after a crash) is replaced.
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  sync_directory(out_dir);

  std::vector<std::string> all = list_checkpoints(out_dir);
  for (std::size_t i = static_cast<std::size_t>(keep); i < all.size(); ++i) {
    fs::remove_all(all[i]);
  }
  return final_dir;
}

Checkpoint load_checkpoint(const std::string& dir) {
  std::string meta_path = (fs::path(dir) / kMetaFile).string();
  std::ifstream in(meta_path, std::ios::binary);
  LN_CHECK(in, "cannot read ", meta_path, ": ", errno_text(errno));
  std::stringstream text;
  text << in.rdbuf();
  json meta;
  try {
    meta = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw Error(cat(meta_path, ": not valid JSON (", e.what(), ")"));
  }
  LN_CHECK(meta.is_object() && meta.value("format", "") == kFormat, meta_path,
           ": not a longnet checkpoint (\"format\" must be \"", kFormat, "\")");
  LN_CHECK(meta.value("version", 0) == kVersion, meta_path, ": checkpoint version ",
           meta.value("version", 0), "; this build reads version ", kVersion);

  Checkpoint c;
  c.dir = dir;
  c.step = meta_field<std::int64_t>(meta, "step", meta_path);
  c.data_position = meta_field<std::uint64_t>(meta, "data_position", meta_path);
  json rng = meta_field<json>(meta, "rng", meta_path);
  c.rng_seed = meta_field<std::uint64_t>(rng, "seed", meta_path);
  c.rng_offset = meta_field<std::uint64_t>(rng, "offset", meta_path);
  c.bad_steps = meta_field<std::int64_t>(meta, "bad_steps", meta_path);
  c.config = meta_field<json>(meta, "config", meta_path);
  json files = meta_field<json>(meta, "files", meta_path);

  auto read_tensors = [&](const char* file) {
    std::string path = (fs::path(dir) / file).string();
    LN_CHECK(files.is_object() && files.contains(file), meta_path, ": no entry for ", file);
    auto bytes = meta_field<std::uint64_t>(files[file], "bytes", meta_path);
    auto crc = meta_field<std::string>(files[file], "crc32", meta_path);
    FileSum sum = sum_file(path);
    LN_CHECK(sum.bytes == bytes, path, " holds ", sum.bytes, " bytes; the checkpoint recorded ",
             bytes, " (truncated or replaced)");
    LN_CHECK(hex32(sum.crc) == crc, path, " has CRC-32 ", hex32(sum.crc),
             "; the checkpoint recorded ", crc, " (the file is corrupt)");
    return load_safetensors(path).tensors;
  };
  c.model = read_tensors(kModelFile);
  c.optimizer = read_tensors(kOptimizerFile);
  return c;
}

std::vector<std::string> list_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    std::int64_t step = parse_step_dir_name(entry.path().filename().string());
    if (step >= 0 && entry.is_directory()) found.emplace_back(step, entry.path().string());
  }
  std::sort(found.begin(), found.end(), std::greater<>());
  std::vector<std::string> dirs;
  for (auto& [step, dir] : found) dirs.push_back(std::move(dir));
  return dirs;
}

std::optional<Checkpoint> load_latest_checkpoint(const std::string& out_dir,
                                                 std::ostream& warnings) {
  std::vector<std::string> dirs = list_checkpoints(out_dir);
  if (dirs.empty()) return std::nullopt;
  std::string faults;
  for (const auto& dir : dirs) {
    try {
      return load_checkpoint(dir);
    } catch (const Error& e) {
      warnings << "checkpoint " << dir << " is unusable: " << e.what()
               << "; trying the one before it\n";
      faults += cat("\n  ", dir, ": ", e.what());
    }
  }
  throw Error(cat(out_dir, " holds checkpoints but none is usable:", faults,
                  "\nmove them away (or use another out_dir) to start afresh"));
}

void remove_partial_checkpoints(const std::string& out_dir) {
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.ends_with(".tmp") &&
        parse_step_dir_name(name.substr(0, name.size() - 4)) >= 0) {
      fs::remove_all(entry.path());
    }
  }
}

}  // namespace longnet
