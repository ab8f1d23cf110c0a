// Standardization invariants, and numerical stability: input with mean 1e4 and std 1 must
// normalize to mean 0 / std 1 within 1e-3 in float (no E[x²]−E[x]² cancellation).
#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"
#include "set_stats.hpp"

namespace normlab {
namespace {

struct Case {
    std::string spec;
    SetSpec sets;
};

void PrintTo(const Case& c, std::ostream* os) {
    *os << c.spec;
}

constexpr std::size_t kChannels = 6;

class Invariants : public ::testing::TestWithParam<Case> {};

TEST_P(Invariants, EachSetHasZeroMeanAndUnitVariance) {
    auto norm = make_normalizer<double>(GetParam().spec, kChannels);
    for (const Shape& shape : {Shape{16, kChannels, 5}, Shape{4, kChannels, 3, 7}}) {
        const auto x = testing::random_array(shape, 1, -3.0, 4.0);
        const auto stats =
            testing::set_stats(norm->forward(x, Mode::train, Grad::none), GetParam().sets);
        for (std::size_t k = 0; k < stats.mean.size(); ++k) {
            EXPECT_NEAR(stats.mean[k], 0.0, 1e-12) << "set " << k;
            EXPECT_NEAR(stats.var[k], 1.0, 1e-5) << "set " << k;  // σ²/(σ²+ε)
        }
    }
}

TEST_P(Invariants, LargeMeanNormalizesInFloat) {
    auto norm = make_normalizer<float>(GetParam().spec, kChannels);
    const Shape shape{8, kChannels, 6, 6};
    const Array<float> x = xt::cast<float>(testing::random_array(shape, 2, 1e4, 1.0));
    const auto stats =
        testing::set_stats(norm->forward(x, Mode::train, Grad::none), GetParam().sets);
    for (std::size_t k = 0; k < stats.mean.size(); ++k) {
        EXPECT_NEAR(stats.mean[k], 0.0, 1e-3) << "set " << k;
        EXPECT_NEAR(std::sqrt(stats.var[k]), 1.0, 1e-3) << "set " << k;
    }
}

INSTANTIATE_TEST_SUITE_P(
    CentredVariants, Invariants,
    ::testing::Values(Case{"batch_norm(affine=false)", SetSpec{true, 1}},
                      Case{"layer_norm(affine=false)", SetSpec{false, kChannels}},
                      Case{"instance_norm", SetSpec{false, 1}},
                      Case{"group_norm(groups=3,affine=false)", SetSpec{false, 2}},
                      Case{"group_norm(groups=6,affine=false)", SetSpec{false, 1}}),
    [](const auto& info) { return "case" + std::to_string(info.index); });

}  // namespace
}  // namespace normlab
