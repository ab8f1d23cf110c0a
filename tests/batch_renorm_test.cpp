// Batch Renormalization (spec §2): Algorithm 1 with the §4 schedule, checked against a reference
// written here from the paper, the BatchNorm special case bit for bit, clipping, gradients with r
// and d held fixed, eval mode, state, and bad input.
#include <algorithm>
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "kernels/moments.hpp"
#include "normlab/normlab.hpp"
#include "normlab/state_snapshot.hpp"
#include "variants/batch_norm.hpp"
#include "variants/batch_renorm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

// A batch whose channel c has mean means[c] and standard deviation stds[c].
ArrayD shifted_batch(const Shape& shape, unsigned seed, const std::vector<double>& means,
                     const std::vector<double>& stds) {
    ArrayD x = random_array(shape, seed);
    const std::size_t c_count = shape[1], s = x.size() / (shape[0] * c_count);
    for (std::size_t i = 0; i < x.size(); ++i) {
        const std::size_t c = (i / s) % c_count;
        x.data()[i] = means[c] + stds[c] * x.data()[i];
    }
    return x;
}

// Per channel mean and biased variance, two passes.
struct ChannelStats {
    std::vector<double> mean, var;
};
ChannelStats channel_stats(const ArrayD& x) {
    const std::size_t n = x.shape()[0], c_count = x.shape()[1], s = x.size() / (n * c_count);
    ChannelStats st{std::vector<double>(c_count, 0.0), std::vector<double>(c_count, 0.0)};
    for (std::size_t i = 0; i < x.size(); ++i)
        st.mean[(i / s) % c_count] += x.data()[i];
    for (auto& m : st.mean)
        m /= double(n * s);
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double d = x.data()[i] - st.mean[(i / s) % c_count];
        st.var[(i / s) % c_count] += d * d;
    }
    for (auto& v : st.var)
        v /= double(n * s);
    return st;
}

// Paper, Algorithm 1, one channel at a time, with the moving averages it keeps.
struct Algorithm1 {
    double eps, alpha;
    std::vector<double> mu, sigma;  // moving mean, moving std
    std::vector<double> r, d;       // of the last step

    ArrayD train_step(const ArrayD& x, const ArrayD& gamma, const ArrayD& beta, double rmax,
                      double dmax) {
        const std::size_t c_count = x.shape()[1], s = x.size() / (x.shape()[0] * c_count);
        const ChannelStats st = channel_stats(x);
        r.assign(c_count, 0);
        d.assign(c_count, 0);
        ArrayD y = ArrayD::from_shape(x.shape());
        for (std::size_t c = 0; c < c_count; ++c) {
            const double sigma_b = std::sqrt(eps + st.var[c]);
            r[c] = std::min(std::max(sigma_b / sigma[c], 1.0 / rmax), rmax);
            d[c] = std::min(std::max((st.mean[c] - mu[c]) / sigma[c], -dmax), dmax);
        }
        for (std::size_t i = 0; i < x.size(); ++i) {
            const std::size_t c = (i / s) % c_count;
            const double sigma_b = std::sqrt(eps + st.var[c]);
            const double xhat = (x.data()[i] - st.mean[c]) / sigma_b * r[c] + d[c];
            y.data()[i] = gamma(c) * xhat + beta(c);
        }
        for (std::size_t c = 0; c < c_count; ++c) {
            mu[c] += alpha * (st.mean[c] - mu[c]);
            sigma[c] += alpha * (std::sqrt(eps + st.var[c]) - sigma[c]);
        }
        return y;
    }

    // The chain rule of spec §2.2, term by term, with r and d constants.
    ArrayD backward(const ArrayD& x, const ArrayD& dy, const ArrayD& gamma) const {
        const std::size_t n = x.shape()[0], c_count = x.shape()[1], s = x.size() / (n * c_count);
        const double m = double(n * s);
        const ChannelStats st = channel_stats(x);
        std::vector<double> d_sigma(c_count, 0), d_mu(c_count, 0);
        for (std::size_t i = 0; i < x.size(); ++i) {
            const std::size_t c = (i / s) % c_count;
            const double sigma_b = std::sqrt(eps + st.var[c]);
            const double dxhat = dy.data()[i] * gamma(c);
            d_sigma[c] += dxhat * (x.data()[i] - st.mean[c]) * (-r[c] / (sigma_b * sigma_b));
            d_mu[c] += dxhat * (-r[c] / sigma_b);
        }
        ArrayD dx = ArrayD::from_shape(x.shape());
        for (std::size_t i = 0; i < x.size(); ++i) {
            const std::size_t c = (i / s) % c_count;
            const double sigma_b = std::sqrt(eps + st.var[c]);
            dx.data()[i] = dy.data()[i] * gamma(c) * r[c] / sigma_b +
                           d_sigma[c] * (x.data()[i] - st.mean[c]) / (m * sigma_b) + d_mu[c] / m;
        }
        return dx;
    }
};

// The paper's relaxation with linear ramps, written from spec §2.3.
double schedule_rmax(std::int64_t t, std::int64_t warmup, std::int64_t end, double final_rmax) {
    if (t <= warmup) return 1.0;
    return 1.0 + (final_rmax - 1.0) * std::min(1.0, double(t - warmup) / double(end - warmup));
}
double schedule_dmax(std::int64_t t, std::int64_t warmup, std::int64_t end, double final_dmax) {
    if (t <= warmup) return 0.0;
    return final_dmax * std::min(1.0, double(t - warmup) / double(end - warmup));
}

// "3x4x5": a shape as part of a recorded property name.
std::string shape_key(const Shape& shape) {
    std::string key;
    for (auto d : shape) {
        if (!key.empty()) key += 'x';
        key += std::to_string(d);
    }
    return key;
}

double max_abs_diff(const ArrayD& a, const ArrayD& b) {
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
    return m;
}

TEST(BatchRenorm, BatchRenormWithUnitClipEqualsBatchNorm) {
    // rmax = 1, dmax = 0 for every step, and the default schedule inside its warm-up.
    const BatchRenormOptions unit{
        .rmax = 1, .dmax = 0, .warmup = 0, .rmax_steps = 0, .dmax_steps = 0};
    for (const BatchRenormOptions& options : {unit, BatchRenormOptions{}}) {
        for (const Shape& shape : {Shape{8, 5}, Shape{4, 5, 3, 3}, Shape{3, 5, 7}}) {
            BatchRenorm<float> renorm(5, options);
            BatchNorm<float> bn(5);
            auto pr = renorm.parameters();
            auto pb = bn.parameters();
            for (std::size_t i = 0; i < pr.size(); ++i) {
                *pr[i].value = xt::cast<float>(random_array({5}, 40 + unsigned(i), 1.0, 0.5));
                *pb[i].value = *pr[i].value;
            }
            for (unsigned step = 0; step < 4; ++step) {
                // Moving statistics drift away from the batches, so r, d would not be 1, 0.
                const Tensor x =
                    xt::cast<float>(random_array(shape, 50 + step, 3.0 * step - 2.0, 0.5 + step));
                const Tensor dy = xt::cast<float>(random_array(shape, 60 + step));
                EXPECT_EQ(renorm.forward(x, Mode::train), bn.forward(x, Mode::train));
                EXPECT_EQ(renorm.backward(dy), bn.backward(dy));
                EXPECT_EQ(renorm.forward(x, Mode::train, Grad::none),
                          bn.forward(x, Mode::train, Grad::none));
            }
            for (std::size_t i = 0; i < pr.size(); ++i)
                EXPECT_EQ(*pr[i].grad, *pb[i].grad);
            EXPECT_EQ(renorm.step(), 8);
        }
    }
}

// Handed over, the input is kept instead of x̂ and backward forms x̂ again from it; d, which y
// adds to x̂, enters dγ through Σdy. Both ways must give the same bits, with r and d away from 1
// and 0, on the kernels' paths: dense (N, C) with columns past the last vector, and channel runs
// short and long.
template <class T>
void expect_handing_over_gives_the_same_bits() {
    const BatchRenormOptions active{.warmup = 0, .rmax_steps = 0, .dmax_steps = 0};
    for (const Shape& shape :
         {Shape{8, 5}, Shape{64, 37}, Shape{4, 5, 3, 3}, Shape{3, 5, 7}, Shape{4, 5, 300}}) {
        BatchRenorm<T> kept(shape[1], active), handed(shape[1], active);
        auto pk = kept.parameters();
        auto ph = handed.parameters();
        for (std::size_t i = 0; i < pk.size(); ++i) {
            *pk[i].value = xt::cast<T>(random_array({shape[1]}, 70 + unsigned(i), 1.0, 0.5));
            *ph[i].value = *pk[i].value;
        }
        for (unsigned step = 0; step < 3; ++step) {
            const Mode mode = step < 2 ? Mode::train : Mode::eval;
            // Batches far from the moving statistics (0 and 1 at first): r and d are clipped at
            // first and inside their limits after.
            const Array<T> x =
                xt::cast<T>(random_array(shape, 80 + step, 1.5 - step, 1.0 + 0.5 * step));
            Array<T> copy = x;
            EXPECT_EQ(kept.forward(x, mode), handed.forward(std::move(copy), mode))
                << format_shape(shape) << " step " << step;
            const Array<T> dy = xt::cast<T>(random_array(shape, 90 + step));
            EXPECT_EQ(kept.backward(dy), handed.backward(dy))
                << format_shape(shape) << " step " << step;
            for (std::size_t i = 0; i < pk.size(); ++i)
                EXPECT_EQ(*pk[i].grad, *ph[i].grad) << pk[i].name << " " << format_shape(shape);
        }
        EXPECT_EQ(handed.saved_contexts(), 0u);
        EXPECT_EQ(handed.moving_mean(), kept.moving_mean());
        EXPECT_EQ(handed.moving_std(), kept.moving_std());
    }
}

TEST(BatchRenorm, HandingOverTheInputGivesTheSameBitsWithRAndDActive) {
    expect_handing_over_gives_the_same_bits<float>();
    expect_handing_over_gives_the_same_bits<double>();
}

TEST(BatchRenorm, ForwardMatchesAlgorithm1OverTheSchedule) {
    const BatchRenormOptions options{
        .momentum = 0.2, .rmax = 3, .dmax = 2, .warmup = 2, .rmax_steps = 8, .dmax_steps = 5};
    const Shape shape{6, 3, 2};
    BatchRenorm<double> layer(3, options);
    testing::randomize_parameters(layer);
    auto params = layer.parameters();
    Algorithm1 ref{options.eps, options.momentum, {0, 0, 0}, {1, 1, 1}, {}, {}};
    int clipped_r = 0, free_r = 0, clipped_d = 0, free_d = 0;
    for (std::int64_t t = 0; t < 11; ++t) {
        const double rmax = schedule_rmax(t, 2, 8, 3), dmax = schedule_dmax(t, 2, 5, 2);
        const RenormClip clip = layer.clip();
        EXPECT_NEAR(clip.rmax, rmax, 1e-15) << "step " << t;
        EXPECT_NEAR(clip.rmin, 1.0 / rmax, 1e-15) << "step " << t;
        EXPECT_NEAR(clip.dmax, dmax, 1e-15) << "step " << t;
        // Batches that wander in mean and spread, so the limits bind on some steps only.
        const double k = double(t);
        const ArrayD x =
            shifted_batch(shape, 100 + unsigned(t), {2.5 * std::sin(k), -1.0 + 0.4 * k, 0.3},
                          {0.4 + 0.5 * k, 2.0, 1.0 / (1.0 + k)});
        const ArrayD y = layer.forward(x, Mode::train);
        const ArrayD y_ref = ref.train_step(x, *params[0].value, *params[1].value, rmax, dmax);
        EXPECT_LT(max_abs_diff(y, y_ref), 1e-12) << "step " << t;
        for (std::size_t c = 0; c < 3; ++c) {
            EXPECT_NEAR(layer.moving_mean()(c), ref.mu[c], 1e-13) << "step " << t;
            EXPECT_NEAR(layer.moving_std()(c), ref.sigma[c], 1e-13) << "step " << t;
            if (t <= options.warmup) continue;
            ++(ref.r[c] == rmax || ref.r[c] == 1.0 / rmax ? clipped_r : free_r);
            ++(std::abs(ref.d[c]) == dmax ? clipped_d : free_d);
        }
        // The backward of the same step against the paper's term-by-term chain rule.
        const ArrayD dy = random_array(shape, 200 + unsigned(t));
        const ArrayD dx = layer.backward(dy);
        EXPECT_LT(max_abs_diff(dx, ref.backward(x, dy, *params[0].value)), 1e-11) << "step " << t;
    }
    EXPECT_EQ(layer.step(), 11);
    // The comparison covered both clipped and free corrections after warm-up.
    EXPECT_GT(clipped_r, 0);
    EXPECT_GT(free_r, 0);
    EXPECT_GT(clipped_d, 0);
    EXPECT_GT(free_d, 0);
}

// The per-channel work of a training step runs in vectors of channels: on 19 channels of float
// (two vectors of eight and a tail), r, d and the moving averages are the scalar formulas' bits,
// with r and d clipped on some channels and free on others.
TEST(BatchRenorm, PerChannelCorrectionsOnManyChannelsAreTheScalarFormulas) {
    constexpr std::size_t kChannels = 19;
    BatchRenorm<float> layer(
        kChannels,
        {.momentum = 0.3, .rmax = 1.5, .dmax = 0.5, .warmup = 0, .rmax_steps = 0, .dmax_steps = 0});
    auto params = layer.parameters();
    for (std::size_t c = 0; c < kChannels; ++c) {
        (*params[0].value)(c) = 0.5f + 0.1f * float(c % 5);
        (*params[1].value)(c) = -0.2f + 0.05f * float(c % 4);
    }
    const Shape shape{12, kChannels, 3};
    std::vector<double> means(kChannels), spreads(kChannels);
    for (std::size_t c = 0; c < kChannels; ++c) {
        means[c] = 1.5 * std::sin(double(c));
        spreads[c] = 0.3 + 0.25 * double(c % 7);
    }
    layer.forward(Array<float>(xt::cast<float>(shifted_batch(shape, 31, means, spreads))),
                  Mode::train, Grad::none);
    for (std::size_t c = 0; c < kChannels; ++c)
        means[c] = -means[c] + 0.1 * double(c % 3);
    const Array<float> x = xt::cast<float>(shifted_batch(shape, 32, means, spreads));
    const Array<float> moving_mean = layer.moving_mean(), moving_std = layer.moving_std();
    const NcsView v{shape[0], shape[1], shape[2]};
    std::vector<float> batch_mean(kChannels), batch_var(kChannels);
    std::vector<double> residual(kChannels);
    kernels::collect_moments(x.data(), v, SetSpec{true, 1}, true, batch_mean.data(),
                             batch_var.data(), residual.data());
    const double eps = layer.options().eps;
    const RenormClip clip = layer.clip();
    std::vector<float> shift(kChannels), scale(kChannels), offset(kChannels), beta(kChannels);
    Array<float> expected_mean = moving_mean, expected_std = moving_std;
    int clipped_r = 0, clipped_d = 0;
    for (std::size_t c = 0; c < kChannels; ++c) {
        const double sigma_b = std::sqrt(double(batch_var[c]) + eps);
        const RenormCorrection k = renorm_correction(
            double(batch_mean[c]), sigma_b, double(moving_mean(c)), double(moving_std(c)), clip);
        clipped_r += k.r == clip.rmin || k.r == clip.rmax;
        clipped_d += std::abs(k.d) == clip.dmax;
        shift[c] = batch_mean[c];
        scale[c] = float(k.r / sigma_b);
        offset[c] = float(k.d);
        // β less what rounding the batch mean to float took off x̂·γ.
        beta[c] = float(double((*params[1].value)(c)) -
                        residual[c] * double(scale[c]) * double((*params[0].value)(c)));
        renorm_update_moving(expected_mean(c), expected_std(c), double(batch_mean[c]), sigma_b,
                             0.3);
    }
    EXPECT_GT(clipped_r, 0);
    EXPECT_LT(clipped_r, int(kChannels));
    EXPECT_GT(clipped_d, 0);
    EXPECT_LT(clipped_d, int(kChannels));
    Array<float> expected_y = Array<float>::from_shape(shape);
    kernels::normalize_affine(x.data(), v, SetSpec{true, 1}, shift.data(), scale.data(),
                              offset.data(), params[0].value->data(), beta.data(),
                              static_cast<float*>(nullptr), expected_y.data());
    const Array<float> y = layer.forward(x, Mode::train, Grad::none);
    EXPECT_EQ(y, expected_y);
    EXPECT_EQ(layer.moving_mean(), expected_mean);
    EXPECT_EQ(layer.moving_std(), expected_std);
}

TEST(BatchRenorm, ClippingEngagesOnShiftedBatches) {
    // Final limits from the first step: r in [1/3, 3], d in [-5, 5]; γ = 1, β = 0, so the
    // output of a channel has mean d and standard deviation r·σ/σ_B.
    BatchRenorm<double> layer(2, {.warmup = 0, .rmax_steps = 0, .dmax_steps = 0});
    const Shape shape{16, 2, 4};
    // Channel 0 far above the moving statistics (mean 0, std 1), channel 1 far below and narrow.
    const ArrayD x = shifted_batch(shape, 7, {20.0, -30.0}, {10.0, 0.01});
    const ChannelStats st = channel_stats(x);
    const ArrayD y = layer.forward(x, Mode::train, Grad::none);
    const ChannelStats out = channel_stats(y);
    const double expected_r[] = {3.0, 1.0 / 3.0}, expected_d[] = {5.0, -5.0};
    for (std::size_t c = 0; c < 2; ++c) {
        const double raw_r = std::sqrt(st.var[c] + 1e-5) / 1.0, raw_d = st.mean[c] / 1.0;
        EXPECT_TRUE(raw_r > 3.0 || raw_r < 1.0 / 3.0) << "channel " << c << " raw r " << raw_r;
        EXPECT_GT(std::abs(raw_d), 5.0) << "channel " << c;
        const double r = std::sqrt(out.var[c]) * std::sqrt(st.var[c] + 1e-5) / std::sqrt(st.var[c]);
        EXPECT_NEAR(out.mean[c], expected_d[c], 1e-12) << "channel " << c;
        EXPECT_NEAR(r, expected_r[c], 1e-9) << "channel " << c;
    }

    // The same batch inside the default warm-up is plain BatchNorm: mean 0, unit spread.
    BatchRenorm<double> warm(2);
    const ChannelStats bn = channel_stats(warm.forward(x, Mode::train, Grad::none));
    for (std::size_t c = 0; c < 2; ++c) {
        EXPECT_NEAR(bn.mean[c], 0.0, 1e-12);
        EXPECT_NEAR(bn.var[c], st.var[c] / (st.var[c] + 1e-5), 1e-12);
    }
}

void set_moving(BatchRenorm<double>& layer, double mean, double stddev) {
    for (auto& b : layer.buffers())
        b.value->fill(b.name == "moving_mean" ? mean : stddev);
}

TEST(BatchRenorm, GradientsMatchFiniteDifferencesWhereClippingHoldsRAndDFixed) {
    // Moving std 0.05 and mean 10 against batches of std ~2 and mean ~0.5: every r is clipped
    // to r_max and every d to -d_max, so small perturbations of x leave them unchanged and the
    // finite differences of the layer itself measure the stop-gradient derivative.
    for (const Shape& shape : {Shape{6, 4}, Shape{5, 4, 7}, Shape{3, 4, 3, 5}}) {
        BatchRenorm<double> layer(4, {.warmup = 0, .rmax_steps = 0, .dmax_steps = 0});
        testing::randomize_parameters(layer);
        set_moving(layer, 10.0, 0.05);
        const StateSnapshot<BasicNormalizer<double>> state(layer);
        const auto errors = testing::check_gradients(
            [&](const ArrayD& in, bool keep) {
                state.restore(layer);
                return layer.forward(in, Mode::train, keep ? Grad::keep : Grad::none);
            },
            [&](const ArrayD& dy) { return layer.backward(dy); }, layer.parameters(),
            random_array(shape, 11, 0.5, 2.0));
        testing::expect_gradients_match(errors);
        for (const auto& e : errors)
            RecordProperty("clipped_" + shape_key(shape) + "_" + e.tensor, format_value(e.error));
    }
}

TEST(BatchRenorm, GradientsMatchFiniteDifferencesWithRAndDHeldFixed) {
    // r and d strictly inside their limits: finite differences of Algorithm 1 with r, d frozen
    // at the values of the unperturbed input (the paper's stop_gradient).
    for (const Shape& shape : {Shape{6, 4}, Shape{5, 4, 7}, Shape{3, 4, 3, 5}}) {
        BatchRenorm<double> layer(4, {.warmup = 0, .rmax_steps = 0, .dmax_steps = 0});
        testing::randomize_parameters(layer);
        set_moving(layer, 0.3, 1.5);
        const StateSnapshot<BasicNormalizer<double>> state(layer);
        const ArrayD x = random_array(shape, 12, 0.5, 2.0);
        Algorithm1 frozen{1e-5, 0.01, std::vector<double>(4, 0.3), std::vector<double>(4, 1.5),
                          {},   {}};
        auto params = layer.parameters();
        frozen.train_step(x, *params[0].value, *params[1].value, 3.0, 5.0);
        for (std::size_t c = 0; c < 4; ++c) {
            ASSERT_TRUE(frozen.r[c] > 1.0 / 3.0 && frozen.r[c] < 3.0) << frozen.r[c];
            ASSERT_TRUE(std::abs(frozen.d[c]) < 5.0) << frozen.d[c];
        }
        // y = γ·((x − μ_B)/σ_B·r + d) + β with r, d constants.
        auto reference = [&](const ArrayD& in) {
            const std::size_t s = in.size() / (in.shape()[0] * 4);
            const ChannelStats st = channel_stats(in);
            ArrayD y = ArrayD::from_shape(in.shape());
            for (std::size_t i = 0; i < in.size(); ++i) {
                const std::size_t c = (i / s) % 4;
                const double z = (in.data()[i] - st.mean[c]) / std::sqrt(st.var[c] + 1e-5);
                y.data()[i] =
                    (*params[0].value)(c) * (z * frozen.r[c] + frozen.d[c]) + (*params[1].value)(c);
            }
            return y;
        };
        const auto errors = testing::check_gradients(
            [&](const ArrayD& in, bool keep) {
                if (!keep) return reference(in);
                state.restore(layer);
                const ArrayD y = layer.forward(in, Mode::train);
                EXPECT_LT(max_abs_diff(y, reference(in)), 1e-12);
                return y;
            },
            [&](const ArrayD& dy) { return layer.backward(dy); }, layer.parameters(), x);
        testing::expect_gradients_match(errors);
        for (const auto& e : errors)
            RecordProperty("free_" + shape_key(shape) + "_" + e.tensor, format_value(e.error));
    }
}

TEST(BatchRenorm, EvalModeUsesMovingMeanAndMovingStd) {
    BatchRenorm<double> layer(3, {.momentum = 0.3});
    testing::randomize_parameters(layer);
    for (unsigned step = 0; step < 4; ++step)
        layer.forward(random_array({5, 3, 4}, step, 2.0, 3.0), Mode::train, Grad::none);
    const ArrayD mean = layer.moving_mean(), stddev = layer.moving_std();
    auto params = layer.parameters();
    const ArrayD x = random_array({2, 3, 4}, 9, 1.0, 1.0);
    const ArrayD y = layer.forward(x, Mode::eval, Grad::none);
    for (std::size_t i = 0; i < x.size(); ++i) {
        const std::size_t c = (i / 4) % 3;
        const double expected =
            (*params[0].value)(c) * (x.data()[i] - mean(c)) / stddev(c) + (*params[1].value)(c);
        EXPECT_NEAR(y.data()[i], expected, 1e-12);
    }
    EXPECT_EQ(layer.moving_mean(), mean);
    EXPECT_EQ(layer.moving_std(), stddev);
    EXPECT_EQ(layer.step(), 4);
    // A single sample is fine in eval mode; the gradient is γ·dy/σ.
    EXPECT_NO_THROW(layer.forward(random_array({1, 3}, 3), Mode::eval, Grad::none));
    testing::expect_gradients_match(testing::check_gradients(layer, x, Mode::eval));
}

TEST(BatchRenorm, ScheduleRampsLinearlyFromWarmupToTheFinalSteps) {
    const BatchRenorm<float> layer(4);  // warmup 5000, r_max 3 at 40000, d_max 5 at 25000
    struct Point {
        std::int64_t step;
        double rmax, dmax;
    };
    for (const Point& p :
         {Point{0, 1, 0}, Point{4999, 1, 0}, Point{5000, 1, 0},
          Point{15000, 1 + 2.0 * 10000 / 35000, 5.0 * 10000 / 20000},
          Point{22500, 2, 5.0 * 17500 / 20000}, Point{25000, 1 + 2.0 * 20000 / 35000, 5},
          Point{40000, 3, 5}, Point{1000000, 3, 5}}) {
        const RenormClip clip = layer.clip_at(p.step);
        EXPECT_NEAR(clip.rmax, p.rmax, 1e-15) << p.step;
        EXPECT_NEAR(clip.rmin, 1.0 / p.rmax, 1e-15) << p.step;
        EXPECT_NEAR(clip.dmax, p.dmax, 1e-15) << p.step;
    }
    // rmin is fixed when given (tf.keras renorm_clipping semantics).
    const BatchRenorm<float> keras(4, {.rmin = 0.0});
    EXPECT_EQ(keras.clip_at(0).rmin, 0.0);
    EXPECT_EQ(keras.clip_at(40000).rmin, 0.0);
}

TEST(BatchRenorm, RminOptionLeavesSmallRatiosUnclippedLikeKeras) {
    // A batch 100 times narrower than the moving std: the paper clips r at 1/r_max, rmin = 0
    // (Keras' default) keeps the raw ratio.
    const ArrayD x = shifted_batch({32, 1}, 5, {0.0}, {0.01});
    const double var = channel_stats(x).var[0], raw_r = std::sqrt(var + 1e-5);
    ASSERT_LT(raw_r, 1.0 / 3.0);
    for (const auto& [rmin, expected] : {std::pair{std::optional<double>{}, 1.0 / 3.0},
                                         std::pair{std::optional<double>{0.0}, raw_r}}) {
        BatchRenorm<double> layer(1, {.rmin = rmin, .warmup = 0, .rmax_steps = 0, .dmax_steps = 0});
        const ChannelStats out = channel_stats(layer.forward(x, Mode::train, Grad::none));
        EXPECT_NEAR(std::sqrt(out.var[0]) * raw_r / std::sqrt(var), expected, 1e-9);
    }
}

TEST(BatchRenorm, StepAndMovingStatisticsAreSavedWithTheLayer) {
    auto layer = make_normalizer<double>("batch_renorm(warmup=1,rmax_steps=4,dmax_steps=3)", 3);
    EXPECT_EQ(layer->counters().size(), 1u);
    EXPECT_EQ(layer->counters()[0].name, "step");
    for (unsigned step = 0; step < 3; ++step)
        layer->forward(random_array({4, 3, 2}, step, 1.0 + step, 2.0), Mode::train, Grad::none);
    layer->forward(random_array({4, 3, 2}, 9), Mode::eval, Grad::none);  // eval does not step
    EXPECT_EQ(*layer->counters()[0].value, 3);

    NpzArchive archive;
    write_state(*layer, archive);
    auto restored = make_normalizer<double>(layer->spec(), 3);
    read_state(*restored, archive);
    EXPECT_EQ(*restored->counters()[0].value, 3);
    EXPECT_EQ(dynamic_cast<BatchRenorm<double>&>(*restored).clip().rmax,
              dynamic_cast<BatchRenorm<double>&>(*layer).clip().rmax);
    const ArrayD x = random_array({4, 3, 2}, 10, -2.0, 3.0);
    EXPECT_EQ(restored->forward(x, Mode::train), layer->forward(x, Mode::train));
    EXPECT_EQ(restored->forward(x, Mode::eval), layer->forward(x, Mode::eval));
}

TEST(BatchRenorm, RegistryReadsEveryOption) {
    auto norm = make_normalizer(
        "batch_renorm(eps=1e-3,momentum=0.05,rmax=2,dmax=1,rmin=0.25,warmup=10,rmax_steps=20,"
        "dmax_steps=15,affine=false)",
        6);
    EXPECT_EQ(norm->spec(),
              "batch_renorm(eps=0.001,momentum=0.05,rmax=2,dmax=1,rmin=0.25,warmup=10,"
              "rmax_steps=20,dmax_steps=15,affine=false)");
    const auto& o = dynamic_cast<BatchRenorm<float>&>(*norm).options();
    EXPECT_EQ(o.rmin, 0.25);
    EXPECT_EQ(o.dmax_steps, 15);
    EXPECT_TRUE(norm->parameters().empty());
    EXPECT_EQ(make_normalizer("batch_renorm", 2)->spec(),
              "batch_renorm(eps=1e-05,momentum=0.01,rmax=3,dmax=5,rmin=none,warmup=5000,"
              "rmax_steps=40000,dmax_steps=25000,affine=true)");
}

std::string option_error(const std::string& spec) {
    try {
        make_normalizer(spec, 4);
    } catch (const OptionError& e) {
        return e.what();
    }
    return "no error";
}

TEST(BatchRenorm, ImpossibleOptionsAreRefused) {
    EXPECT_EQ(option_error("batch_renorm(rmax=0.5)"),
              "batch_renorm(4): rmax must be >= 1 (r is clipped to [1/rmax, rmax]), got 0.5");
    EXPECT_EQ(option_error("batch_renorm(dmax=-1)"), "batch_renorm(4): dmax must be >= 0, got -1");
    EXPECT_EQ(option_error("batch_renorm(rmin=1.5)"),
              "batch_renorm(4): rmin must lie in [0, 1] or be none, got 1.5");
    EXPECT_EQ(option_error("batch_renorm(momentum=2)"),
              "batch_renorm(4): momentum must lie in [0, 1], got 2");
    EXPECT_EQ(option_error("batch_renorm(eps=0)"), "batch_renorm(4): eps must be > 0, got 0");
    EXPECT_EQ(option_error("batch_renorm(warmup=-1)"),
              "batch_renorm(4): warmup must be >= 0, got -1");
    EXPECT_EQ(option_error("batch_renorm(warmup=100,rmax_steps=50)"),
              "batch_renorm(4): rmax_steps and dmax_steps must be >= warmup (the ramps start "
              "after warm-up), got warmup=100, rmax_steps=50, dmax_steps=25000");
    EXPECT_EQ(option_error("batch_renorm(rmax_max=3)"),
              "batch_renorm: unknown option 'rmax_max'; valid options: eps, momentum, rmax, dmax, "
              "rmin, warmup, rmax_steps, dmax_steps, affine");
    EXPECT_THROW(BatchRenorm<float>(0), OptionError);
}

TEST(BatchRenorm, BadInputIsRefusedNamingTheLayerAndTheShapes) {
    BatchRenorm<double> layer(4);
    auto message = [&](const Shape& shape, Mode mode) -> std::string {
        try {
            layer.forward(ArrayD::from_shape(shape), mode);
        } catch (const ShapeError& e) {
            return e.what();
        }
        return "no error";
    };
    EXPECT_EQ(message({6, 5, 3}, Mode::train),
              "batch_renorm(4): expected input of shape (N, 4, ...), got (6, 5, 3)");
    EXPECT_EQ(message({4}, Mode::eval),
              "batch_renorm(4): expected input of shape (N, 4, ...), got (4,)");
    EXPECT_EQ(message({0, 4, 2}, Mode::train),
              "batch_renorm(4): expected a non-empty input of shape (N, 4, ...), got (0, 4, 2)");
    EXPECT_EQ(message({1, 4}, Mode::train),
              "batch_renorm(4): expected more than 1 value per channel when training, got input "
              "of shape (1, 4)");
    EXPECT_EQ(layer.step(), 0);
    EXPECT_EQ(layer.saved_contexts(), 0u);

    try {
        layer.backward(ArrayD::from_shape({6, 4}));
        FAIL() << "expected StateError";
    } catch (const StateError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_renorm(4): backward() called without a matching forward() (no saved "
                  "context; was forward run with Grad::none?)");
    }
    layer.forward(random_array({6, 4}, 1), Mode::train);
    try {
        layer.backward(ArrayD::from_shape({5, 4}));
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_renorm(4): expected dy of shape (6, 4) (the shape of the last forward "
                  "input), got (5, 4)");
    }
    EXPECT_EQ(layer.saved_contexts(), 1u);
}

TEST(BatchRenorm, NonFiniteInputIsRefusedAndStateIsUntouched) {
    BatchRenorm<double> layer(4, {.warmup = 0, .rmax_steps = 0, .dmax_steps = 0});
    for (unsigned step = 0; step < 2; ++step)
        layer.forward(random_array({6, 4, 3}, step, 1.0, 2.0), Mode::train, Grad::none);
    const ArrayD mean = layer.moving_mean(), stddev = layer.moving_std();
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        ArrayD x = random_array({6, 4, 3}, 5);
        x(2, 1, 0) = bad;
        try {
            layer.forward(x, Mode::train);
            FAIL() << "expected NonFiniteError";
        } catch (const NonFiniteError& e) {
            EXPECT_EQ(std::string(e.what()),
                      "batch_renorm(4): statistics of the input are not finite (channel 1): the "
                      "input of shape (6, 4, 3) contains NaN or Inf; nothing was updated");
        }
        EXPECT_EQ(layer.moving_mean(), mean);
        EXPECT_EQ(layer.moving_std(), stddev);
        EXPECT_EQ(layer.step(), 2);
        EXPECT_EQ(layer.saved_contexts(), 0u);
    }
}

}  // namespace
}  // namespace normlab
