// RMSNorm specifics (spec §8.1): PyTorch's formula, no centring, machine-epsilon default.
#include <limits>

#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "variants/rms_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

TEST(RmsNorm, MatchesPyTorchFormulaWithMachineEpsilon) {
    RmsNorm<float> rms(3);
    const Tensor x = {{0.5f, -1.0f, 2.0f}, {1e-4f, 0.f, -1e-4f}};
    const Tensor y = rms.forward(x, Mode::train, Grad::none);
    for (std::size_t n = 0; n < 2; ++n) {
        double ms = 0;
        for (std::size_t c = 0; c < 3; ++c)
            ms += double(x(n, c)) * x(n, c) / 3;
        const double r = std::sqrt(ms + double(std::numeric_limits<float>::epsilon()));
        for (std::size_t c = 0; c < 3; ++c)
            EXPECT_NEAR(y(n, c), x(n, c) / r, 1e-6);
    }
    EXPECT_NE(rms.spec().find("eps=none"), std::string::npos);
}

TEST(RmsNorm, OutputHasUnitRootMeanSquareAndIsScaleInvariantButNotShiftInvariant) {
    RmsNorm<double> rms(4, {.eps = 1e-12});
    const ArrayD x = random_array({3, 4, 5}, 1, 1.0, 2.0);
    const ArrayD y = rms.forward(x, Mode::train, Grad::none);
    for (std::size_t n = 0; n < 3; ++n) {
        double ms = 0;
        for (std::size_t i = 0; i < 20; ++i)
            ms += y.data()[n * 20 + i] * y.data()[n * 20 + i];
        EXPECT_NEAR(ms / 20, 1.0, 1e-9);
    }
    EXPECT_TRUE(xt::allclose(rms.forward(ArrayD(3.0 * x), Mode::train, Grad::none), y, 1e-9));
    EXPECT_FALSE(xt::allclose(rms.forward(ArrayD(x + 1.0), Mode::train, Grad::none), y, 1e-3));
}

TEST(RmsNorm, BiasNeedsAffine) {
    EXPECT_THROW(RmsNorm<float>(4, {.affine = false, .bias = true}), OptionError);
    EXPECT_EQ(RmsNorm<float>(4).parameters().size(), 1u);
    EXPECT_EQ(RmsNorm<float>(4, {.bias = true}).parameters().size(), 2u);
}

}  // namespace
}  // namespace normlab
