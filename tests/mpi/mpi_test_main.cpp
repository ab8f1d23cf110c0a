// GoogleTest under mpirun: every rank runs every test (the tests are collective), rank 0 prints
// the usual report, the other ranks print only their failures, prefixed with their rank. After
// each test the ranks compare outcomes, so rank 0 also reports a test that failed elsewhere.
#include <cstdio>

#include <gtest/gtest.h>

#include "normlab/mpi/communicator.hpp"

namespace {

// Non-zero ranks: failed assertions only.
class FailurePrinter : public ::testing::EmptyTestEventListener {
  public:
    explicit FailurePrinter(int rank) : rank_(rank) {}
    void OnTestPartResult(const ::testing::TestPartResult& result) override {
        if (!result.failed()) return;
        std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                     result.file_name() ? result.file_name() : "?", result.line_number(),
                     result.message());
    }

  private:
    int rank_;
};

// Every rank: the outcome of each test across ranks. On a communicator of its own, so that a
// rank that left a test early can never pair this collective with one of the test's.
class RankAgreement : public ::testing::EmptyTestEventListener {
  public:
    explicit RankAgreement(const normlab::mpi::Communicator& comm) : comm_(comm) {}
    void OnTestEnd(const ::testing::TestInfo& info) override {
        std::int64_t failed[2] = {info.result()->Failed() ? 1 : 0, 0};
        failed[1] = failed[0] ? comm_.rank() : -1;
        comm_.allreduce_max(std::span<std::int64_t>(failed, 2));
        if (failed[0] && !info.result()->Failed()) {
            if (comm_.rank() == 0)
                std::fprintf(stderr, "[  FAILED  ] %s.%s failed on rank %lld (see its output)\n",
                             info.test_suite_name(), info.name(),
                             static_cast<long long>(failed[1]));
            any_remote_failure_ = true;
        }
    }
    bool any_remote_failure() const { return any_remote_failure_; }

  private:
    normlab::mpi::Communicator comm_;
    bool any_remote_failure_ = false;
};

}  // namespace

int main(int argc, char** argv) {
    normlab::mpi::Session session(argc, argv);
    // mpirun hands the ranks a pseudo-terminal, so GoogleTest would colour a log file; plain text
    // unless --gtest_color says otherwise.
    GTEST_FLAG_SET(color, "no");
    ::testing::InitGoogleTest(&argc, argv);
    const normlab::mpi::Communicator world = session.world();
    MPI_Comm harness_comm;
    normlab::mpi::check(MPI_Comm_dup(MPI_COMM_WORLD, &harness_comm), "MPI_Comm_dup");
    const normlab::mpi::Communicator harness(harness_comm);
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (world.rank() != 0) {
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new FailurePrinter(world.rank()));
    }
    auto* agreement = new RankAgreement(harness);
    listeners.Append(agreement);
    if (world.rank() == 0) std::printf("normlab MPI tests on %d rank(s)\n", world.size());
    int failed = RUN_ALL_TESTS() != 0 || agreement->any_remote_failure() ? 1 : 0;
    std::int64_t any = failed;
    harness.allreduce_max(std::span<std::int64_t>(&any, 1));
    MPI_Comm_free(&harness_comm);
    return any ? 1 : 0;
}
