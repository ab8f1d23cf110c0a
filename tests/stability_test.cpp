// Standardization invariants, and numerical stability: input with mean 1e4 and std 1 must
// normalize to mean 0 / std 1 within 1e-3 in float (no E[x²]−E[x]² cancellation).
#include <gtest/gtest.h>

#include <cmath>

#include <omp.h>

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"
#include "normlab/runtime.hpp"
#include "set_stats.hpp"
#include "thread_count.hpp"

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

// A float output against the same layer's in double: the largest |y − reference|, and one unit
// in the last place of float at the largest |reference|.
struct FloatError {
    double worst = 0;
    double ulp = 0;
};

FloatError float_error(const Array<float>& y, const Array<double>& reference) {
    double worst = 0, largest = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
        worst = std::max(worst, std::abs(double(y.data()[i]) - reference.data()[i]));
        largest = std::max(largest, std::abs(reference.data()[i]));
    }
    return {worst, std::nextafter(float(largest), 1e30f) - float(largest)};
}

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

// Every set's first value 30 among standard normal values, float input against the same layer
// in double on the same values: each set's sums are taken partly in float, shifted by the mean
// of the set's first values (kernels::set_shift; down a column of rows, column_shifts), so an
// outlying first value costs no digits. Shifted by that value alone, the squares of the
// deviations in float lost digits as (d² + σ²)/σ²: y was off by up to 2.3e-05 on these shapes
// (BatchNorm on rows; 2.7e-06 to 6.4e-06 for LayerNorm, InstanceNorm and GroupNorm on feature
// maps), now by at most 1.1e-06, where one unit in the last place of the largest |y| is 4.8e-07.
TEST_P(Invariants, AnOutlyingFirstValueCostsNoDigits) {
    const SetSpec& sets = GetParam().sets;
    for (const Shape& shape : {Shape{8, kChannels, 6, 6}, Shape{64, 8 * kChannels}}) {
        const bool rows = shape.size() == 2;
        if (rows && GetParam().spec == "instance_norm") continue;
        Array<float> x = xt::cast<float>(testing::random_array(shape, 3, 0.0, 1.0));
        // The first value of every set: of every run of a feature map; on rows, row 0 (each
        // column's first value) for sets over the batch, else the first of every set's
        // channels (as many sets per row as on kChannels channels).
        const bool columns = rows && sets.across_batch;
        const std::size_t step =
            !rows ? shape[2] * shape[3]
                  : (columns ? x.size() : shape[1] / (kChannels / sets.channels_per_set));
        for (std::size_t i = 0; i < x.size(); i += step)
            for (std::size_t j = i; j < i + (columns ? shape[1] : 1); ++j)
                x.data()[j] = 30.0f;
        const Array<float> y =
            make_normalizer<float>(GetParam().spec, shape[1])->forward(x, Mode::train, Grad::none);
        const Array<double> reference = make_normalizer<double>(GetParam().spec, shape[1])
                                            ->forward(xt::cast<double>(x), Mode::train, Grad::none);
        // Three units in the last place of the largest |y|: the roundings of x − μ, of 1/σ and
        // of their product give up to half of one each, μ's and σ²'s a little more.
        const FloatError error = float_error(y, reference);
        EXPECT_LT(error.worst, 3 * error.ulp) << format_shape(shape);
    }
}

// Input far from zero mean, float against the same layer in double: each set's mean is rounded
// to float, by up to half of float's spacing at 100 (3.8e-06), which over σ = 2 moved y by up to
// 2.4e-06 on these shapes (γ up to 1.125), where one unit in the last place of the largest |y|
// is 2.4e-07 or 4.8e-07. Where γ and β are one value per run of the set (sets over the batch;
// per-sample sets on feature maps) the layers take that rounding into β
// (kernels::beta_for_mean), and y is off by its own roundings only, x̂'s, 1/σ's and the final
// ones. Within 2 units in the last place of the largest |y|.
void expect_mean_far_from_zero_costs_no_digits(const std::string& spec, const Shape& shape) {
    const Array<double> x64 = testing::random_array(shape, 5, 100.0, 2.0);
    const Array<float> x = xt::cast<float>(x64);
    auto norm = make_normalizer<float>(spec, shape[1]);
    auto twin = make_normalizer<double>(spec, shape[1]);
    for (std::size_t c = 0; c < shape[1] && !norm->parameters().empty(); ++c) {
        // Affine parameters away from 1 and 0, the same values in both.
        const double g = 0.75 + 0.125 * double(c % 4), b = -0.5 + 0.25 * double(c % 3);
        (*norm->parameters()[0].value)(c) = float(g);
        (*norm->parameters()[1].value)(c) = float(b);
        (*twin->parameters()[0].value)(c) = g;
        (*twin->parameters()[1].value)(c) = b;
    }
    const Array<float> y = norm->forward(x, Mode::train, Grad::none);
    const Array<double> reference = twin->forward(xt::cast<double>(x), Mode::train, Grad::none);
    const FloatError error = float_error(y, reference);
    EXPECT_LT(error.worst, 2 * error.ulp)
        << spec << " on " << format_shape(shape) << ", " << omp_get_max_threads() << " threads";
}

// At most 4.3e-07 here (2.9e-07 on the rows).
TEST(Stability, AMeanFarFromZeroCostsSetsOverTheBatchNoDigits) {
    for (const char* spec : {"batch_norm", "batch_renorm(rmax=1,dmax=0)"})
        for (const Shape& shape : {Shape{64, 48}, Shape{16, 6, 7, 7}, Shape{3, 6, 500}})
            expect_mean_far_from_zero_costs_no_digits(spec, shape);
}

// Per-sample sets on feature maps, on every path of the forward: in cache InstanceNorm's sets a
// chunk of runs at a time and the other layers' sets one by one; out of cache (a last-level cache
// of 64 KiB planned for) each set's runs written while the next set is summed; and at a batch of
// one on two threads, where the threads share the one set's runs. At most 4.6e-07 (1.4-2.4e-06
// without the rounding taken into β).
TEST(Stability, AMeanFarFromZeroCostsPerSampleSetsOnFeatureMapsNoDigits) {
    const std::size_t previous = last_level_cache_bytes();
    for (const std::size_t planned : {std::size_t{32} << 20, std::size_t{64} << 10})
        for (const int threads : {1, 2}) {
            set_last_level_cache_bytes(planned);
            testing::ThreadCount team(threads);
            for (const char* spec : {"instance_norm(affine=true)", "instance_norm",
                                     "group_norm(groups=3)", "group_norm(groups=1)", "layer_norm"})
                for (const Shape& shape : {Shape{16, 6, 7, 7}, Shape{3, 6, 500}, Shape{1, 6, 6000}})
                    expect_mean_far_from_zero_costs_no_digits(spec, shape);
        }
    set_last_level_cache_bytes(previous);
}

// Per-sample sets on (N, C) rows, whose γ and β vary within a set, take the rounding as an offset
// of x̂ in y (kernels::offset_for_mean), on every path: rows of a multiple of sixteen values (their
// sums as lane pairs, four sets finished together, and the two left at the end of 66), rows of
// other lengths (summed while the sets before are written), GroupNorm's short sets of 8 and 16
// values (four sets at a time, the rest one by one) and sets of 10 and of 5 (too short to fuse),
// on 1 and 2 threads. At most 4.7e-07 (2.5e-06 to 1.0e-05 without the offset).
TEST(Stability, AMeanFarFromZeroCostsPerSampleSetsOnRowsNoDigits) {
    struct RowsCase {
        const char* spec;
        Shape shape;
    };
    for (const int threads : {1, 2}) {
        testing::ThreadCount team(threads);
        for (const RowsCase& c :
             {RowsCase{"layer_norm", {64, 48}}, RowsCase{"layer_norm", {64, 40}},
              RowsCase{"layer_norm", {66, 48}}, RowsCase{"layer_norm", {1024, 48}},
              RowsCase{"layer_norm", {1024, 40}}, RowsCase{"group_norm(groups=6)", {64, 48}},
              RowsCase{"group_norm(groups=3)", {64, 48}},
              RowsCase{"group_norm(groups=4)", {64, 40}},
              RowsCase{"group_norm(groups=8)", {64, 40}}})
            expect_mean_far_from_zero_costs_no_digits(c.spec, c.shape);
    }
}

// dx of a layer whose input lies far from zero mean, against its double twin on the same float
// input and gradient, in units of the float spacing at dx's largest magnitude.
// With keep_input the layer is handed its input (forward(Array&&)), which LayerNorm keeps instead
// of x̂ and forms x̂ from again in backward.
double backward_error_in_ulps(const std::string& spec, const Shape& shape, bool keep_input) {
    const Array<double> x64 = testing::random_array(shape, 5, 100.0, 2.0);
    const Array<double> dy64 = testing::random_array(shape, 6, 0.0, 1.0);
    const Array<float> x = xt::cast<float>(x64), dy = xt::cast<float>(dy64);
    auto norm = make_normalizer<float>(spec, shape[1]);
    auto twin = make_normalizer<double>(spec, shape[1]);
    if (keep_input)
        norm->forward(Array<float>(x), Mode::train, Grad::keep);
    else
        norm->forward(x, Mode::train, Grad::keep);
    twin->forward(xt::cast<double>(x), Mode::train, Grad::keep);
    const FloatError error = float_error(norm->backward(dy), twin->backward(xt::cast<double>(dy)));
    return error.worst / error.ulp;
}

// Per-sample sets on rows form y from x̂ + o, o the rounding of the set's float mean,
// (μ − μ_f)·s (offset_for_mean), on every forward path: GroupNorm's short sets four at a time,
// sets of a multiple of sixteen (lane pairs), other lengths, the last group of each thread; the
// backward takes o into each set's coefficients, with x̂ stored or formed again from a kept input
// (LayerNorm). Left out, it reaches dx as s² times the rounding, and 1/σ of GroupNorm(32)'s sets
// of 16-32 values varies by a factor of several: 4-25 ulp of dx's largest magnitude here
// (LayerNorm on rows of 40: 6.3); with it, at most 1.5.
TEST(Stability, AMeanFarFromZeroCostsPerSampleSetsOnRowsNoDigitsInBackward) {
    for (const int threads : {1, 2}) {
        testing::ThreadCount team(threads);
        for (const auto& [spec, shape] :
             {std::pair{"group_norm(groups=32)", Shape{512, 512}},
              std::pair{"group_norm(groups=32)", Shape{256, 1024}},
              std::pair{"group_norm(groups=32)", Shape{256, 768}},
              std::pair{"group_norm(groups=4)", Shape{256, 512}},
              std::pair{"group_norm(groups=6)", Shape{256, 60}},
              std::pair{"layer_norm", Shape{256, 1024}}, std::pair{"layer_norm", Shape{512, 40}}})
            for (const bool keep_input : {false, true})
                EXPECT_LT(backward_error_in_ulps(spec, shape, keep_input), 2.0)
                    << spec << " on " << format_shape(shape) << ", " << threads << " threads"
                    << (keep_input ? ", input kept" : "");
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
