// longnet-attention: runs one attention call from files, so users can compare this
// implementation with theirs.
//
//   longnet-attention --config attn.json --in in.safetensors --out out.safetensors
//
// attn.json: an attention object (train/attention_config.h) plus "device": "cpu" | "cuda"
// and "dtype": "f32" | "bf16" (the precision the kernel runs in). in.safetensors: F32 q, k,
// v of shape (B, N, H, D) and optionally grad_out of the output's shape. out.safetensors:
// F32 out and, with grad_out, grad_q, grad_k, grad_v. A bad config or bad tensors: exit
// code 2 with a message naming the problem; a failure to write: exit code 1.
#include <cstdio>
#include <fstream>
#include <string>

#include "autograd/ops.h"
#include "tensor/copy.h"
#include "train/attention_config.h"
#include "train/safetensors.h"

namespace longnet {
namespace {

struct Args {
  std::string config;
  std::string in;
  std::string out;
};

constexpr const char* kUsage =
    "usage: longnet-attention --config attn.json --in in.safetensors --out out.safetensors\n";

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    LN_CHECK(i + 1 < argc, "option ", flag, " needs a value\n", kUsage);
    std::string value = argv[++i];
    if (flag == "--config") {
      a.config = value;
    } else if (flag == "--in") {
      a.in = value;
    } else if (flag == "--out") {
      a.out = value;
    } else {
      throw Error(cat("unknown option ", flag, "\n", kUsage));
    }
  }
  LN_CHECK(!a.config.empty() && !a.in.empty() && !a.out.empty(),
           "--config, --in and --out are all required\n", kUsage);
  return a;
}

struct Job {
  AttentionConfig attention;
  Device device;
  DType dtype = DType::f32;
  Tensor q, k, v, grad_out;
};

Job load_job(const Args& args) {
  std::ifstream file(args.config);
  LN_CHECK(file, args.config, ": cannot open the config file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(file);
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(args.config, ": not valid JSON: ", e.what()));
  }
  Job job;
  job.attention = parse_attention_config(j, args.config, {"device", "dtype"});
  std::string device = j.value("device", "cpu");
  LN_CHECK(device == "cpu" || device == "cuda", args.config, ": \"device\" is \"", device,
           "\" (valid: cpu, cuda)");
  job.device = parse_device(device);
  std::string dtype = j.value("dtype", "f32");
  LN_CHECK(dtype == "f32" || dtype == "bf16", args.config, ": \"dtype\" is \"", dtype,
           "\" (valid: f32, bf16)");
  job.dtype = dtype == "bf16" ? DType::bf16 : DType::f32;

  SafetensorsFile in = load_safetensors(args.in);
  for (const auto& [name, t] : in.tensors) {
    LN_CHECK(name == "q" || name == "k" || name == "v" || name == "grad_out", args.in,
             ": unexpected tensor \"", name, "\" (expected q, k, v and optionally grad_out)");
    LN_CHECK(t.dtype() == DType::f32, args.in, ": tensor \"", name, "\" is ",
             longnet::name(t.dtype()), "; expected F32");
    LN_CHECK(t.dim() == 4, args.in, ": tensor \"", name, "\" has shape ", str(t.shape()),
             "; expected (batch, seq, heads, head_dim)");
  }
  job.q = in.at("q");
  job.k = in.at("k");
  job.v = in.at("v");
  for (const auto& [name, t] : in.tensors) {
    if (name == "grad_out") job.grad_out = t;
  }
  return job;
}

int run(const Args& args) {
  Job job;
  NamedTensors results;
  try {
    job = load_job(args);
    auto kernel = make_attention(job.attention, job.device);
    bool backward = job.grad_out.defined();
    Variable q(to(to(job.q, job.dtype), job.device), backward);
    Variable k(to(to(job.k, job.dtype), job.device), backward);
    Variable v(to(to(job.v, job.dtype), job.device), backward);
    Variable out = kernel->forward(q, k, v);
    results.emplace_back("out", to(to(out.data(), Device::cpu()), DType::f32));
    if (backward) {
      LN_CHECK(job.grad_out.shape() == out.shape(), args.in, ": grad_out has shape ",
               str(job.grad_out.shape()), " but the output is ", str(out.shape()));
      out.backward(to(to(job.grad_out, job.dtype), job.device));
      results.emplace_back("grad_q", to(to(q.grad(), Device::cpu()), DType::f32));
      results.emplace_back("grad_k", to(to(k.grad(), Device::cpu()), DType::f32));
      results.emplace_back("grad_v", to(to(v.grad(), Device::cpu()), DType::f32));
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "longnet-attention: %s\n", e.what());
    return 2;
  }
  try {
    save_safetensors(args.out, results,
                     {{"generated_by", "longnet-attention"}, {"kind", kind_name(job.attention)}});
  } catch (const Error& e) {
    std::fprintf(stderr, "longnet-attention: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace longnet

int main(int argc, char** argv) {
  try {
    return longnet::run(longnet::parse_args(argc, argv));
  } catch (const longnet::Error& e) {
    std::fprintf(stderr, "longnet-attention: %s", e.what());
    return 2;
  }
}
