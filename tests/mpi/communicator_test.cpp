// The communicator wrapper: collectives give every rank the same result, MPI errors come back
// as exceptions with MPI's description.
#include <gtest/gtest.h>

#include "mpi_testing.hpp"

namespace normlab::mpi {
namespace {

using testing::world;

TEST(Communicator, SumAndMaxReachEveryRank) {
    const Communicator comm = world();
    const int k = comm.size();
    std::vector<double> sums = {1.0, double(comm.rank())};
    comm.allreduce_sum(std::span<double>(sums));
    EXPECT_EQ(sums[0], double(k));
    EXPECT_EQ(sums[1], double(k * (k - 1) / 2));
    std::vector<float> floats = {0.5f};
    comm.allreduce_sum(std::span<float>(floats));
    EXPECT_EQ(floats[0], 0.5f * float(k));
    std::vector<std::int64_t> max = {comm.rank(), -comm.rank()};
    comm.allreduce_max(std::span<std::int64_t>(max));
    EXPECT_EQ(max[0], k - 1);
    EXPECT_EQ(max[1], 0);
}

TEST(Communicator, BroadcastCopiesTheRootsValues) {
    const Communicator comm = world();
    const int root = comm.size() - 1;
    std::vector<float> values = {float(comm.rank()), 2.0f};
    comm.broadcast(std::span<float>(values), root);
    EXPECT_EQ(values[0], float(root));
    EXPECT_EQ(values[1], 2.0f);
}

TEST(Communicator, MpiErrorsBecomeExceptionsInsteadOfAborting) {
    const Communicator comm = world();
    std::vector<double> values = {1.0};
    try {
        comm.broadcast(std::span<double>(values), comm.size());  // no such rank
        ADD_FAILURE() << "expected MpiError";
    } catch (const MpiError& e) {
        EXPECT_NE(std::string(e.what()).find("MPI_Bcast from rank " + std::to_string(comm.size()) +
                                             " failed: "),
                  std::string::npos)
            << e.what();
    }
}

}  // namespace
}  // namespace normlab::mpi
