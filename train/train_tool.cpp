// longnet-train: trains a LongNet language model as a JSON configuration says (README.md
// documents the schema; configs/ holds examples).
//
//   longnet-train CONFIG.json          train, resuming from train.out_dir's newest checkpoint
//   longnet-train --check CONFIG.json  validate the configuration, the data and out_dir only
//   mpirun -np P longnet-train CONFIG.json   data parallel over P processes (rank 0 writes)
//
// Exit status: 0 done, 2 the configuration (or what it names) is wrong and nothing was
// written, 1 the run failed (I/O, too many NaN steps, ...).
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

#include "dist/communicator.h"
#include "train/trainer.h"

namespace {

constexpr const char* kUsage =
    "usage: longnet-train [--check] CONFIG.json\n"
    "  trains the model CONFIG.json describes (README.md documents its keys); a run whose\n"
    "  train.out_dir holds a checkpoint resumes from it. --check validates the configuration,\n"
    "  the data files and out_dir, and writes nothing.\n";

}  // namespace

int main(int argc, char** argv) {
  bool check_only = false;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--check") {
      check_only = true;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (arg.rfind("-", 0) == 0 || !path.empty()) {
      std::cerr << "longnet-train: unexpected argument \"" << arg << "\"\n" << kUsage;
      return 2;
    } else {
      path = arg;
    }
  }
  if (path.empty()) {
    std::cerr << kUsage;
    return 2;
  }
  // Under an MPI launcher every process runs this; only rank 0 prints progress, and errors
  // name the rank that hit them.
  std::string who = "longnet-train: ";
  try {
    std::unique_ptr<longnet::Communicator> comm = longnet::make_communicator();
    if (comm->size() > 1) who += "rank " + std::to_string(comm->rank()) + ": ";
    std::ostream silent(nullptr);
    std::ostream& out = comm->rank() == 0 ? std::cout : silent;
    longnet::TrainConfig config = longnet::load_train_config(path);
    comm = longnet::run_communicator(std::move(comm), config);
    longnet::RunPlan plan = longnet::plan_run(config, out);
    if (check_only) {
      out << path << ": ok (" << plan.data.train.size() << " training and " << plan.data.val.size()
          << " validation tokens; "
          << (plan.resume ? "would resume from " + plan.resume->dir : "would start afresh")
          << ")\n";
      return 0;
    }
    longnet::run_training(config, std::move(plan), std::cout, *comm);
    return 0;
  } catch (const longnet::ConfigError& e) {
    std::cerr << who << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << who << e.what() << "\n";
    return 1;
  }
}
