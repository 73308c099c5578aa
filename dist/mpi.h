// The MPI backend as the rest of the code sees it: no MPI header leaks out of dist/mpi.cpp.
// A build without MPI compiles dist/mpi_absent.cpp instead, whose
// make_mpi_communicator() throws the error that says how to get MPI support.
#pragma once

#include <memory>

#include "dist/communicator.h"

namespace longnet {

// The MPI backend over every launched process (on a duplicate of MPI_COMM_WORLD, so its
// messages never meet another communicator's). The first call initialises MPI
// (MPI_Init_thread, serialised threads) unless the program already did, and registers
// MPI_Finalize at exit.
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace longnet
