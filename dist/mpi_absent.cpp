// The MPI backend of a build without MPI: clear errors.
#include "dist/mpi.h"

namespace longnet {

bool built_with_mpi() { return false; }

std::unique_ptr<Communicator> make_mpi_communicator() {
  throw Error(
      "this process was started by an MPI launcher (mpirun, srun), but this build has no MPI "
      "support: install MPI (Debian: apt-get install libopenmpi-dev openmpi-bin, or run "
      "scripts/setup.sh) and reconfigure (meson setup --reconfigure <build dir>), or run "
      "without the launcher for a single process");
}

}  // namespace longnet
