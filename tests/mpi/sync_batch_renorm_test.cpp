// sync_batch_renorm against batch_renorm on the concatenated batch (spec §2), with a schedule
// that clips r and d from the first step so the correction is exercised.
#include <gtest/gtest.h>

#include "mpi_testing.hpp"
#include "normlab/mpi/errors.hpp"
#include "normlab/mpi/sync_batch_renorm.hpp"
#include "normlab/registry.hpp"
#include "variants/batch_renorm.hpp"

namespace normlab::mpi {
namespace {

using testing::random_batch;
using testing::scaled_difference;
using testing::world;

BatchRenormOptions relaxed_at_once() {
    BatchRenormOptions o;
    o.warmup = 0;
    o.rmax_steps = 0;
    o.dmax_steps = 0;
    o.rmax = 1.5;
    o.dmax = 0.5;
    o.momentum = 0.3;
    return o;
}

Array<float> summed_over_ranks(const Array<float>& local, const Communicator& comm) {
    std::vector<double> sum(local.begin(), local.end());
    comm.allreduce_sum(std::span<double>(sum));
    Array<float> out = Array<float>::from_shape(local.shape());
    std::copy(sum.begin(), sum.end(), out.begin());
    return out;
}

void expect_matches_full_batch(const std::vector<std::size_t>& sizes, Shape rest,
                               BatchRenormOptions options, int steps = 4) {
    const Communicator comm = world();
    const std::size_t channels = rest[0];
    const Shard shard = shard_of(std::span<const std::size_t>(sizes), comm.rank());
    BatchRenorm<float> reference(channels, options);
    SyncBatchRenorm<float> sync(channels, options, comm);
    Shape shape = rest;
    shape.insert(shape.begin(), shard.global);
    bool clipped = false;
    for (int step = 0; step < steps; ++step) {
        // The distribution moves between steps, so r and d leave 1 and 0 (and get clipped).
        const Array<float> x =
            random_batch(shape, 300 + unsigned(step), 1.0 + step, 1.0 + 0.5 * step);
        const Array<float> dy = random_batch(shape, 400 + unsigned(step));
        const RenormClip clip = sync.clip();
        const Array<float> y_ref = reference.forward(x, Mode::train);
        const Array<float> dx_ref = reference.backward(dy);
        const Array<float> y = sync.forward(rows_of(x, shard), Mode::train);
        const Array<float> dx = sync.backward(rows_of(dy, shard));
        EXPECT_LE(scaled_difference(y, rows_of(y_ref, shard)), 1e-5) << "y, step " << step;
        EXPECT_LE(scaled_difference(dx, rows_of(dx_ref, shard)), 1e-5) << "dx, step " << step;
        clipped = clipped || clip.dmax > 0;
    }
    EXPECT_TRUE(clipped);
    auto p = sync.parameters();
    auto q = reference.parameters();
    EXPECT_LE(scaled_difference(summed_over_ranks(*p[0].grad, comm), *q[0].grad), 1e-5);
    EXPECT_LE(scaled_difference(summed_over_ranks(*p[1].grad, comm), *q[1].grad), 1e-5);
    EXPECT_LE(scaled_difference(sync.moving_mean(), reference.moving_mean()), 1e-5);
    EXPECT_LE(scaled_difference(sync.moving_std(), reference.moving_std()), 1e-5);
    EXPECT_EQ(sync.step(), reference.step());
    Shape eval_shape = rest;
    eval_shape.insert(eval_shape.begin(), 2);
    const Array<float> x = random_batch(eval_shape, 9);
    EXPECT_LE(scaled_difference(sync.forward(x, Mode::eval), reference.forward(x, Mode::eval)),
              1e-5);
    EXPECT_LE(scaled_difference(sync.backward(x), reference.backward(x)), 1e-5);
}

TEST(SyncBatchRenorm, ForwardBackwardAndMovingAveragesEqualBatchRenormOnTheConcatenatedBatch) {
    const int k = world().size();
    expect_matches_full_batch(std::vector<std::size_t>(std::size_t(k), 4), {5}, relaxed_at_once());
    expect_matches_full_batch(std::vector<std::size_t>(std::size_t(k), 2), {3, 2, 3},
                              relaxed_at_once());
}

TEST(SyncBatchRenorm, UnevenShardsWithOneAndZeroExamplesAreExact) {
    for (const auto& sizes : testing::uneven_splits(7, world().size()))
        expect_matches_full_batch(sizes, {4}, relaxed_at_once());
}

TEST(SyncBatchRenorm, BuiltBySpecStringWithBatchRenormOptions) {
    auto norm = make_normalizer("sync_batch_renorm(rmax=2,warmup=10,rmax_steps=20)", 3);
    EXPECT_EQ(norm->name(), "sync_batch_renorm");
    EXPECT_NE(norm->spec().find("rmax=2"), std::string::npos) << norm->spec();
    try {
        make_normalizer("sync_batch_renorm(rmax=0.5)", 3);
        ADD_FAILURE() << "expected OptionError";
    } catch (const OptionError& e) {
        EXPECT_EQ(std::string(e.what()).rfind("sync_batch_renorm(3): rmax must be >= 1", 0), 0u)
            << e.what();
    }
}

TEST(SyncBatchRenorm, ChannelMismatchBetweenRanksIsAnErrorOnEveryRank) {
    const Communicator comm = world();
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    const std::size_t channels = comm.rank() == 0 ? 2 : 3;
    SyncBatchRenorm<float> sync(channels, relaxed_at_once(), comm);
    EXPECT_THROW(sync.forward(random_batch(Shape{4, channels}, 1), Mode::train), RankMismatchError);
    EXPECT_EQ(sync.step(), 0);
}

}  // namespace
}  // namespace normlab::mpi
