// InstanceNorm specifics (spec §4): trailing dims required, PyTorch's running statistics.
#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "variants/instance_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

TEST(InstanceNorm, InputWithoutTrailingDimensionsIsRefused) {
    InstanceNorm<float> in(4);
    try {
        in.forward(xt::ones<float>({3, 4}), Mode::train);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "instance_norm(4): expected input of shape (N, 4, L, ...), got (3, 4)");
    }
}

TEST(InstanceNorm, OneSpatialElementInTrainingIsRefusedLikePyTorch) {
    InstanceNorm<float> in(4);
    try {
        in.forward(xt::ones<float>({3, 4, 1, 1}), Mode::train);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "instance_norm(4): expected more than 1 spatial element when training, got "
                  "input of shape (3, 4, 1, 1)");
    }
}

TEST(InstanceNorm, RunningStatisticsAverageTheInstancesLikePyTorch) {
    InstanceNorm<double> in(2, {.momentum = 0.5, .track_running_stats = true});
    std::vector<double> rm(2, 0.0), rv(2, 1.0);
    for (unsigned step = 0; step < 3; ++step) {
        const ArrayD x = random_array({3, 2, 6}, step, 1.0 + step, 2.0);
        in.forward(x, Mode::train, Grad::none);
        for (std::size_t c = 0; c < 2; ++c) {
            double mean_c = 0, var_c = 0;
            for (std::size_t n = 0; n < 3; ++n) {
                double m = 0, v = 0;
                for (std::size_t s = 0; s < 6; ++s)
                    m += x(n, c, s) / 6;
                for (std::size_t s = 0; s < 6; ++s)
                    v += std::pow(x(n, c, s) - m, 2) / 5;
                mean_c += m / 3;
                var_c += v / 3;
            }
            rm[c] = 0.5 * rm[c] + 0.5 * mean_c;
            rv[c] = 0.5 * rv[c] + 0.5 * var_c;
        }
    }
    for (std::size_t c = 0; c < 2; ++c) {
        EXPECT_NEAR(in.running_mean()(c), rm[c], 1e-12);
        EXPECT_NEAR(in.running_var()(c), rv[c], 1e-12);
    }
    // Eval uses them for every sample.
    const ArrayD x = random_array({2, 2, 6}, 7);
    const ArrayD y = in.forward(x, Mode::eval, Grad::none);
    for (std::size_t n = 0; n < 2; ++n)
        for (std::size_t c = 0; c < 2; ++c)
            for (std::size_t s = 0; s < 6; ++s)
                EXPECT_NEAR(y(n, c, s), (x(n, c, s) - rm[c]) / std::sqrt(rv[c] + 1e-5), 1e-12);
}

TEST(InstanceNorm, WithoutTrackingEvalRecomputesPerInstance) {
    InstanceNorm<double> in(3);
    const ArrayD x = random_array({2, 3, 5}, 3, 4.0, 2.0);
    EXPECT_EQ(in.forward(x, Mode::eval, Grad::none), in.forward(x, Mode::train, Grad::none));
    EXPECT_TRUE(in.parameters().empty());  // PyTorch default affine=false
}

}  // namespace
}  // namespace normlab
