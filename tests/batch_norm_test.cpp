// BatchNorm specifics (spec §1): running statistics with PyTorch's conventions, eval mode,
// the one-value-per-channel rule.
#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"
#include "variants/batch_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

// Per-channel mean and unbiased variance, two-pass, in double.
std::pair<std::vector<double>, std::vector<double>> channel_moments(const ArrayD& x) {
    const std::size_t n = x.shape()[0], c = x.shape()[1], s = x.size() / (n * c);
    std::vector<double> mean(c, 0), var(c, 0);
    for (std::size_t ch = 0; ch < c; ++ch) {
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < s; ++j)
                mean[ch] += x.data()[(i * c + ch) * s + j];
        mean[ch] /= double(n * s);
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < s; ++j) {
                const double d = x.data()[(i * c + ch) * s + j] - mean[ch];
                var[ch] += d * d;
            }
        var[ch] /= double(n * s - 1);
    }
    return {mean, var};
}

TEST(BatchNorm, RunningStatisticsFollowThePyTorchFormula) {
    BatchNorm<double> bn(3, {.momentum = 0.2});
    std::vector<double> rm(3, 0.0), rv(3, 1.0);
    for (unsigned step = 0; step < 5; ++step) {
        const ArrayD x = random_array({4, 3, 5}, step, double(step), 1.0 + step);
        bn.forward(x, Mode::train, Grad::none);
        const auto [mean, var] = channel_moments(x);
        for (std::size_t c = 0; c < 3; ++c) {
            rm[c] = 0.8 * rm[c] + 0.2 * mean[c];
            rv[c] = 0.8 * rv[c] + 0.2 * var[c];  // unbiased
        }
    }
    for (std::size_t c = 0; c < 3; ++c) {
        EXPECT_NEAR(bn.running_mean()(c), rm[c], 1e-12);
        EXPECT_NEAR(bn.running_var()(c), rv[c], 1e-12);
    }
    EXPECT_EQ(bn.num_batches_tracked(), 5);
}

TEST(BatchNorm, MomentumNoneIsTheCumulativeAverageOfBatchStatistics) {
    BatchNorm<double> bn(2, {.momentum = std::nullopt});
    std::vector<double> sum_mean(2, 0), sum_var(2, 0);
    for (unsigned step = 0; step < 4; ++step) {
        const ArrayD x = random_array({6, 2}, 20 + step, 5.0 * step, 2.0);
        bn.forward(x, Mode::train, Grad::none);
        const auto [mean, var] = channel_moments(x);
        for (std::size_t c = 0; c < 2; ++c) {
            sum_mean[c] += mean[c];
            sum_var[c] += var[c];
        }
    }
    for (std::size_t c = 0; c < 2; ++c) {
        EXPECT_NEAR(bn.running_mean()(c), sum_mean[c] / 4, 1e-12);
        EXPECT_NEAR(bn.running_var()(c), sum_var[c] / 4, 1e-12);
    }
}

TEST(BatchNorm, EvalModeUsesRunningStatistics) {
    BatchNorm<double> bn(3);
    testing::randomize_parameters(bn);
    for (unsigned step = 0; step < 3; ++step)
        bn.forward(random_array({5, 3, 4}, step, 2.0, 3.0), Mode::train, Grad::none);
    const ArrayD x = random_array({2, 3, 4}, 9, 1.0, 1.0);
    const ArrayD y = bn.forward(x, Mode::eval);
    auto params = bn.parameters();
    for (std::size_t i = 0; i < x.size(); ++i) {
        const std::size_t c = (i / 4) % 3;
        const double expected = (x.data()[i] - bn.running_mean()(c)) /
                                    std::sqrt(bn.running_var()(c) + 1e-5) * (*params[0].value)(c) +
                                (*params[1].value)(c);
        EXPECT_NEAR(y.data()[i], expected, 1e-12);
    }
    // Eval changes nothing.
    const ArrayD rm = bn.running_mean();
    bn.forward(x, Mode::eval, Grad::none);
    EXPECT_EQ(bn.running_mean(), rm);
    EXPECT_EQ(bn.num_batches_tracked(), 3);
}

TEST(BatchNorm, WithoutTrackedStatisticsEvalUsesTheBatch) {
    BatchNorm<double> bn(3, {.track_running_stats = false});
    const ArrayD x = random_array({5, 3}, 4, 3.0, 2.0);
    EXPECT_EQ(bn.forward(x, Mode::eval, Grad::none), bn.forward(x, Mode::train, Grad::none));
    EXPECT_TRUE(bn.buffers().empty());
    EXPECT_TRUE(bn.counters().empty());
}

TEST(BatchNorm, OneValuePerChannelInTrainingIsRefusedLikePyTorch) {
    BatchNorm<float> bn(4);
    for (const Shape& shape : {Shape{1, 4}, Shape{1, 4, 1, 1}}) {
        try {
            bn.forward(Tensor::from_shape(shape), Mode::train);
            FAIL() << "expected ShapeError";
        } catch (const ShapeError& e) {
            EXPECT_EQ(std::string(e.what()),
                      "batch_norm(4): expected more than 1 value per channel when training, got "
                      "input of shape " +
                          format_shape(shape));
        }
    }
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    // Running statistics make a single sample fine in eval mode.
    EXPECT_NO_THROW(bn.forward(xt::ones<float>({1, 4}), Mode::eval));
}

TEST(BatchNorm, BatchOfOneWithSpatialDimsTrains) {
    BatchNorm<double> bn(2);
    testing::expect_gradients_match(
        testing::check_gradients(bn, random_array({1, 2, 3, 3}, 5), Mode::train));
}

TEST(BatchNorm, ImpossibleOptionsAreRefused) {
    EXPECT_THROW(BatchNorm<float>(4, {.momentum = 1.5}), OptionError);
    EXPECT_THROW(BatchNorm<float>(4, {.eps = 0.0}), OptionError);
    EXPECT_THROW(BatchNorm<float>(0), OptionError);
}

TEST(BatchNorm, AffineFalseHasNoParameters) {
    BatchNorm<float> bn(4, {.affine = false});
    EXPECT_TRUE(bn.parameters().empty());
    EXPECT_EQ(bn.buffers().size(), 2u);
}

}  // namespace
}  // namespace normlab
