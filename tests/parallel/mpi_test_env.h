// The world communicator of the multi-rank test binaries (mpi_test_main.cc).
#ifndef MOE_TESTS_PARALLEL_MPI_TEST_ENV_H_
#define MOE_TESTS_PARALLEL_MPI_TEST_ENV_H_

#include "parallel/mpi_communicator.h"

namespace moe::testing {

// A duplicate of MPI_COMM_WORLD with a progress thread and a 60 s wait timeout.
MpiCommunicator& World();

}  // namespace moe::testing

#endif  // MOE_TESTS_PARALLEL_MPI_TEST_ENV_H_
