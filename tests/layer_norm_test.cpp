// LayerNorm specifics (spec §3): per-sample statistics, identical in train and eval, batch size 1.
#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "variants/layer_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

TEST(LayerNorm, MatchesTheFormulaPerSampleWithPerChannelAffine) {
    LayerNorm<double> ln(5);
    testing::randomize_parameters(ln);
    const ArrayD x = random_array({3, 5, 4}, 1, 2.0, 3.0);
    const ArrayD y = ln.forward(x, Mode::train);
    auto params = ln.parameters();
    for (std::size_t n = 0; n < 3; ++n) {
        double mean = 0, var = 0;
        for (std::size_t i = 0; i < 20; ++i)
            mean += x.data()[n * 20 + i] / 20;
        for (std::size_t i = 0; i < 20; ++i)
            var += std::pow(x.data()[n * 20 + i] - mean, 2) / 20;
        for (std::size_t i = 0; i < 20; ++i) {
            const std::size_t c = i / 4;
            const double expected =
                (x.data()[n * 20 + i] - mean) / std::sqrt(var + 1e-5) * (*params[0].value)(c) +
                (*params[1].value)(c);
            EXPECT_NEAR(y.data()[n * 20 + i], expected, 1e-12);
        }
    }
}

TEST(LayerNorm, TrainAndEvalAreTheSameComputation) {
    LayerNorm<double> ln(4);
    const ArrayD x = random_array({3, 4, 2, 2}, 2);
    EXPECT_EQ(ln.forward(x, Mode::train, Grad::none), ln.forward(x, Mode::eval, Grad::none));
    EXPECT_TRUE(ln.buffers().empty());
}

TEST(LayerNorm, BatchOfOneDenseInputWorks) {
    LayerNorm<double> ln(7);
    testing::randomize_parameters(ln);
    testing::expect_gradients_match(
        testing::check_gradients(ln, random_array({1, 7}, 3), Mode::train));
}

}  // namespace
}  // namespace normlab
