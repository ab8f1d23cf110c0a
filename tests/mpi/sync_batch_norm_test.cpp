// sync_batch_norm against batch_norm on the concatenated batch (spec §1): every rank computes
// the single-process reference on the whole global batch and compares its own rows.
#include <gtest/gtest.h>

#include "mpi_testing.hpp"
#include "normlab/mpi/errors.hpp"
#include "normlab/mpi/sync_batch_norm.hpp"
#include "normlab/registry.hpp"
#include "variants/batch_norm.hpp"

namespace normlab::mpi {
namespace {

using testing::random_batch;
using testing::scaled_difference;
using testing::world;

// dγ, dβ of the synchronized layer hold this rank's share; their sum over ranks is the
// full-batch gradient.
Array<float> summed_over_ranks(const Array<float>& local, const Communicator& comm) {
    std::vector<double> sum(local.begin(), local.end());
    comm.allreduce_sum(std::span<double>(sum));
    Array<float> out = Array<float>::from_shape(local.shape());
    std::copy(sum.begin(), sum.end(), out.begin());
    return out;
}

// Runs `steps` train forwards and backwards of both layers on shards given by `sizes` (one per
// rank) of batches of shape (ΣN, rest...), comparing y, dx, dγ, dβ and the running statistics.
void expect_matches_full_batch(const std::vector<std::size_t>& sizes, Shape rest,
                               BatchNormOptions options = {}, int steps = 2) {
    const Communicator comm = world();
    const std::size_t channels = rest[0];
    const Shard shard = shard_of(std::span<const std::size_t>(sizes), comm.rank());
    BatchNorm<float> reference(channels, options);
    SyncBatchNorm<float> sync(channels, options, comm);
    Shape shape = rest;
    shape.insert(shape.begin(), shard.global);
    for (int step = 0; step < steps; ++step) {
        const Array<float> x = random_batch(shape, 100 + unsigned(step), 3.0, 2.0);
        const Array<float> dy = random_batch(shape, 200 + unsigned(step));
        const Array<float> y_ref = reference.forward(x, Mode::train);
        const Array<float> dx_ref = reference.backward(dy);
        const Array<float> y = sync.forward(rows_of(x, shard), Mode::train);
        const Array<float> dx = sync.backward(rows_of(dy, shard));
        EXPECT_EQ(shape_of(y)[0], shard.size());
        EXPECT_LE(scaled_difference(y, rows_of(y_ref, shard)), 1e-5) << "y, step " << step;
        EXPECT_LE(scaled_difference(dx, rows_of(dx_ref, shard)), 1e-5) << "dx, step " << step;
    }
    if (options.affine) {
        auto p = sync.parameters();
        auto q = reference.parameters();
        EXPECT_LE(scaled_difference(summed_over_ranks(*p[0].grad, comm), *q[0].grad), 1e-5)
            << "dgamma";
        EXPECT_LE(scaled_difference(summed_over_ranks(*p[1].grad, comm), *q[1].grad), 1e-5)
            << "dbeta";
    }
    if (options.track_running_stats) {
        EXPECT_LE(scaled_difference(sync.running_mean(), reference.running_mean()), 1e-5);
        EXPECT_LE(scaled_difference(sync.running_var(), reference.running_var()), 1e-5);
        // Eval uses the running statistics: local, and equal to the reference.
        const Array<float> x = random_batch(Shape{3, channels}, 7);
        if (rest.size() == 1) {
            EXPECT_LE(
                scaled_difference(sync.forward(x, Mode::eval), reference.forward(x, Mode::eval)),
                1e-5);
        }
    }
}

TEST(SyncBatchNorm, ForwardAndBackwardEqualBatchNormOnTheConcatenatedBatch) {
    const int k = world().size();
    expect_matches_full_batch(std::vector<std::size_t>(std::size_t(k), 4), {6});
}

TEST(SyncBatchNorm, ImageInputsEqualBatchNormOverBatchAndSpatialDims) {
    const int k = world().size();
    expect_matches_full_batch(std::vector<std::size_t>(std::size_t(k), 2), {3, 4, 5});
}

TEST(SyncBatchNorm, UnevenShardsWithOneAndZeroExamplesAreExact) {
    for (const auto& sizes : testing::uneven_splits(9, world().size()))
        expect_matches_full_batch(sizes, {5});
    for (const auto& sizes : testing::uneven_splits(4, world().size()))
        expect_matches_full_batch(sizes, {2, 3});
}

TEST(SyncBatchNorm, CumulativeMomentumAndNoAffineMatchToo) {
    BatchNormOptions options;
    options.momentum = std::nullopt;
    options.affine = false;
    const int k = world().size();
    expect_matches_full_batch(std::vector<std::size_t>(std::size_t(k), 3), {4}, options, 3);
}

// Input at mean 100: BatchNorm takes the rounding of each channel's mean to float into β
// (kernels::beta_for_mean), which moved y by up to 1.9e-06 here; the synchronized layer does the
// same from the global mean, which the ranks merge from their unrounded means. Both are then
// within a few 1e-07 of the exact result, and of each other (without the correction on either
// side, up to 2e-06 apart).
TEST(SyncBatchNorm, AMeanFarFromZeroKeepsItsDigitsAsBatchNormDoes) {
    const Communicator comm = world();
    const std::vector<std::size_t> sizes(std::size_t(comm.size()), 16);
    const Shard shard = shard_of(std::span<const std::size_t>(sizes), comm.rank());
    for (const Shape& rest : {Shape{6}, Shape{3, 4, 5}}) {
        Shape shape = rest;
        shape.insert(shape.begin(), shard.global);
        BatchNorm<float> reference(rest[0], {});
        SyncBatchNorm<float> sync(rest[0], {}, comm);
        const Array<float> x = random_batch(shape, 11, 100.0, 2.0);
        const Array<float> y_ref = reference.forward(x, Mode::train, Grad::none);
        const Array<float> y = sync.forward(rows_of(x, shard), Mode::train, Grad::none);
        const Array<float> mine = rows_of(y_ref, shard);
        double worst = 0;
        for (std::size_t i = 0; i < y.size(); ++i)
            worst = std::max(worst, std::abs(double(y.data()[i]) - double(mine.data()[i])));
        EXPECT_LT(worst, 1e-6) << format_shape(shape);
    }
}

TEST(SyncBatchNorm, RunningStatisticsAreBitwiseIdenticalOnEveryRank) {
    const Communicator comm = world();
    SyncBatchNorm<float> sync(4, {}, comm);
    // Different data on every rank, different sizes: the merged statistics must still agree.
    const Array<float> x =
        random_batch(Shape{std::size_t(comm.rank()) + 2, 4}, unsigned(comm.rank()) + 1, 1e4, 1.0);
    for (int i = 0; i < 3; ++i)
        sync.forward(x, Mode::train, Grad::none);
    std::vector<double> mine(sync.running_mean().begin(), sync.running_mean().end());
    mine.insert(mine.end(), sync.running_var().begin(), sync.running_var().end());
    std::vector<double> first = mine;
    comm.broadcast(std::span<double>(first), 0);
    EXPECT_EQ(mine, first);
}

TEST(SyncBatchNorm, BuiltBySpecStringThroughTheRegistry) {
    auto norm = make_normalizer("sync_batch_norm(momentum=0.2)", 6);
    EXPECT_EQ(norm->name(), "sync_batch_norm");
    EXPECT_EQ(norm->spec(),
              "sync_batch_norm(eps=1e-05,momentum=0.2,affine=true,track_running_stats=true)");
    auto twin = make_normalizer<double>(norm->spec(), 6);
    EXPECT_EQ(twin->spec(), norm->spec());
    bool listed = false;
    for (const auto& v : registered_variants())
        listed = listed || v.name == "sync_batch_renorm";
    EXPECT_TRUE(listed);
    EXPECT_THROW(register_variant({"batch_norm", "", {}}, {}, {}), OptionError);
    // Collective like the class itself.
    const std::size_t n = std::size_t(world().rank()) + 2;
    EXPECT_EQ(shape_of(norm->forward(random_batch(Shape{n, 6}, 3), Mode::train)), (Shape{n, 6}));
}

TEST(SyncBatchNorm, OneValuePerChannelInTotalIsRefusedOnEveryRank) {
    const Communicator comm = world();
    SyncBatchNorm<float> sync(3, {}, comm);
    const std::size_t n = comm.rank() == 0 ? 1 : 0;  // one example over all ranks
    try {
        sync.forward(random_batch(Shape{n, 3}, 1), Mode::train);
        ADD_FAILURE() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("more than 1 value per channel across the"),
                  std::string::npos)
            << e.what();
    }
}

TEST(SyncBatchNorm, ChannelMismatchBetweenRanksIsAnErrorOnEveryRank) {
    const Communicator comm = world();
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    const std::size_t channels = comm.rank() == 1 ? 5 : 4;
    SyncBatchNorm<float> sync(channels, {}, comm);
    try {
        sync.forward(random_batch(Shape{3, channels}, 1), Mode::train);
        ADD_FAILURE() << "expected RankMismatchError";
    } catch (const RankMismatchError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("sync_batch_norm(" + std::to_string(channels) + ") forward"),
                  std::string::npos)
            << msg;
        EXPECT_NE(msg.find("disagree on the number of channels"), std::string::npos) << msg;
        EXPECT_NE(msg.find("from 4 to 5"), std::string::npos) << msg;
    }
    // The failed pass left every rank in step: a matching call works afterwards.
    SyncBatchNorm<float> fine(4, {}, comm);
    EXPECT_NO_THROW(fine.forward(random_batch(Shape{2, 4}, 1), Mode::train));
}

TEST(SyncBatchNorm, BadInputOnOneRankIsAnErrorOnEveryRank) {
    const Communicator comm = world();
    SyncBatchNorm<float> sync(4, {}, comm);
    Array<float> x = random_batch(Shape{3, 4}, 1);
    const int bad = comm.size() - 1;
    if (comm.rank() == bad) x(1, 2) = std::numeric_limits<float>::quiet_NaN();
    if (comm.rank() == bad) {
        EXPECT_THROW(sync.forward(x, Mode::train), NonFiniteError);
    } else {
        try {
            sync.forward(x, Mode::train);
            ADD_FAILURE() << "expected RemoteRankError";
        } catch (const RemoteRankError& e) {
            EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(bad) + " of"),
                      std::string::npos)
                << e.what();
        }
    }
    // Running statistics untouched everywhere.
    EXPECT_EQ(sync.running_mean(), xt::zeros<float>({4}));
    // A wrong input shape on one rank, in the backward: dy that does not match the forward.
    sync.forward(random_batch(Shape{3, 4}, 2), Mode::train);
    const Shape dy_shape = comm.rank() == bad ? Shape{2, 4} : Shape{3, 4};
    if (comm.rank() == bad)
        EXPECT_THROW(sync.backward(random_batch(dy_shape, 3)), ShapeError);
    else
        EXPECT_THROW(sync.backward(random_batch(dy_shape, 3)), RemoteRankError);
}

}  // namespace
}  // namespace normlab::mpi
