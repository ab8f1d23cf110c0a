// The stress harness, data-parallel: a run of K ranks × batch b records K and the global batch,
// reports the same result on every rank, and with synchronized BatchNorm reproduces the
// single-process run at batch K·b.
#include <gtest/gtest.h>

#include <cmath>

#include "mpi_testing.hpp"
#include "normlab/errors.hpp"
#include "normlab/mpi/replicas.hpp"
#include "normlab/stress.hpp"

namespace normlab::mpi {
namespace {

using testing::world;

stress::GridOptions small_grid(const std::string& normalizer, std::size_t batch,
                               std::size_t ranks) {
    stress::GridOptions o;
    o.normalizers = {normalizer};
    o.batch_sizes = {batch};
    o.seeds = {1};
    o.workloads = {"mlp"};
    o.data = "synthetic";
    o.train_examples = 240;
    o.test_examples = 60;
    o.ranks = ranks;
    return o;
}

double max_over_ranks(double value) {
    double v = value;
    world().allreduce_max(std::span<double>(&v, 1));
    return v;
}

TEST(StressReplicas, SyncBatchNormRunMatchesOneProcessAtTheGlobalBatch) {
    const std::size_t ranks = std::size_t(world().size());
    const auto distributed = stress::expand_grid(small_grid("sync_batch_norm", 4, ranks));
    const auto single = stress::expand_grid(small_grid("batch_norm", 4 * ranks, 1));
    ASSERT_EQ(distributed.size(), 1u);
    ASSERT_EQ(single.size(), 1u);
    // The lr rule scales with the global batch.
    EXPECT_DOUBLE_EQ(distributed[0].lr, single[0].lr);
    const auto config = distributed[0].to_json();
    if (ranks > 1) {
        EXPECT_EQ(config.at("ranks"), ranks);
        EXPECT_EQ(config.at("global_batch"), 4 * ranks);
        EXPECT_EQ(config.at("batch_size"), 4u);
    } else {
        EXPECT_FALSE(config.contains("ranks"));  // single-process keys are unchanged
    }

    MpiReplicas replicas(world());
    stress::Progress quiet(1, 1, stress::Progress::Style::off);
    const auto r = stress::run_configuration(distributed[0], quiet, &replicas);
    const auto s = stress::run_configuration(single[0], quiet);
    ASSERT_EQ(r.status, "ok") << r.message;
    ASSERT_EQ(s.status, "ok") << s.message;
    EXPECT_DOUBLE_EQ(r.test_accuracy, s.test_accuracy);
    EXPECT_NEAR(r.test_loss, s.test_loss, 1e-5);
    EXPECT_NEAR(r.final_train_loss, s.final_train_loss, 1e-5);
    EXPECT_DOUBLE_EQ(r.test_accuracy_train_mode, s.test_accuracy_train_mode);
    // Every rank holds the same result.
    EXPECT_EQ(max_over_ranks(r.test_loss), r.test_loss);
    EXPECT_EQ(-max_over_ranks(-r.test_loss), r.test_loss);
}

TEST(StressReplicas, RunConfiguredForOtherRankCountIsRefused) {
    const std::size_t ranks = std::size_t(world().size());
    auto runs = stress::expand_grid(small_grid("layer_norm", 2, ranks + 1));
    MpiReplicas replicas(world());
    stress::Progress quiet(1, 1, stress::Progress::Style::off);
    EXPECT_THROW(stress::run_configuration(runs[0], quiet, &replicas), OptionError);
}

TEST(StressReplicas, GlobalBatchLargerThanTheTrainingSetIsAnOptionError) {
    auto o = small_grid("layer_norm", 200, 2);
    EXPECT_THROW(stress::expand_grid(o), OptionError);
}

}  // namespace
}  // namespace normlab::mpi
