// Data-parallel training: K ranks with b examples each, synchronized BatchNorm and averaged
// gradients, train exactly like one process with batch K·b; replicas stay identical.
#include <gtest/gtest.h>

#include <random>

#include "mpi_testing.hpp"
#include "normlab/model/layers.hpp"
#include "normlab/model/training.hpp"
#include "normlab/mpi/data_parallel.hpp"
#include "normlab/mpi/errors.hpp"
#include "normlab/mpi/sync_batch_norm.hpp"

namespace normlab::mpi {
namespace {

using model::Sequential;
using testing::random_batch;
using testing::scaled_difference;
using testing::world;

constexpr std::size_t kInputs = 6, kHidden = 8, kClasses = 3;

// linear → normalizer → tanh → linear, weights from `seed` (the same on every rank).
Sequential<float> small_model(std::unique_ptr<BasicNormalizer<float>> norm, unsigned seed,
                              std::size_t hidden = kHidden) {
    std::mt19937 rng(seed);
    Sequential<float> m;
    m.add(std::make_unique<model::Linear<float>>(kInputs, hidden, model::Init::xavier, rng, 0.01,
                                                 /*bias=*/false));
    m.add(std::make_unique<model::NormLayer<float>>(std::move(norm)));
    m.add(std::make_unique<model::Elementwise<float>>(model::Activation::tanh));
    m.add(std::make_unique<model::Linear<float>>(hidden, kClasses, model::Init::xavier, rng));
    return m;
}

std::vector<int> random_labels(std::size_t n, unsigned seed) {
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> pick(0, int(kClasses) - 1);
    std::vector<int> labels(n);
    for (auto& l : labels)
        l = pick(gen);
    return labels;
}

// Forward and backward of one step; `loss_scale` multiplies the loss gradient.
void forward_backward(Sequential<float>& m, const Array<float>& x, const std::vector<int>& labels,
                      double loss_scale) {
    m.zero_grad();
    const Array<float> logits = m.forward(x, Mode::train);
    Array<float> dlogits;
    model::softmax_cross_entropy(logits, labels, &dlogits);
    dlogits *= float(loss_scale);
    m.backward(dlogits);
}

// Trains the distributed model on shards `sizes` and the reference on whole batches, then
// compares every parameter, buffer and counter.
void expect_training_matches_full_batch(const std::vector<std::size_t>& sizes, bool equal_shards) {
    const Communicator comm = world();
    const Shard shard = shard_of(std::span<const std::size_t>(sizes), comm.rank());
    BatchNormOptions bn;
    bn.momentum = 0.2;
    auto reference = small_model(std::make_unique<BatchNorm<float>>(kHidden, bn), 11);
    auto replica = small_model(std::make_unique<SyncBatchNorm<float>>(kHidden, bn, comm), 11);
    model::SgdOptions sgd;
    sgd.momentum = 0.9;
    auto ref_opt = model::Optimizer<float>::sgd(reference.parameters(), sgd);
    auto rep_opt = model::Optimizer<float>::sgd(replica.parameters(), sgd);
    for (unsigned step = 0; step < 5; ++step) {
        const Array<float> x = random_batch(Shape{shard.global, kInputs}, 500 + step, 0.5, 2.0);
        const std::vector<int> labels = random_labels(shard.global, 600 + step);
        forward_backward(reference, x, labels, 1.0);
        ref_opt.step(0.2);
        if (equal_shards) {
            // Each rank's loss is the mean over its shard; the mean over ranks is the global mean.
            forward_backward(replica, rows_of(x, shard), rows_of(labels, shard), 1.0);
            average_gradients(replica, comm);
        } else {
            forward_backward(replica, rows_of(x, shard), rows_of(labels, shard), shard.weight());
            sum_gradients(replica, comm);
        }
        rep_opt.step(0.2);
    }
    const auto p = replica.parameters();
    const auto q = reference.parameters();
    ASSERT_EQ(p.size(), q.size());
    for (std::size_t i = 0; i < p.size(); ++i)
        EXPECT_LE(scaled_difference(*p[i].value, *q[i].value), 1e-5) << p[i].name;
    const auto b = replica.buffers();
    const auto c = reference.buffers();
    ASSERT_EQ(b.size(), c.size());
    for (std::size_t i = 0; i < b.size(); ++i)
        EXPECT_LE(scaled_difference(*b[i].value, *c[i].value), 1e-5) << b[i].name;
    EXPECT_NO_THROW(check_replicas(replica, comm));
}

TEST(DataParallel, KRanksTimesBatchBTrainLikeOneProcessWithBatchKB) {
    expect_training_matches_full_batch(std::vector<std::size_t>(std::size_t(world().size()), 4),
                                       true);
}

TEST(DataParallel, UnevenShardsWithWeightedLossGradientsTrainLikeOneProcess) {
    // A rank with one example; not one with none, which Linear refuses (N >= 1).
    const int k = world().size();
    std::vector<std::size_t> sizes(std::size_t(k), 0);
    for (int r = 0; r < k; ++r)
        sizes[std::size_t(r)] = std::size_t(1 + 2 * r);  // 1, 3, 5, …
    if (k == 1) sizes[0] = 3;  // alone, one example would be one value per channel
    expect_training_matches_full_batch(sizes, false);
}

TEST(DataParallel, BalancedShardsCoverTheBatchOnceAndDifferByAtMostOne) {
    for (int ranks : {1, 2, 3, 5}) {
        std::size_t next = 0;
        for (int r = 0; r < ranks; ++r) {
            const Shard s = shard_of(7, r, ranks);
            EXPECT_EQ(s.begin, next);
            EXPECT_GE(s.size(), 7u / std::size_t(ranks));
            EXPECT_LE(s.size(), 7u / std::size_t(ranks) + 1);
            EXPECT_EQ(s.global, 7u);
            next = s.end;
        }
        EXPECT_EQ(next, 7u);
    }
    const std::vector<std::size_t> sizes = {2, 0, 3};
    const Shard s = shard_of(std::span<const std::size_t>(sizes), 2);
    EXPECT_EQ(s.begin, 2u);
    EXPECT_EQ(s.end, 5u);
    EXPECT_DOUBLE_EQ(s.weight(), 0.6);
    EXPECT_THROW(shard_of(7, 3, 3), ShapeError);
    const Array<float> x = random_batch(Shape{5, 2, 3}, 1);
    const Array<float> rows = rows_of(x, s);
    EXPECT_EQ(shape_of(rows), (Shape{3, 2, 3}));
    EXPECT_EQ(rows(0, 1, 2), x(2, 1, 2));
    EXPECT_EQ(shape_of(rows_of(x, shard_of(std::span<const std::size_t>(sizes), 1))),
              (Shape{0, 2, 3}));
    EXPECT_THROW(rows_of(random_batch(Shape{4, 2}, 1), s), ShapeError);
}

TEST(DataParallel, BroadcastMakesReplicasOfRankZero) {
    const Communicator comm = world();
    // Different seeds: replicas differ until the broadcast.
    auto m = small_model(std::make_unique<BatchNorm<float>>(kHidden), 20 + unsigned(comm.rank()));
    auto root = small_model(std::make_unique<BatchNorm<float>>(kHidden), 20);
    m.forward(random_batch(Shape{4, kInputs}, unsigned(comm.rank())), Mode::train, Grad::none);
    root.forward(random_batch(Shape{4, kInputs}, 0), Mode::train, Grad::none);
    if (comm.size() > 1) {
        EXPECT_THROW(check_replicas(m, comm), RankMismatchError);
    }
    broadcast_parameters(m, comm);
    EXPECT_NO_THROW(check_replicas(m, comm));
    const auto p = m.parameters();
    const auto q = root.parameters();
    for (std::size_t i = 0; i < p.size(); ++i)
        EXPECT_EQ(*p[i].value, *q[i].value) << p[i].name;
    const auto b = m.buffers();
    const auto c = root.buffers();
    for (std::size_t i = 0; i < b.size(); ++i)
        EXPECT_EQ(*b[i].value, *c[i].value) << b[i].name;
}

TEST(DataParallel, DivergedReplicasAreReportedOnEveryRank) {
    const Communicator comm = world();
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    auto m = small_model(std::make_unique<BatchNorm<float>>(kHidden), 3);
    if (comm.rank() == comm.size() - 1) (*m.parameters()[0].value)(0, 0) += 1e-6f;
    try {
        check_replicas(m, comm);
        ADD_FAILURE() << "expected RankMismatchError";
    } catch (const RankMismatchError& e) {
        EXPECT_NE(std::string(e.what()).find("checksum of the parameter values"), std::string::npos)
            << e.what();
    }
#ifndef NDEBUG
    // Debug builds check the same inside average_gradients.
    EXPECT_THROW(average_gradients(m, comm), RankMismatchError);
#endif
}

TEST(DataParallel, DifferentModelsOnDifferentRanksAreAnErrorNotAHang) {
    const Communicator comm = world();
    if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
    const std::size_t hidden = comm.rank() == 1 ? kHidden + 1 : kHidden;
    auto m = small_model(std::make_unique<BatchNorm<float>>(hidden), 3, hidden);
    try {
        average_gradients(m, comm);
        ADD_FAILURE() << "expected RankMismatchError";
    } catch (const RankMismatchError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("average_gradients"), std::string::npos) << msg;
        EXPECT_NE(msg.find("disagree on the number of parameter values"), std::string::npos) << msg;
    }
}

}  // namespace
}  // namespace normlab::mpi
