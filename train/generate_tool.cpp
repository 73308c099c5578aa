// longnet-generate: continues a prompt with a model longnet-train wrote.
//
//   longnet-generate --checkpoint DIR --prompt TEXT --tokens N
//                    [--temperature T (1.0)] [--top-k K (0: all)] [--seed S (0)]
//
// DIR is a train.out_dir (its newest good checkpoint is used) or one of its ckpt-*
// directories. For byte-level models TEXT is text and the output is text; for token models
// (data.format "tokens_u16") TEXT and the output are token ids separated by spaces. The
// same arguments give the same output.
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

#include "train/generate.h"

namespace {

constexpr const char* kUsage =
    "usage: longnet-generate --checkpoint DIR --prompt TEXT --tokens N\n"
    "                        [--temperature T] [--top-k K] [--seed S]\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
T parse_number(const std::string& flag, const std::string& text) {
  std::istringstream in(text);
  T value{};
  if (!(in >> value) || !in.eof()) {
    throw UsageError(flag + " needs a number, got \"" + text + "\"");
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  std::string checkpoint;
  std::string prompt;
  bool have_prompt = false;
  std::int64_t tokens = -1;
  longnet::SamplingConfig sampling;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string flag = argv[i];
      if (flag == "-h" || flag == "--help") {
        std::cout << kUsage;
        return 0;
      }
      if (i + 1 >= argc) throw UsageError(flag + " needs a value (or is not an option)");
      std::string value = argv[++i];
      if (flag == "--checkpoint") {
        checkpoint = value;
      } else if (flag == "--prompt") {
        prompt = value;
        have_prompt = true;
      } else if (flag == "--tokens") {
        tokens = parse_number<std::int64_t>(flag, value);
      } else if (flag == "--temperature") {
        sampling.temperature = parse_number<double>(flag, value);
      } else if (flag == "--top-k") {
        sampling.top_k = parse_number<std::int64_t>(flag, value);
      } else if (flag == "--seed") {
        sampling.seed = parse_number<std::uint64_t>(flag, value);
      } else {
        throw UsageError("unknown option " + flag);
      }
    }
    if (checkpoint.empty() || !have_prompt || tokens < 0) {
      throw UsageError("--checkpoint, --prompt and --tokens (>= 0) are required");
    }
  } catch (const UsageError& e) {
    std::cerr << "longnet-generate: " << e.what() << "\n" << kUsage;
    return 2;
  }

  try {
    longnet::TrainedModel trained = longnet::load_trained_model(checkpoint, std::cerr);
    bool bytes = trained.config.data.format == longnet::DataFormat::bytes;
    std::vector<std::int64_t> ids;
    if (bytes) {
      for (unsigned char c : prompt) ids.push_back(c);
    } else {
      std::istringstream in(prompt);
      for (std::string word; in >> word;)
        ids.push_back(parse_number<std::int64_t>("--prompt", word));
    }
    std::vector<std::int64_t> out =
        longnet::generate(*trained.model, ids, tokens, trained.config.data.seq_len, sampling);
    if (bytes) {
      std::string text;
      for (std::int64_t t : out) text.push_back(static_cast<char>(t));
      std::cout << text << "\n";
    } else {
      for (std::size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
      std::cout << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "longnet-generate: " << e.what() << "\n";
    return 1;
  }
}
