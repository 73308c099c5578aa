// Training data: a corpus of token ids held in memory, and the deterministic batches drawn
// from it (DESIGN.md section 8).
//
// Formats:
//   "bytes"       any file; each byte is one token (vocabulary 256).
//   "tokens_u16"  llm.c's token shards: a header of 256 little-endian int32 (magic
//                 20240520, version 1, token count n, the rest unused) followed by n
//                 little-endian uint16 token ids; the file size must be exactly
//                 1024 + 2n bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace longnet {

enum class DataFormat { bytes, tokens_u16 };
// "bytes" | "tokens_u16"; anything else is an error listing the valid names.
DataFormat parse_data_format(const std::string& name);
const char* data_format_name(DataFormat format);

struct TokenCorpus {
  std::string source;  // the file read (or a description); names the corpus in errors
  std::vector<std::uint16_t> tokens;

  std::int64_t size() const { return static_cast<std::int64_t>(tokens.size()); }
  // The largest token id plus one (0 when empty).
  std::int64_t vocab_used() const;
};

// Reads a whole file. A missing or unreadable file is an error naming the path and the
// system's reason; a malformed shard (short header, wrong magic or version, a size that
// disagrees with the header's count) an error naming the path and the numbers.
TokenCorpus load_corpus(const std::string& path, DataFormat format);

// The fixed train/validation rule for a single file: the last ceil(fraction * size) tokens
// are validation, the rest training. fraction in (0, 1); each part must be non-empty.
struct CorpusSplit {
  TokenCorpus train;
  TokenCorpus val;
};
CorpusSplit split_corpus(TokenCorpus corpus, double val_fraction);

// Training batches. Batch number `index` (0, 1, 2, ...) of a run is a function of the seed
// and index only: its rows are windows of seq_len + 1 consecutive tokens starting at
// positions drawn uniformly from [0, size - seq_len - 1] with Philox keyed by seed. So the
// data position of a run is just the number of batches drawn, and a resumed run continues
// the same stream. Returns i64 (batch, seq_len + 1) on the cpu: inputs are [:, :-1],
// targets [:, 1:]. The corpus must hold at least seq_len + 1 tokens.
Tensor sample_batch(const TokenCorpus& corpus, std::int64_t seq_len, std::int64_t batch,
                    std::uint64_t seed, std::uint64_t index);

// Evaluation batches: the same for every evaluation of a run. Batch i of count covers
// windows at evenly spaced starts over the whole corpus (row r of batch i starts at
// floor((i * batch + r) * (size - seq_len - 1) / max(1, count * batch - 1))).
// Same shape and dtype as sample_batch.
Tensor eval_batch(const TokenCorpus& corpus, std::int64_t seq_len, std::int64_t batch,
                  std::int64_t index, std::int64_t count);

}  // namespace longnet
