// The programs: longnet-attention end to end through safetensors files, and the JSON
// attention configuration it reads.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "attention/dilated.h"
#include "autograd/ops.h"
#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tests/temp_dir.h"
#include "train/attention_config.h"
#include "train/safetensors.h"

namespace longnet {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

std::string tool() {
  const char* path = std::getenv("LONGNET_ATTENTION_TOOL");
  REQUIRE_MESSAGE(path != nullptr, "LONGNET_ATTENTION_TOOL is not set (run through meson test)");
  return path;
}

// Runs the tool; returns its exit code and puts its stderr in message.
int run_tool(const TempDir& dir, const std::string& config_json, std::string& message) {
  std::ofstream(dir.file("attn.json")) << config_json;
  std::string err = dir.file("stderr.txt");
  std::string command = tool() + " --config " + dir.file("attn.json") + " --in " +
                        dir.file("in.safetensors") + " --out " + dir.file("out.safetensors") +
                        " 2> " + err;
  int status = std::system(command.c_str());
  std::ifstream in(err);
  message.assign(std::istreambuf_iterator<char>(in), {});
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string error_of(const std::string& json_text) {
  try {
    parse_attention_config(nlohmann::json::parse(json_text), "attn.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_SUITE("tools") {
  TEST_CASE("attention configs from JSON name the key that is wrong") {
    CHECK(error_of(R"({"kind": "dilated", "segment_lengths": [4], "dilation_rate": [1]})")
              .find("unknown key \"dilation_rate\"") != std::string::npos);
    CHECK(error_of(R"({"kind": "dilated", "segment_lengths": [4]})")
              .find("missing key \"dilation_rates\"") != std::string::npos);
    CHECK(error_of(R"({"kind": "dilated", "segment_lengths": [4, 8], "dilation_rates": [1]})")
              .find("dilation_rates has 1") != std::string::npos);
    CHECK(error_of(R"({"kind": "dilated", "segment_lengths": "4", "dilation_rates": [1]})")
              .find("non-empty list of integers") != std::string::npos);
    CHECK(error_of(R"({"kind": "flash"})").find("valid: dense, dilated, block_sparse, auto") !=
          std::string::npos);
    CHECK(error_of(R"({"kind": "block_sparse", "density": 1.5})").find("density is 1.5") !=
          std::string::npos);
    CHECK(error_of(R"({"kind": "dense", "causal": 1})").find("\"causal\" must be true or false") !=
          std::string::npos);
    AttentionConfig c = parse_attention_config(
        nlohmann::json::parse(
            R"({"kind": "dilated", "segment_lengths": [4, 8], "dilation_rates": [1, 2], "mode": "grouped", "causal": true})"),
        "attn.json");
    const auto& d = std::get<DilatedAttentionConfig>(c);
    CHECK(d.mode == DilatedMode::grouped);
    CHECK(d.causal);
    CHECK(d.segment_lengths == std::vector<std::int64_t>{4, 8});
  }

  TEST_CASE("longnet-attention round-trips values and gradients through safetensors") {
    TempDir dir;
    Generator gen(8);
    Tensor q = randn({2, 11, 3, 4}, gen);
    Tensor k = randn({2, 11, 3, 4}, gen);
    Tensor v = randn({2, 11, 3, 4}, gen);
    Tensor g = randn({2, 11, 3, 4}, gen);
    save_safetensors(dir.file("in.safetensors"), {{"q", q}, {"k", k}, {"v", v}, {"grad_out", g}});
    std::string message;
    REQUIRE(run_tool(dir,
                     R"({"kind": "dilated", "segment_lengths": [4, 8], "dilation_rates": [1, 2],
                               "mode": "paper", "causal": true, "device": "cpu", "dtype": "f32"})",
                     message) == 0);
    SafetensorsFile out = load_safetensors(dir.file("out.safetensors"));
    Variable vq(q, true), vk(k, true), vv(v, true);
    DilatedAttentionConfig c{{4, 8}, {1, 2}, DilatedMode::paper, true};
    Variable want = dilated_attention(vq, vk, vv, c);
    want.backward(g);
    CHECK(out.at("out").to_vector<float>() == want.data().to_vector<float>());
    CHECK(out.at("grad_q").to_vector<float>() == vq.grad().to_vector<float>());
    CHECK(out.at("grad_k").to_vector<float>() == vk.grad().to_vector<float>());
    CHECK(out.at("grad_v").to_vector<float>() == vv.grad().to_vector<float>());

    // bf16 runs the kernel on rounded inputs: close to f32, not equal.
    REQUIRE(run_tool(dir,
                     R"({"kind": "dilated", "segment_lengths": [4, 8], "dilation_rates": [1, 2],
                               "causal": true, "dtype": "bf16"})",
                     message) == 0);
    auto got = load_safetensors(dir.file("out.safetensors")).at("out").to_vector<float>();
    auto ref = want.data().to_vector<float>();
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(std::abs(got[i] - ref[i]) < 0.05);
  }

  TEST_CASE("longnet-attention rejects bad configs and tensors with exit code 2") {
    TempDir dir;
    Generator gen(9);
    save_safetensors(dir.file("in.safetensors"), {{"q", randn({1, 5, 2, 4}, gen)},
                                                  {"k", randn({1, 5, 2, 4}, gen)},
                                                  {"v", randn({1, 5, 2, 4}, gen)}});
    std::string message;
    CHECK(run_tool(dir, R"({"kind": "dilated", "segment_lengths": [4]})", message) == 2);
    CHECK(message.find("dilation_rates") != std::string::npos);
    CHECK(run_tool(dir, R"({"kind": "dense", "dtype": "f16"})", message) == 2);
    CHECK(message.find("valid: f32, bf16") != std::string::npos);
    CHECK(run_tool(dir, "{not json", message) == 2);
    CHECK(message.find("not valid JSON") != std::string::npos);
    save_safetensors(dir.file("in.safetensors"), {{"q", randn({1, 5, 2, 4}, gen)},
                                                  {"k", randn({1, 5, 3, 4}, gen)},
                                                  {"v", randn({1, 5, 3, 4}, gen)}});
    CHECK(run_tool(dir, R"({"kind": "dense"})", message) == 2);
    CHECK(message.find("disagree") != std::string::npos);
    save_safetensors(dir.file("in.safetensors"), {{"q", randn({1, 5, 2, 4}, gen)}});
    CHECK(run_tool(dir, R"({"kind": "dense"})", message) == 2);
    CHECK(message.find("no tensor 'k'") != std::string::npos);
  }
}

}  // namespace longnet
