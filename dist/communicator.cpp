#include "dist/communicator.h"

#include <cstdlib>

#include "dist/mpi.h"
#include "dist/single_process.h"

namespace longnet {
namespace {

// Variables that MPI launchers set in every process they start: Open MPI's mpirun,
// MPICH/Intel MPI's hydra and Slurm's srun (PMI-1/2), and PMIx launchers (srun --mpi=pmix,
// prterun).
bool launched_by_mpi() {
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(variable) != nullptr) return true;
  }
  return false;
}

}  // namespace

const char* name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      break;
  }
  return "max";
}

std::unique_ptr<Communicator> make_communicator() {
  if (launched_by_mpi()) return make_mpi_communicator();
  return std::make_unique<SingleProcessCommunicator>();
}

void Communicator::set_timeout(double seconds) {
  LN_CHECK(seconds > 0, "set_timeout: ", seconds, " s; valid: seconds > 0 (infinity: no limit)");
  timeout_ = seconds;
}

int local_rank(const Communicator& comm) {
  for (const char* variable :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMIX_LOCAL_RANK"}) {
    if (const char* value = std::getenv(variable)) return std::atoi(value);
  }
  return comm.rank();
}

}  // namespace longnet
