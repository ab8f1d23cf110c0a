// Batch-Layer Normalization as published (spec §6): the mixing weights, a reference forward
// written here from the authors' bln_layer.py, the batch-of-one case, per-epoch population
// statistics, the sixteen inference configurations with their gradients, and bad input.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>
#include <omp.h>

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"
#include "variants/batch_layer_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

struct Dims {
    std::size_t n, c, s;
};
Dims dims_of(const ArrayD& x) {
    const std::size_t n = x.shape()[0], c = x.shape()[1];
    return {n, c, x.size() / (n * c)};
}

// Which statistics come from the population (the four inference flags).
struct Flags {
    bool batch_mean = false, batch_var = false, feature_mean = false, feature_var = false;
};

// Population statistics: batch ones per (c, s), feature ones per (slot n, s).
struct Population {
    std::vector<double> batch_mean, batch_var, feature_mean, feature_var;
};

// Current statistics of x: batch branch per (c, s) over n, feature branch per (n, s) over c,
// biased variances, two passes.
Population current_stats(const ArrayD& x) {
    const Dims d = dims_of(x);
    auto at = [&](std::size_t n, std::size_t c, std::size_t s) {
        return x.data()[(n * d.c + c) * d.s + s];
    };
    Population p{std::vector<double>(d.c * d.s, 0), std::vector<double>(d.c * d.s, 0),
                 std::vector<double>(d.n * d.s, 0), std::vector<double>(d.n * d.s, 0)};
    for (std::size_t c = 0; c < d.c; ++c)
        for (std::size_t s = 0; s < d.s; ++s) {
            double& m = p.batch_mean[c * d.s + s];
            for (std::size_t n = 0; n < d.n; ++n)
                m += at(n, c, s) / double(d.n);
            for (std::size_t n = 0; n < d.n; ++n)
                p.batch_var[c * d.s + s] += (at(n, c, s) - m) * (at(n, c, s) - m) / double(d.n);
        }
    for (std::size_t n = 0; n < d.n; ++n)
        for (std::size_t s = 0; s < d.s; ++s) {
            double& m = p.feature_mean[n * d.s + s];
            for (std::size_t c = 0; c < d.c; ++c)
                m += at(n, c, s) / double(d.c);
            for (std::size_t c = 0; c < d.c; ++c)
                p.feature_var[n * d.s + s] += (at(n, c, s) - m) * (at(n, c, s) - m) / double(d.c);
        }
    return p;
}

// bln_layer.bn_training / bln_inference: x_f, x_b standardized, mixed by
// (1/B − 1e-4, 1 − (1/B + 1e-4)), divided by sqrt(C), then γ, β. A statistic taken from the
// population replaces the current one; current variances stay centred on the current mean.
ArrayD reference(const ArrayD& x, const ArrayD& gamma, const ArrayD& beta, double B,
                 double eps = 1e-3, Flags flags = {}, const Population* pop = nullptr) {
    const Dims d = dims_of(x);
    const Population cur = current_stats(x);
    const double wf = 1.0 / B - 0.0001, wb = 1.0 - (1.0 / B + 0.0001);
    ArrayD y = ArrayD::from_shape(x.shape());
    for (std::size_t n = 0; n < d.n; ++n)
        for (std::size_t c = 0; c < d.c; ++c)
            for (std::size_t s = 0; s < d.s; ++s) {
                const std::size_t i = (n * d.c + c) * d.s + s, kb = c * d.s + s, kf = n * d.s + s;
                const double mb = flags.batch_mean ? pop->batch_mean[kb] : cur.batch_mean[kb];
                const double vb = flags.batch_var ? pop->batch_var[kb] : cur.batch_var[kb];
                const double mf = flags.feature_mean ? pop->feature_mean[kf] : cur.feature_mean[kf];
                const double vf = flags.feature_var ? pop->feature_var[kf] : cur.feature_var[kf];
                const double x_b = (x.data()[i] - mb) / std::sqrt(vb + eps);
                const double x_f = (x.data()[i] - mf) / std::sqrt(vf + eps);
                y.data()[i] = gamma(c) * ((x_f * wf + x_b * wb) / std::sqrt(double(d.c))) + beta(c);
            }
    return y;
}

// update_mm_mv after an epoch of these batches: means of the statistics, variances times B/(B−1).
Population population_of(const std::vector<ArrayD>& batches) {
    Population sum = current_stats(batches[0]);
    for (std::size_t t = 1; t < batches.size(); ++t) {
        const Population p = current_stats(batches[t]);
        for (std::size_t k = 0; k < p.batch_mean.size(); ++k) {
            sum.batch_mean[k] += p.batch_mean[k];
            sum.batch_var[k] += p.batch_var[k];
        }
        for (std::size_t k = 0; k < p.feature_mean.size(); ++k) {
            sum.feature_mean[k] += p.feature_mean[k];
            sum.feature_var[k] += p.feature_var[k];
        }
    }
    const double steps = double(batches.size()), b = double(batches[0].shape()[0]);
    for (auto* v : {&sum.batch_mean, &sum.feature_mean})
        for (auto& e : *v)
            e /= steps;
    for (auto* v : {&sum.batch_var, &sum.feature_var})
        for (auto& e : *v)
            e = e / steps * b / (b - 1);
    return sum;
}

double max_abs_diff(const ArrayD& a, const ArrayD& b) {
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
    return m;
}

double max_abs_diff(const Array<double>& a, const std::vector<double>& b) {
    EXPECT_EQ(a.size(), b.size());
    double m = 0;
    for (std::size_t i = 0; i < b.size(); ++i)
        m = std::max(m, std::abs(a.data()[i] - b[i]));
    return m;
}

std::string shape_key(const Shape& shape) {
    std::string key;
    for (auto d : shape) {
        if (!key.empty()) key += 'x';
        key += std::to_string(d);
    }
    return key;
}

const ArrayD& gamma_of(BasicNormalizer<double>& norm) {
    return *norm.parameters()[0].value;
}
const ArrayD& beta_of(BasicNormalizer<double>& norm) {
    return *norm.parameters()[1].value;
}

const std::vector<Shape>& shapes() {
    static const std::vector<Shape> s = {{5, 6}, {4, 6, 7}, {3, 6, 4, 5}};
    return s;
}

// Batches with different offsets and spreads per step.
std::vector<ArrayD> epoch_batches(const Shape& shape, unsigned seed, std::size_t count) {
    std::vector<ArrayD> out;
    for (std::size_t t = 0; t < count; ++t)
        out.push_back(
            random_array(shape, seed + unsigned(t), 0.7 * double(t) - 0.5, 1.0 + 0.5 * double(t)));
    return out;
}

TEST(BatchLayerNorm, WeightsMatchThePublishedFormula) {
    for (double b : {1.0, 2.0, 3.0, 25.0, 60.0, 1000.0}) {
        const BlnWeights w = bln_weights(b);
        EXPECT_DOUBLE_EQ(w.feature, 1 / b - 1e-4) << b;
        EXPECT_DOUBLE_EQ(w.batch, 1 - (1 / b + 1e-4)) << b;
        EXPECT_NEAR(w.feature + w.batch, 1 - 2e-4, 1e-15) << b;
    }
    EXPECT_NEAR(bln_weights(1).feature, 0.9999, 1e-15);
    EXPECT_NEAR(bln_weights(1).batch, -0.0001, 1e-15);
    EXPECT_NEAR(bln_weights(25).feature, 0.0399, 1e-15);
    EXPECT_NEAR(bln_weights(25).batch, 0.9599, 1e-15);

    // configured: B = batch_size whatever the call; actual: the call's batch size.
    const BatchLayerNorm<float> configured(4, {.batch_size = 25});
    EXPECT_EQ(configured.weights_for(3).feature, bln_weights(25).feature);
    const BatchLayerNorm<float> actual(4, {.batch_size = 25, .weights = "actual"});
    EXPECT_EQ(actual.weights_for(3).feature, bln_weights(3).feature);
}

TEST(BatchLayerNorm, TrainingForwardMatchesAnIndependentReference) {
    for (const Shape& shape : shapes()) {
        BatchLayerNorm<double> layer(6);
        BatchLayerNorm<float> layer_f(6);
        testing::randomize_parameters(layer);
        for (std::size_t i = 0; i < 2; ++i)
            *layer_f.parameters()[i].value = xt::cast<float>(*layer.parameters()[i].value);
        const ArrayD x = random_array(shape, 21, 1.5, 2.0);
        const ArrayD expected = reference(x, gamma_of(layer), beta_of(layer), double(shape[0]));
        EXPECT_LT(max_abs_diff(layer.forward(x, Mode::train), expected), 1e-12)
            << format_shape(shape);
        const Array<float> yf = layer_f.forward(xt::cast<float>(x), Mode::train);
        EXPECT_LT(max_abs_diff(xt::cast<double>(yf), expected), 2e-6) << format_shape(shape);
    }
}

TEST(BatchLayerNorm, BatchOfOneIsTheFeatureBranchAlone) {
    // At B = 1 the batch branch is exactly 0 (x − μ_B ≡ 0) and y = γ·0.9999·x̂_F/√C + β.
    for (const Shape& shape : {Shape{1, 8}, Shape{1, 8, 5}, Shape{1, 8, 3, 3}}) {
        BatchLayerNorm<double> layer(8, {.batch_moving_var = false});
        testing::randomize_parameters(layer);
        const ArrayD x = random_array(shape, 31, -1.0, 3.0);
        const ArrayD y = layer.forward(x, Mode::train);
        const Population cur = current_stats(x);
        const std::size_t s_count = x.size() / 8;
        double diff = 0;
        for (std::size_t i = 0; i < x.size(); ++i) {
            const std::size_t c = i / s_count, s = i % s_count;
            const double x_f =
                (x.data()[i] - cur.feature_mean[s]) / std::sqrt(cur.feature_var[s] + 1e-3);
            const double expected =
                gamma_of(layer)(c) * 0.9999 * x_f / std::sqrt(8.0) + beta_of(layer)(c);
            diff = std::max(diff, std::abs(y.data()[i] - expected));
        }
        EXPECT_LT(diff, 1e-12) << format_shape(shape);
        testing::expect_gradients_match(testing::check_gradients(layer, x, Mode::train));
    }
}

// The same input twice along the batch: a batch of two identical samples.
Tensor twice(const Tensor& x) {
    Shape shape = shape_of(x);
    shape[0] = 2;
    Tensor out = Tensor::from_shape(shape);
    std::copy(x.begin(), x.end(), out.begin());
    std::copy(x.begin(), x.end(), out.begin() + std::ptrdiff_t(x.size()));
    return out;
}

// At a batch of one the batch branch's sets are single values, x̂_B = (x − x)·s = 0, and the
// layer does not form that branch. Two identical samples make the same zero through the general
// path (each set's mean is the value, its variance 0; in the backward ḡ = g and Σg·x̂ = 0), with
// the same weights (batch_size = 1 configured): y must be the same bits, dx the same values (a
// zero's sign aside), dγ and dβ exactly twice the batch of one's, also on the vector paths and
// threads of wider shapes and in inference from the input's statistics.
TEST(BatchLayerNorm, BatchOfOneEqualsTwoIdenticalSamples) {
    for (const Shape& shape :
         {Shape{1, 6}, Shape{1, 300}, Shape{1, 4, 5}, Shape{1, 16, 9, 9}, Shape{1, 64, 40, 40}}) {
        const std::size_t c = shape[1];
        const BatchLayerNormOptions options{.batch_size = 1,
                                            .batch_moving_mean = false,
                                            .batch_moving_var = false,
                                            .track_running_stats = false};
        BatchLayerNorm<float> one(c, options), two(c, options);
        const Tensor gamma = xt::cast<float>(random_array({c}, 3, 0.2, 1.0));  // some negative
        const Tensor beta = xt::cast<float>(random_array({c}, 4, 0.0, 0.5));
        for (auto* layer : {&one, &two}) {
            *layer->parameters()[0].value = gamma;
            *layer->parameters()[1].value = beta;
        }
        const Tensor x = xt::cast<float>(random_array(shape, 5, 0.5, 2.0));
        const Tensor dy = xt::cast<float>(random_array(shape, 6));
        const std::string what = format_shape(shape);

        const Tensor y1 = one.forward(x, Mode::train);
        const Tensor y2 = two.forward(twice(x), Mode::train);
        EXPECT_EQ(twice(y1), y2) << what;
        const Tensor dx1 = one.backward(dy);
        const Tensor dx2 = two.backward(twice(dy));
        EXPECT_EQ(twice(dx1), dx2) << what;  // == compares −0 and +0 equal
        for (std::size_t i = 0; i < 2; ++i)
            EXPECT_EQ(Tensor(2.0f * *one.parameters()[i].grad), *two.parameters()[i].grad)
                << what << (i == 0 ? " dgamma" : " dbeta");
        EXPECT_EQ(one.forward(x, Mode::eval, Grad::none), y1) << what;
        EXPECT_EQ(two.forward(twice(x), Mode::eval, Grad::none), y2) << what;
    }
}

// Inference on a single sample with population batch statistics (trained at a batch of two):
// with the population variance and the sample's own mean, x̂_B = 0 again and the branch is not
// formed; with the population mean and the sample's own variance (exactly 0), every set has the
// same inv_std. Two identical samples take the general path to the same values: y bit for bit,
// dx equal, dγ and dβ exactly twice.
TEST(BatchLayerNorm, InferenceOnOneSampleEqualsTwoIdenticalSamples) {
    for (const Shape& shape : {Shape{1, 300}, Shape{1, 16, 9, 9}, Shape{1, 64, 40, 40}}) {
        const std::size_t c = shape[1];
        Shape pair_shape = shape;
        pair_shape[0] = 2;
        for (const bool population_mean : {false, true}) {
            const BatchLayerNormOptions options{.batch_size = 2,
                                                .batch_moving_mean = population_mean,
                                                .batch_moving_var = !population_mean};
            BatchLayerNorm<float> one(c, options), two(c, options);
            const Tensor gamma = xt::cast<float>(random_array({c}, 3, 0.2, 1.0));
            const Tensor beta = xt::cast<float>(random_array({c}, 4, 0.0, 0.5));
            for (auto* layer : {&one, &two}) {
                *layer->parameters()[0].value = gamma;
                *layer->parameters()[1].value = beta;
                for (unsigned step = 0; step < 3; ++step)
                    layer->forward(xt::cast<float>(random_array(pair_shape, 10 + step, 0.3, 1.5)),
                                   Mode::train, Grad::none);
                layer->end_epoch();
            }
            const Tensor x = xt::cast<float>(random_array(shape, 5, 0.5, 2.0));
            const Tensor dy = xt::cast<float>(random_array(shape, 6));
            const std::string what =
                format_shape(shape) + (population_mean ? ", population mean" : ", population var");
            const Tensor y1 = one.forward(x, Mode::eval);
            const Tensor y2 = two.forward(twice(x), Mode::eval);
            EXPECT_EQ(twice(y1), y2) << what;
            EXPECT_EQ(twice(one.backward(dy)), two.backward(twice(dy))) << what;
            for (std::size_t i = 0; i < 2; ++i)
                EXPECT_EQ(Tensor(2.0f * *one.parameters()[i].grad), *two.parameters()[i].grad)
                    << what << (i == 0 ? " dgamma" : " dbeta");
            EXPECT_EQ(one.forward(x, Mode::eval, Grad::none), y1) << what;
        }
    }
}

// At a batch of one the epoch's sums take each batch statistic as the general path would: the
// means are the input itself, the variances exactly 0.
TEST(BatchLayerNorm, BatchOfOneAddsTheInputToTheEpochsBatchMeans) {
    BatchLayerNorm<float> layer(
        8, {.batch_size = 1, .batch_moving_var = false, .feature_moving_var = false});
    const Tensor x1 = xt::cast<float>(random_array({1, 8, 33}, 7, 0.5, 2.0));
    const Tensor x2 = xt::cast<float>(random_array({1, 8, 33}, 8, -0.5, 1.0));
    layer.forward(x1, Mode::train, Grad::none);
    layer.forward(x2, Mode::train, Grad::none);
    const auto buffers = layer.buffers();
    const auto buffer = [&](const std::string& name) {
        for (const auto& b : buffers)
            if (b.name == name) return Tensor(*b.value);
        ADD_FAILURE() << "no buffer " << name;
        return Tensor();
    };
    const Tensor sum_mean = buffer("epoch_sum_batch_mean");
    const Tensor sum_var = buffer("epoch_sum_batch_var");
    ASSERT_EQ(sum_mean.size(), x1.size());
    for (std::size_t k = 0; k < x1.size(); ++k) {
        EXPECT_EQ(sum_mean.data()[k], x1.data()[k] + x2.data()[k]) << k;
        EXPECT_EQ(sum_var.data()[k], 0.0f) << k;
    }
}

TEST(BatchLayerNorm, GradientsMatchFiniteDifferencesInTraining) {
    for (const Shape& shape : shapes()) {
        BatchLayerNorm<double> layer(6);
        testing::randomize_parameters(layer);
        const auto errors =
            testing::check_gradients(layer, random_array(shape, 41, 0.5, 2.0), Mode::train);
        testing::expect_gradients_match(errors);
        for (const auto& e : errors)
            RecordProperty("train_" + shape_key(shape) + "_" + e.tensor, format_value(e.error));
    }
}

TEST(BatchLayerNorm, EveryInferenceConfigurationMatchesTheReferenceAndFiniteDifferences) {
    // The sixteen choices of bln_inference, each statistic from the population or the input;
    // population statistics are constants, so their projection terms vanish.
    double worst_dx = 0, worst_param = 0;
    for (const Shape& shape : shapes()) {
        const std::vector<ArrayD> epoch = epoch_batches(shape, 50, 3);
        const Population pop = population_of(epoch);
        for (unsigned mask = 0; mask < 16; ++mask) {
            const Flags flags{(mask & 1) != 0, (mask & 2) != 0, (mask & 4) != 0, (mask & 8) != 0};
            BatchLayerNorm<double> layer(6, {.batch_moving_mean = flags.batch_mean,
                                             .batch_moving_var = flags.batch_var,
                                             .feature_moving_mean = flags.feature_mean,
                                             .feature_moving_var = flags.feature_var});
            testing::randomize_parameters(layer);
            for (const auto& x : epoch)
                layer.forward(x, Mode::train, Grad::none);
            layer.end_epoch();
            const ArrayD x = random_array(shape, 60 + mask, 1.0, 1.5);
            const ArrayD expected =
                reference(x, gamma_of(layer), beta_of(layer), double(shape[0]), 1e-3, flags, &pop);
            EXPECT_LT(max_abs_diff(layer.forward(x, Mode::eval, Grad::none), expected), 1e-12)
                << format_shape(shape) << " flags " << mask;
            const auto errors = testing::check_gradients(layer, x, Mode::eval);
            testing::expect_gradients_match(errors);
            for (const auto& e : errors)
                (e.tensor == "dx" ? worst_dx : worst_param) =
                    std::max(e.tensor == "dx" ? worst_dx : worst_param, e.error);
        }
    }
    RecordProperty("eval_worst_dx", format_value(worst_dx));
    RecordProperty("eval_worst_param", format_value(worst_param));
}

// The layer's passes split work between threads differently by shape (the feature branch's
// samples a thread each, pieces of positions through every sample, rows): every value and every
// statistic must come out the same on any number of threads, and the input handed over or not.
TEST(BatchLayerNorm, ResultsAreTheSameBitsOnAnyNumberOfThreads) {
    const int threads_before = omp_get_max_threads();
    for (const Shape& shape : {Shape{3, 8, 6, 7}, Shape{5, 16, 1500}, Shape{2, 4, 2048},
                               Shape{64, 40}, Shape{1, 8, 9}}) {
        struct Run {
            Tensor y, dx, eval_y, dgamma, dbeta;
        };
        const auto run = [&](int threads, bool handed) {
            omp_set_num_threads(threads);
            BatchLayerNorm<float> layer(shape[1],
                                        {.batch_moving_mean = false, .batch_moving_var = false});
            auto params = layer.parameters();
            *params[0].value = xt::cast<float>(random_array({shape[1]}, 5, 1.0, 0.5));
            *params[1].value = xt::cast<float>(random_array({shape[1]}, 6, 0.0, 0.5));
            const Tensor x = xt::cast<float>(random_array(shape, 7, 0.5, 2.0));
            Tensor copy = x;
            Run r;
            r.y = handed ? layer.forward(std::move(copy), Mode::train)
                         : layer.forward(x, Mode::train);
            r.dx = layer.backward(xt::cast<float>(random_array(shape, 8)));
            layer.end_epoch();
            r.eval_y = layer.forward(x, Mode::eval, Grad::none);
            r.dgamma = *params[0].grad;
            r.dbeta = *params[1].grad;
            return r;
        };
        const Run one = run(1, false);
        for (int threads : {1, 2, 3})
            for (bool handed : {false, true}) {
                if (threads == 1 && !handed) continue;
                const Run other = run(threads, handed);
                const std::string what = format_shape(shape) + ", " + std::to_string(threads) +
                                         " threads" + (handed ? ", handed over" : "");
                EXPECT_EQ(other.y, one.y) << what;
                EXPECT_EQ(other.dx, one.dx) << what;
                EXPECT_EQ(other.eval_y, one.eval_y) << what;
                EXPECT_EQ(other.dgamma, one.dgamma) << what;
                EXPECT_EQ(other.dbeta, one.dbeta) << what;
            }
    }
    omp_set_num_threads(threads_before);
}

TEST(BatchLayerNorm, PopulationStatisticsArePerEpochMeansWithTheBesselFactor) {
    const Shape shape{4, 3, 5};
    BatchLayerNorm<double> layer(3);
    const std::vector<ArrayD> first = epoch_batches(shape, 70, 3);
    layer.begin_epoch();
    for (const auto& x : first)
        layer.forward(x, Mode::train, Grad::none);
    EXPECT_EQ(layer.epoch_steps(), 3);
    EXPECT_EQ(layer.population_steps(), 0);
    layer.end_epoch();
    EXPECT_EQ(layer.epoch_steps(), 0);
    EXPECT_EQ(layer.population_steps(), 3);
    const Population pop1 = population_of(first);
    EXPECT_EQ(shape_of(layer.moving_batch_mean()), (Shape{3, 5}));
    EXPECT_EQ(shape_of(layer.moving_feature_var()), (Shape{4, 5}));
    EXPECT_LT(max_abs_diff(layer.moving_batch_mean(), pop1.batch_mean), 1e-14);
    EXPECT_LT(max_abs_diff(layer.moving_batch_var(), pop1.batch_var), 1e-13);
    EXPECT_LT(max_abs_diff(layer.moving_feature_mean(), pop1.feature_mean), 1e-14);
    EXPECT_LT(max_abs_diff(layer.moving_feature_var(), pop1.feature_var), 1e-13);

    // The next epoch starts from zero; until it ends, eval still sees the previous epoch.
    const std::vector<ArrayD> second = epoch_batches(shape, 80, 2);
    layer.begin_epoch();
    for (const auto& x : second)
        layer.forward(x, Mode::train, Grad::none);
    EXPECT_LT(max_abs_diff(layer.moving_batch_mean(), pop1.batch_mean), 1e-14);
    layer.end_epoch();
    const Population pop2 = population_of(second);
    EXPECT_LT(max_abs_diff(layer.moving_batch_mean(), pop2.batch_mean), 1e-14);
    EXPECT_LT(max_abs_diff(layer.moving_batch_var(), pop2.batch_var), 1e-13);
    EXPECT_LT(max_abs_diff(layer.moving_feature_mean(), pop2.feature_mean), 1e-14);
    EXPECT_LT(max_abs_diff(layer.moving_feature_var(), pop2.feature_var), 1e-13);
    EXPECT_EQ(layer.population_steps(), 2);

    // An epoch without training steps leaves the population as it was.
    layer.begin_epoch();
    layer.end_epoch();
    EXPECT_LT(max_abs_diff(layer.moving_batch_mean(), pop2.batch_mean), 1e-14);
    EXPECT_EQ(layer.population_steps(), 2);
}

TEST(BatchLayerNorm, EvalBeforeAnyEpochHasEndedIsAStateError) {
    BatchLayerNorm<double> layer(4);
    const ArrayD x = random_array({5, 4}, 1);
    layer.forward(x, Mode::train, Grad::none);
    try {
        layer.forward(x, Mode::eval);
        FAIL() << "expected StateError";
    } catch (const StateError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): eval with batch_moving_mean=true, batch_moving_var=true "
                  "needs population statistics, but no training epoch has ended yet: call "
                  "end_epoch() after training, or set those flags to false");
    }
    EXPECT_EQ(layer.saved_contexts(), 0u);
    // With every flag false, eval is the training computation and needs no population.
    BatchLayerNorm<double> current(4, {.batch_moving_mean = false, .batch_moving_var = false});
    EXPECT_EQ(current.forward(x, Mode::eval, Grad::none),
              current.forward(x, Mode::train, Grad::none));
}

TEST(BatchLayerNorm, RunningFeatureStatisticsNeedTheTrainingBatchSize) {
    BatchLayerNorm<double> layer(4, {.feature_moving_mean = true});
    for (const auto& x : epoch_batches({5, 4, 3}, 90, 2))
        layer.forward(x, Mode::train);
    layer.clear_saved();
    layer.end_epoch();
    try {
        layer.forward(random_array({3, 4, 3}, 2), Mode::eval);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): eval with feature_moving_mean or feature_moving_var needs "
                  "the training batch size, because the population feature statistics are kept "
                  "per slot of the batch: expected batch_size=5 samples with positions=3 values "
                  "per channel, got input of shape (3, 4, 3)");
    }
    try {
        layer.forward(random_array({5, 4, 2}, 2), Mode::eval);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): the population statistics are kept per position, for "
                  "positions=3 values per channel, got input of shape (5, 4, 2)");
    }
    // Population batch statistics alone serve any batch size.
    BatchLayerNorm<double> batch_only(4);
    for (const auto& x : epoch_batches({5, 4, 3}, 90, 2))
        batch_only.forward(x, Mode::train);
    batch_only.end_epoch();
    EXPECT_NO_THROW(batch_only.forward(random_array({1, 4, 3}, 2), Mode::eval));
}

TEST(BatchLayerNorm, TrainingBatchesMustKeepTheConfiguredSize) {
    BatchLayerNorm<double> layer(4, {.batch_size = 6});
    try {
        layer.forward(random_array({5, 4, 2, 2}, 1), Mode::train);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): training with running statistics needs batches of "
                  "batch_size=6 samples with positions=4 values per channel (the published layer "
                  "keeps its feature statistics per slot of a fixed-size batch), got input of "
                  "shape (5, 4, 2, 2); drop the last partial batch, or use "
                  "track_running_stats=false");
    }
    EXPECT_EQ(layer.epoch_steps(), 0);
    // Without running statistics any batch size trains.
    BatchLayerNorm<double> free(4, {.batch_size = 6,
                                    .batch_moving_mean = false,
                                    .batch_moving_var = false,
                                    .track_running_stats = false});
    EXPECT_NO_THROW(free.forward(random_array({5, 4, 2, 2}, 1), Mode::train, Grad::none));
    EXPECT_TRUE(free.buffers().empty());
    EXPECT_TRUE(free.counters().empty());
}

TEST(BatchLayerNorm, ActualBatchSizeWeightsFollowEachCall) {
    BatchLayerNorm<double> actual(5, {.weights = "actual",
                                      .batch_moving_mean = false,
                                      .batch_moving_var = false,
                                      .track_running_stats = false});
    BatchLayerNorm<double> configured(5, {.batch_size = 25,
                                          .batch_moving_mean = false,
                                          .batch_moving_var = false,
                                          .track_running_stats = false});
    testing::randomize_parameters(actual);
    testing::randomize_parameters(configured);
    for (std::size_t n : {3u, 7u, 1u}) {
        const ArrayD x = random_array({n, 5, 4}, unsigned(n), 0.5, 2.0);
        EXPECT_LT(max_abs_diff(actual.forward(x, Mode::train, Grad::none),
                               reference(x, gamma_of(actual), beta_of(actual), double(n))),
                  1e-12)
            << n;
        EXPECT_LT(max_abs_diff(configured.forward(x, Mode::eval, Grad::none),
                               reference(x, gamma_of(configured), beta_of(configured), 25.0)),
                  1e-12)
            << n;
    }
    testing::expect_gradients_match(
        testing::check_gradients(actual, random_array({3, 5, 2}, 8), Mode::train));
}

TEST(BatchLayerNorm, BatchOfOneRefusesRunningVariances) {
    // B/(B−1) has no value at B = 1: the published layer yields NaN (batch) and Inf (feature)
    // population variances; here the configuration is refused before anything runs.
    try {
        make_normalizer("batch_layer_norm(batch_size=1)", 4);
        FAIL() << "expected OptionError";
    } catch (const OptionError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): batch_size=1 leaves the population variances undefined "
                  "(they carry the factor B/(B-1)); set batch_moving_var=false and "
                  "feature_moving_var=false, got batch_moving_mean=true, batch_moving_var=true");
    }
    BatchLayerNorm<double> automatic(4);
    try {
        automatic.forward(random_array({1, 4, 3}, 1), Mode::train);
        FAIL() << "expected OptionError";
    } catch (const OptionError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): batch_size=1 (taken from the first input, of shape (1, "
                  "4, 3)) leaves the population variances undefined (they carry the factor "
                  "B/(B-1)); set batch_moving_var=false and feature_moving_var=false, got "
                  "batch_moving_mean=true, batch_moving_var=true");
    }
    EXPECT_EQ(automatic.options().batch_size, 0);

    // The authors' best B = 1 configuration (population batch mean only) trains and evaluates.
    BatchLayerNorm<double> layer(4, {.batch_size = 1, .batch_moving_var = false});
    const std::vector<ArrayD> epoch = epoch_batches({1, 4, 3}, 5, 4);
    for (const auto& x : epoch)
        layer.forward(x, Mode::train, Grad::none);
    layer.end_epoch();
    std::vector<double> mean(12, 0.0);  // a batch of one is its own batch mean
    for (const auto& x : epoch)
        for (std::size_t k = 0; k < 12; ++k)
            mean[k] += x.data()[k] / 4.0;
    EXPECT_LT(max_abs_diff(layer.moving_batch_mean(), mean), 1e-14);
    for (auto v : layer.moving_batch_var())
        EXPECT_TRUE(std::isfinite(v));
    for (auto v : layer.moving_feature_var())
        EXPECT_TRUE(std::isfinite(v));
    const ArrayD y = layer.forward(random_array({1, 4, 3}, 9), Mode::eval);
    for (auto v : y)
        EXPECT_TRUE(std::isfinite(v));
}

TEST(BatchLayerNorm, FirstCallFixesBatchSizeAndPositionsAndTheStateRoundTrips) {
    BatchLayerNorm<double> layer(3);
    EXPECT_EQ(layer.spec(),
              "batch_layer_norm(eps=0.001,batch_size=0,weights=configured,positions=0,"
              "batch_moving_mean=true,batch_moving_var=true,feature_moving_mean=false,"
              "feature_moving_var=false,track_running_stats=true,affine=true)");
    testing::randomize_parameters(layer);
    for (const auto& x : epoch_batches({4, 3, 2, 3}, 3, 3))
        layer.forward(x, Mode::train);
    layer.clear_saved();
    layer.end_epoch();
    EXPECT_EQ(layer.spec(),
              "batch_layer_norm(eps=0.001,batch_size=4,weights=configured,positions=6,"
              "batch_moving_mean=true,batch_moving_var=true,feature_moving_mean=false,"
              "feature_moving_var=false,track_running_stats=true,affine=true)");
    EXPECT_EQ(shape_of(layer.moving_batch_var()), (Shape{3, 6}));
    EXPECT_EQ(shape_of(layer.moving_feature_mean()), (Shape{4, 6}));

    NpzArchive archive;
    write_state(layer, archive);
    auto restored = make_normalizer<double>(layer.spec(), 3);
    read_state(*restored, archive);
    const ArrayD x = random_array({2, 3, 2, 3}, 17, 0.3, 1.2);
    EXPECT_EQ(restored->forward(x, Mode::eval), layer.forward(x, Mode::eval));
    // A layer whose geometry is still open cannot take the state.
    BatchLayerNorm<double> open(3);
    EXPECT_THROW(read_state(open, archive), StateError);
}

TEST(BatchLayerNorm, RegistryReadsEveryOption) {
    const std::string spec =
        "batch_layer_norm(eps=0.01,batch_size=25,weights=actual,positions=4,"
        "batch_moving_mean=false,batch_moving_var=true,feature_moving_mean=true,"
        "feature_moving_var=false,track_running_stats=true,affine=false)";
    auto norm = make_normalizer(spec, 6);
    EXPECT_EQ(norm->spec(), spec);
    EXPECT_TRUE(norm->parameters().empty());
    EXPECT_EQ(norm->buffers().size(), 8u);
    EXPECT_EQ(shape_of(*norm->buffers()[2].value), (Shape{25, 4}));
    const auto& o = dynamic_cast<BatchLayerNorm<float>&>(*norm).options();
    EXPECT_EQ(o.weights, "actual");
    EXPECT_TRUE(o.feature_moving_mean);
}

std::string option_error(const std::string& spec) {
    try {
        make_normalizer(spec, 4);
    } catch (const OptionError& e) {
        return e.what();
    }
    return "no error";
}

TEST(BatchLayerNorm, ImpossibleOptionsAreRefused) {
    EXPECT_EQ(option_error("batch_layer_norm(eps=0)"),
              "batch_layer_norm(4): eps must be > 0, got 0");
    EXPECT_EQ(option_error("batch_layer_norm(batch_size=-2)"),
              "batch_layer_norm(4): batch_size must be >= 1, or 0 for the first call's, got -2");
    EXPECT_EQ(option_error("batch_layer_norm(positions=-1)"),
              "batch_layer_norm(4): positions must be >= 1, or 0 for the first call's, got -1");
    EXPECT_EQ(option_error("batch_layer_norm(weights=learned)"),
              "batch_layer_norm(4): weights must be 'configured' or 'actual', got 'learned'");
    EXPECT_EQ(option_error("batch_layer_norm(track_running_stats=false,feature_moving_var=true,"
                           "batch_moving_mean=false)"),
              "batch_layer_norm(4): track_running_stats=false keeps no population statistics, "
              "so eval cannot use them; got batch_moving_var=true, feature_moving_var=true");
    EXPECT_EQ(option_error("batch_layer_norm(batch_size=1,batch_moving_var=false,"
                           "feature_moving_var=true)"),
              "batch_layer_norm(4): batch_size=1 leaves the population variances undefined (they "
              "carry the factor B/(B-1)); set batch_moving_var=false and feature_moving_var=false, "
              "got batch_moving_mean=true, feature_moving_var=true");
    EXPECT_EQ(option_error("batch_layer_norm(batchsize=25)"),
              "batch_layer_norm: unknown option 'batchsize'; valid options: eps, batch_size, "
              "weights, positions, batch_moving_mean, batch_moving_var, feature_moving_mean, "
              "feature_moving_var, track_running_stats, affine");
    EXPECT_THROW(BatchLayerNorm<float>(0), OptionError);
}

TEST(BatchLayerNorm, BadInputIsRefusedNamingTheLayerAndTheShapes) {
    BatchLayerNorm<double> layer(4);
    auto message = [&](const Shape& shape) -> std::string {
        try {
            layer.forward(ArrayD::from_shape(shape), Mode::train);
        } catch (const ShapeError& e) {
            return e.what();
        }
        return "no error";
    };
    EXPECT_EQ(message({6, 5, 3}),
              "batch_layer_norm(4): expected input of shape (N, 4, ...), got (6, 5, 3)");
    EXPECT_EQ(message({4}), "batch_layer_norm(4): expected input of shape (N, 4, ...), got (4,)");
    EXPECT_EQ(message({0, 4, 2}),
              "batch_layer_norm(4): expected a non-empty input of shape (N, 4, ...), got (0, 4, "
              "2)");
    EXPECT_EQ(layer.options().batch_size, 0);  // bad input fixes nothing

    try {
        layer.backward(ArrayD::from_shape({6, 4}));
        FAIL() << "expected StateError";
    } catch (const StateError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): backward() called without a matching forward() (no "
                  "saved context; was forward run with Grad::none?)");
    }
    layer.forward(random_array({6, 4}, 1), Mode::train);
    EXPECT_THROW(layer.backward(ArrayD::from_shape({6, 4, 1})), ShapeError);
    EXPECT_EQ(layer.saved_contexts(), 1u);
}

TEST(BatchLayerNorm, NonFiniteInputIsRefusedAndStateIsUntouched) {
    BatchLayerNorm<double> fresh(4);
    ArrayD first = random_array({6, 4, 3}, 5);
    first(0, 0, 0) = std::numeric_limits<double>::quiet_NaN();
    EXPECT_THROW(fresh.forward(first, Mode::train), NonFiniteError);
    EXPECT_EQ(fresh.options().batch_size, 0);  // the geometry stays open
    EXPECT_EQ(fresh.options().positions, 0);

    BatchLayerNorm<double> layer(4);
    for (unsigned step = 0; step < 2; ++step)
        layer.forward(random_array({6, 4, 3}, step, 1.0, 2.0), Mode::train, Grad::none);
    std::vector<ArrayD> before;
    for (auto& b : layer.buffers())
        before.push_back(*b.value);
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        ArrayD x = random_array({6, 4, 3}, 5);
        x(2, 1, 0) = bad;
        try {
            layer.forward(x, Mode::train);
            FAIL() << "expected NonFiniteError";
        } catch (const NonFiniteError& e) {
            EXPECT_EQ(std::string(e.what()),
                      "batch_layer_norm(4): batch statistics of the input are not finite (set 3 "
                      "of 12): the input of shape (6, 4, 3) contains NaN or Inf; nothing was "
                      "updated");
        }
        auto buffers = layer.buffers();
        for (std::size_t i = 0; i < buffers.size(); ++i)
            EXPECT_EQ(*buffers[i].value, before[i]);
        EXPECT_EQ(layer.epoch_steps(), 2);
        EXPECT_EQ(layer.saved_contexts(), 0u);
    }

    // At a batch of one the batch statistics are the input itself: the first bad value names
    // its set.
    BatchLayerNorm<float> single(4, {.batch_size = 1, .batch_moving_var = false});
    const Tensor good = xt::cast<float>(random_array({1, 4, 3}, 6));
    single.forward(good, Mode::train, Grad::none);
    const Tensor sums_before = *single.buffers()[4].value;
    Tensor x = good;
    x(0, 1, 2) = std::numeric_limits<float>::infinity();
    x(0, 3, 0) = std::numeric_limits<float>::quiet_NaN();
    try {
        single.forward(x, Mode::train);
        FAIL() << "expected NonFiniteError";
    } catch (const NonFiniteError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "batch_layer_norm(4): batch statistics of the input are not finite (set 5 of "
                  "12): the input of shape (1, 4, 3) contains NaN or Inf; nothing was updated");
    }
    EXPECT_EQ(*single.buffers()[4].value, sums_before);
    EXPECT_EQ(single.epoch_steps(), 1);
    EXPECT_EQ(single.saved_contexts(), 0u);
}

}  // namespace
}  // namespace normlab
