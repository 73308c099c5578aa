// Training checkpoints (DESIGN.md section 8). A checkpoint is a directory
// out_dir/ckpt-<step, 8 digits> holding
//   model.safetensors      the model's parameters by dotted name (PyTorch's order)
//   optimizer.safetensors  the optimizer's state (AdamW::state())
//   meta.json              {"format": "longnet-checkpoint", "version": 1, "step",
//                           "data_position", "rng": {"seed", "offset"}, "bad_steps",
//                           "config", "files": {name: {"bytes", "crc32"}}}
// It is written as ckpt-<step>.tmp, each file flushed to disk, then renamed: a crash at
// any moment leaves every complete checkpoint intact and at most one .tmp directory, which
// the next run removes.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "train/safetensors.h"

namespace longnet {

struct Checkpoint {
  std::string dir;                  // the checkpoint's directory
  std::int64_t step = 0;            // optimizer steps taken
  std::uint64_t data_position = 0;  // training batches drawn
  std::uint64_t rng_seed = 0;       // the dropout generator
  std::uint64_t rng_offset = 0;
  std::int64_t bad_steps = 0;  // consecutive skipped steps at the time
  nlohmann::json config;       // to_json(TrainConfig)
  NamedTensors model;
  NamedTensors optimizer;
};

// The CRC-32 (IEEE 802.3, as zlib's crc32) of bytes.
std::uint32_t crc32(std::string_view bytes);

// Writes checkpoint.{model, optimizer, ...} as out_dir/ckpt-<step> (out_dir must exist;
// an existing checkpoint of the same step is replaced), then deletes the oldest complete
// checkpoints beyond keep. Returns the directory written.
std::string save_checkpoint(const std::string& out_dir, const Checkpoint& checkpoint,
                            std::int64_t keep);

// Reads and verifies one checkpoint directory: meta.json well-formed, every file present
// with the recorded size and CRC-32, every safetensors file valid. Any fault is an Error
// naming the file and what is wrong.
Checkpoint load_checkpoint(const std::string& dir);

// The complete checkpoint directories in out_dir (not .tmp), newest first; none when
// out_dir does not exist.
std::vector<std::string> list_checkpoints(const std::string& out_dir);

// The newest checkpoint of out_dir that verifies. Each one that does not is reported on
// warnings (its directory and the fault) and the next older one tried. nullopt when out_dir
// holds no checkpoint; an Error listing the faults when it holds only broken ones.
std::optional<Checkpoint> load_latest_checkpoint(const std::string& out_dir,
                                                 std::ostream& warnings);

// Removes the .tmp directories an interrupted save left in out_dir.
void remove_partial_checkpoints(const std::string& out_dir);

}  // namespace longnet
