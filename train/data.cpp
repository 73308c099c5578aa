#include "train/data.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include "tensor/random.h"
#include "train/file_io.h"

namespace longnet {

namespace {

// llm.c's token shard header: 256 little-endian int32.
constexpr std::int64_t kHeaderInts = 256;
constexpr std::int64_t kHeaderBytes = 4 * kHeaderInts;
constexpr std::int32_t kShardMagic = 20240520;
constexpr std::int32_t kShardVersion = 1;  // uint16 tokens (llm.c's version 2 is uint32)

// The fourth Philox counter word of every batch draw. Generator draws leave it 0, so batch
// windows never reuse the random words that the same seed gives to initialisation.
constexpr std::uint32_t kBatchStream = 0x64617461;  // "data"

// 128-bit integers (a GCC and Clang extension) for products of two 64-bit values.
__extension__ typedef unsigned __int128 u128;
__extension__ typedef __int128 i128;

// Reads count elements of `width` bytes from offset, decoding each with decode(bytes), in
// chunks so that the whole file is never held twice.
template <class Decode>
void read_tokens(int fd, std::uint64_t offset, std::vector<std::uint16_t>& tokens,
                 std::size_t width, const std::string& path, Decode decode) {
  constexpr std::size_t kChunkTokens = std::size_t{1} << 20;
  std::vector<unsigned char> buffer(std::min(tokens.size(), kChunkTokens) * width);
  for (std::size_t done = 0; done < tokens.size();) {
    std::size_t n = std::min(tokens.size() - done, kChunkTokens);
    read_exact(fd, offset + done * width, buffer.data(), n * width, path);
    for (std::size_t i = 0; i < n; ++i) tokens[done + i] = decode(buffer.data() + i * width);
    done += n;
  }
}

std::int32_t le_i32(const unsigned char* p) {
  return static_cast<std::int32_t>(std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 |
                                   std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24);
}

std::uint16_t le_u16(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | p[1] << 8);
}

// Checks the arguments shared by sample_batch and eval_batch; returns the number of
// possible window starts, size - seq_len.
std::int64_t window_starts(const TokenCorpus& corpus, std::int64_t seq_len, std::int64_t batch,
                           const char* op) {
  LN_CHECK(seq_len > 0, op, ": seq_len must be positive, got ", seq_len);
  LN_CHECK(batch > 0, op, ": batch must be positive, got ", batch);
  LN_CHECK(
      seq_len < corpus.size(), op, ": corpus ", corpus.source, " holds ", corpus.size(),
      " tokens, fewer than the seq_len + 1 = ",
      seq_len == std::numeric_limits<std::int64_t>::max() ? std::string("2^63") : cat(seq_len + 1),
      " that one window needs");
  std::int64_t elements = 0;
  LN_CHECK(!__builtin_mul_overflow(batch, seq_len + 1, &elements), op, ": batch ", batch,
           " x (seq_len + 1) ", seq_len + 1, " tokens overflow 64 bits");
  return corpus.size() - seq_len;
}

// An i64 (batch, seq_len + 1) cpu tensor whose row r is the window at start_of(r).
template <class StartOf>
Tensor windows(const TokenCorpus& corpus, std::int64_t seq_len, std::int64_t batch,
               StartOf start_of) {
  std::int64_t width = seq_len + 1;
  Tensor out = empty({batch, width}, {DType::i64, Device::cpu()});
  std::int64_t* dst = out.data<std::int64_t>();
  for (std::int64_t r = 0; r < batch; ++r) {
    std::int64_t start = start_of(r);
    const std::uint16_t* src = corpus.tokens.data() + start;
    std::copy(src, src + width, dst + r * width);
  }
  return out;
}

}  // namespace

DataFormat parse_data_format(const std::string& name) {
  for (DataFormat f : {DataFormat::bytes, DataFormat::tokens_u16}) {
    if (name == data_format_name(f)) return f;
  }
  throw Error(cat("unknown data format '", name, "'; valid formats: bytes, tokens_u16"));
}

const char* data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::bytes:
      return "bytes";
    case DataFormat::tokens_u16:
      break;
  }
  return "tokens_u16";
}

std::int64_t TokenCorpus::vocab_used() const {
  if (tokens.empty()) return 0;
  return std::int64_t{*std::max_element(tokens.begin(), tokens.end())} + 1;
}

TokenCorpus load_corpus(const std::string& path, DataFormat format) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  LN_CHECK(fd.get() >= 0, "cannot open ", path, ": ", errno_text(errno));
  struct stat info {};
  LN_CHECK(::fstat(fd.get(), &info) == 0, "cannot stat ", path, ": ", errno_text(errno));
  LN_CHECK(!S_ISDIR(info.st_mode), path, " is a directory, not a corpus file");
  LN_CHECK(S_ISREG(info.st_mode), path, " is not a regular file");
  auto size = static_cast<std::uint64_t>(info.st_size);
  LN_CHECK(size > 0, path, " is empty: it holds no tokens");

  TokenCorpus corpus;
  corpus.source = path;
  if (format == DataFormat::bytes) {
    corpus.tokens.resize(size);
    read_tokens(fd.get(), 0, corpus.tokens, 1, path,
                [](const unsigned char* p) { return std::uint16_t{p[0]}; });
    return corpus;
  }

  std::string shard = cat(path, " (tokens_u16 shard)");
  LN_CHECK(size >= kHeaderBytes, shard, ": ", size, " bytes, shorter than the ", kHeaderBytes,
           "-byte header");
  std::array<unsigned char, kHeaderBytes> header{};
  read_exact(fd.get(), 0, header.data(), kHeaderBytes, path);
  std::int32_t magic = le_i32(&header[0]);
  std::int32_t version = le_i32(&header[4]);
  std::int32_t count = le_i32(&header[8]);
  LN_CHECK(magic == kShardMagic, shard, ": header magic is ", magic, ", not ", kShardMagic,
           " (for a file of raw bytes use the format \"bytes\")");
  LN_CHECK(version == kShardVersion, shard, ": header version is ", version, ", not ",
           kShardVersion, " (uint16 tokens)");
  LN_CHECK(count >= 0, shard, ": header token count is negative: ", count);
  std::uint64_t expected = kHeaderBytes + 2 * static_cast<std::uint64_t>(count);
  LN_CHECK(size == expected, shard, ": header says ", count, " tokens, which need ", kHeaderBytes,
           " + 2 x ", count, " = ", expected, " bytes, but the file has ", size);
  LN_CHECK(count > 0, shard, ": header token count is 0: it holds no tokens");
  corpus.tokens.resize(static_cast<std::size_t>(count));
  read_tokens(fd.get(), kHeaderBytes, corpus.tokens, 2, path, le_u16);
  return corpus;
}

CorpusSplit split_corpus(TokenCorpus corpus, double val_fraction) {
  LN_CHECK(val_fraction > 0 && val_fraction < 1, "split_corpus: validation fraction must be in ",
           "(0, 1), got ", val_fraction, " for ", corpus.source);
  std::int64_t size = corpus.size();
  // ceil(fraction * size), where a product within rounding error of an integer counts as
  // that integer: 0.1 of 30 tokens is 3, though 0.1 * 30 is 3.0000000000000004 in doubles.
  // The product is off by at most half an ulp (1.1e-16 relative); 1e-12 leaves a margin.
  double product = val_fraction * static_cast<double>(size);
  double nearest = std::round(product);
  double val_tokens = std::abs(product - nearest) <= 1e-12 * product ? nearest : std::ceil(product);
  auto val_size = static_cast<std::int64_t>(val_tokens);
  std::int64_t train_size = size - val_size;
  LN_CHECK(val_size > 0 && train_size > 0, "split_corpus: ", corpus.source, " holds ", size,
           " tokens; a validation fraction of ", val_fraction, " leaves ", train_size,
           " for training and ", val_size, " for validation, and neither may be empty");

  CorpusSplit split;
  split.train.source = cat(corpus.source, " (train part)");
  split.val.source = cat(corpus.source, " (validation part)");
  split.val.tokens.assign(corpus.tokens.begin() + train_size, corpus.tokens.end());
  corpus.tokens.resize(static_cast<std::size_t>(train_size));
  split.train.tokens = std::move(corpus.tokens);
  return split;
}

Tensor sample_batch(const TokenCorpus& corpus, std::int64_t seq_len, std::int64_t batch,
                    std::uint64_t seed, std::uint64_t index) {
  std::int64_t starts = window_starts(corpus, seq_len, batch, "sample_batch");
  LN_CHECK(batch <= std::numeric_limits<std::uint32_t>::max(), "sample_batch: batch ", batch,
           " is more than 2^32 - 1 rows");
  return windows(corpus, seq_len, batch, [&](std::int64_t r) {
    // One Philox block per (index, row); 64 of its bits map to [0, starts) by the high
    // half of a 64 x 64-bit product (Lemire), whose bias is at most starts / 2^64.
    auto w = philox4x32({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                         static_cast<std::uint32_t>(r), kBatchStream},
                        seed);
    std::uint64_t bits = std::uint64_t{w[0]} | std::uint64_t{w[1]} << 32;
    auto wide = static_cast<u128>(bits) * static_cast<std::uint64_t>(starts);
    return static_cast<std::int64_t>(wide >> 64);
  });
}

Tensor eval_batch(const TokenCorpus& corpus, std::int64_t seq_len, std::int64_t batch,
                  std::int64_t index, std::int64_t count) {
  std::int64_t last_start = window_starts(corpus, seq_len, batch, "eval_batch") - 1;
  LN_CHECK(count > 0, "eval_batch: count must be positive, got ", count);
  LN_CHECK(index >= 0 && index < count, "eval_batch: index ", index, " is outside [0, ", count,
           ")");
  std::int64_t rows = 0;
  LN_CHECK(!__builtin_mul_overflow(count, batch, &rows), "eval_batch: count ", count, " x batch ",
           batch, " rows overflow 64 bits");
  std::int64_t denominator = std::max<std::int64_t>(1, rows - 1);
  return windows(corpus, seq_len, batch, [&](std::int64_t r) {
    // In 128 bits: the product reaches (count * batch) x size.
    i128 position = static_cast<i128>(index) * batch + r;
    return static_cast<std::int64_t>(position * last_start / denominator);
  });
}

}  // namespace longnet
