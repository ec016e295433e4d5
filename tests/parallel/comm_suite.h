// The behaviour every Communicator must have, as functions over a
// communicator, so that the MPI, local and simulated-network implementations
// run the same checks (each a TEST in their own binary). Every check compares
// with a serial reference each rank computes from RankData.
#ifndef MOE_TESTS_PARALLEL_COMM_SUITE_H_
#define MOE_TESTS_PARALLEL_COMM_SUITE_H_

#include "parallel/communicator.h"

namespace moe::testing {

void CheckAllReduceSum(Communicator& comm);
void CheckAllReduceMax(Communicator& comm);
void CheckReduceScatter(Communicator& comm);
void CheckAllGather(Communicator& comm);
void CheckAllToAllV(Communicator& comm);
void CheckSendRecv(Communicator& comm);
void CheckBroadcast(Communicator& comm);
void CheckBarrier(Communicator& comm);
// Many operations of every kind in flight at once, waited in a rank-dependent
// order different from the issue order.
void CheckOutOfOrderWaits(Communicator& comm);
// Completion through Test() alone, never Wait().
void CheckTestPolling(Communicator& comm);
// Split into groups (with reversed keys, and one rank left out) and run
// collectives on the groups and the parent at the same time.
void CheckSplit(Communicator& comm);

// Every check above, in order.
void CheckAll(Communicator& comm);

}  // namespace moe::testing

#endif  // MOE_TESTS_PARALLEL_COMM_SUITE_H_
