// Gradient checks in double for every layer of the model toolkit, and for whole small models
// with every registered normalizer in the normalizer slot.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "gradient_check.hpp"
#include "normlab/errors.hpp"
#include "normlab/model/layers.hpp"
#include "normlab/model/training.hpp"
#include "normlab/registry.hpp"
#include "normlab/state_snapshot.hpp"

namespace normlab {
namespace {

using model::Layer;
using testing::ArrayD;

std::vector<ParamRef<double>> refs(std::vector<model::ModelParam<double>> params) {
    std::vector<ParamRef<double>> out;
    for (auto& p : params)
        out.push_back({p.name, p.value, p.grad});
    return out;
}

void check_layer(Layer<double>& layer, const ArrayD& x, Mode mode = Mode::train,
                 double tolerance = 1e-7) {
    // Every forward starts from the same running statistics and counters (dropout's calls,
    // Batch Renorm's step).
    const StateSnapshot<Layer<double>> state(layer);
    auto params = layer.parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
        *params[i].value =
            testing::random_array(shape_of(*params[i].value), 40 + unsigned(i), 0.0, 0.5);
    const auto errors = testing::check_gradients(
        [&](const ArrayD& in, bool keep) {
            state.restore(layer);
            return layer.forward(in, mode, keep ? Grad::keep : Grad::none);
        },
        [&](const ArrayD& dy) { return layer.backward(dy); }, params, x);
    testing::expect_gradients_match(errors, tolerance);
}

TEST(Layers, LinearWithAndWithoutBias) {
    std::mt19937 rng(1);
    model::Linear<double> with_bias(7, 5, model::Init::xavier, rng);
    check_layer(with_bias, testing::random_array({4, 7}, 2));
    model::Linear<double> no_bias(7, 3, model::Init::gaussian, rng, 0.1, false);
    EXPECT_EQ(no_bias.parameters().size(), 1u);
    check_layer(no_bias, testing::random_array({1, 7}, 3));
}

TEST(Layers, LinearForwardIsXTimesWeightTransposedPlusBias) {
    std::mt19937 rng(1);
    model::Linear<double> lin(3, 2, model::Init::xavier, rng);
    auto p = lin.parameters();
    *p[0].value = ArrayD{{1, 2, 3}, {-1, 0, 4}};
    *p[1].value = ArrayD{0.5, -0.5};
    const ArrayD y = lin.forward(ArrayD{{1, 1, 1}, {2, 0, -1}}, Mode::eval, Grad::none);
    EXPECT_DOUBLE_EQ(y(0, 0), 6.5);
    EXPECT_DOUBLE_EQ(y(0, 1), 2.5);
    EXPECT_DOUBLE_EQ(y(1, 0), -0.5);
    EXPECT_DOUBLE_EQ(y(1, 1), -6.5);
}

struct ConvCase {
    std::size_t kernel, stride, padding, h, w;
};

class ConvGradient : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvGradient, MatchesFiniteDifferences) {
    const auto c = GetParam();
    std::mt19937 rng(4);
    model::Conv2d<double> conv(2, 3, c.kernel, c.stride, c.padding, model::Init::he, rng);
    check_layer(conv, testing::random_array({2, 2, c.h, c.w}, 5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvGradient,
                         ::testing::Values(ConvCase{3, 1, 1, 5, 5}, ConvCase{3, 2, 1, 6, 5},
                                           ConvCase{1, 1, 0, 4, 3}, ConvCase{1, 2, 0, 5, 5},
                                           ConvCase{3, 1, 0, 5, 4}));

// Every output against the definition, including padding wider than the kernel reaches (rows
// and columns of output positions that see padding only) and strides that skip input columns.
class ConvForward : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvForward, MatchesDirectSum) {
    const auto c = GetParam();
    std::mt19937 rng(6);
    model::Conv2d<double> conv(2, 3, c.kernel, c.stride, c.padding, model::Init::he, rng);
    auto p = conv.parameters();
    *p[1].value = testing::random_array({3}, 8);
    const ArrayD x = testing::random_array({2, 2, c.h, c.w}, 7);
    const ArrayD y = conv.forward(x, Mode::eval, Grad::none);
    const std::size_t oh = (c.h + 2 * c.padding - c.kernel) / c.stride + 1;
    const std::size_t ow = (c.w + 2 * c.padding - c.kernel) / c.stride + 1;
    ASSERT_EQ(shape_of(y), (Shape{2, 3, oh, ow}));
    const ArrayD& w = *p[0].value;
    for (std::size_t n = 0; n < 2; ++n)
        for (std::size_t o = 0; o < 3; ++o)
            for (std::size_t i = 0; i < oh; ++i)
                for (std::size_t j = 0; j < ow; ++j) {
                    double s = (*p[1].value)(o);
                    for (std::size_t ch = 0; ch < 2; ++ch)
                        for (std::size_t a = 0; a < c.kernel; ++a)
                            for (std::size_t b = 0; b < c.kernel; ++b) {
                                const long r = long(c.stride * i + a) - long(c.padding);
                                const long q = long(c.stride * j + b) - long(c.padding);
                                if (r >= 0 && r < long(c.h) && q >= 0 && q < long(c.w))
                                    s += w(o, ch, a, b) * x(n, ch, r, q);
                            }
                    EXPECT_NEAR(y(n, o, i, j), s, 1e-12) << n << " " << o << " " << i << " " << j;
                }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvForward,
                         ::testing::Values(ConvCase{3, 2, 1, 5, 6}, ConvCase{3, 1, 1, 4, 7},
                                           ConvCase{3, 1, 3, 4, 5}, ConvCase{3, 3, 2, 7, 8},
                                           ConvCase{2, 2, 0, 6, 7}, ConvCase{1, 1, 0, 3, 3},
                                           ConvCase{5, 1, 2, 2, 9}));

// The backward of those geometries (col2im the adjoint of im2col) against finite differences.
INSTANTIATE_TEST_SUITE_P(Padding, ConvGradient,
                         ::testing::Values(ConvCase{3, 1, 3, 4, 5}, ConvCase{3, 3, 2, 7, 8},
                                           ConvCase{5, 1, 2, 2, 9}));

// Two training steps of `layer` in float on x and dy: after each, every output's bias gradient
// (parameter 1) is the steps' Σdy of that output (index 1 of dy, over the batch and any trailing
// dimensions), to 1e-6 of the sum of magnitudes computed in double.
void expect_bias_grads_sum_dy(model::Layer<float>& layer, const Array<float>& x,
                              const Array<float>& dy) {
    const Shape shape = shape_of(dy);
    const std::size_t outputs = shape[1];
    const std::size_t trailing = dy.size() / (shape[0] * outputs);
    std::vector<double> sum(outputs), magnitude(outputs);
    for (std::size_t i = 0; i < dy.size(); ++i) {
        const std::size_t o = (i / trailing) % outputs;
        sum[o] += dy.data()[i];
        magnitude[o] += std::abs(dy.data()[i]);
    }
    Array<float>& bias_grad = *layer.parameters()[1].grad;
    bias_grad.fill(0.0f);
    for (int call = 1; call <= 2; ++call) {
        layer.forward(x, Mode::train, Grad::keep);
        layer.backward(dy);
        for (std::size_t o = 0; o < outputs; ++o)
            EXPECT_NEAR(bias_grad(o), call * sum[o], 1e-6 * call * magnitude[o])
                << layer.name() << ", output " << o << ", call " << call;
    }
}

// In float, on a batch large enough for the threads: each channel's Σdy over the batch and the
// positions, to a few float ulps of the sum in double, added to what the gradient held.
TEST(Layers, ConvBiasGradientInFloatIsEachChannelsSumOfDy) {
    std::mt19937 rng(11);
    model::Conv2d<float> conv(3, 8, 3, 1, 1, model::Init::he, rng);
    expect_bias_grads_sum_dy(conv, xt::cast<float>(testing::random_array({8, 3, 28, 28}, 12)),
                             xt::cast<float>(testing::random_array({8, 8, 28, 28}, 13, 0.5, 1.0)));
}

// The same for a linear layer: each output's bias gradient is its column sum of dy, here 20000
// rows in float (the last block of rows short; 37 outputs, a vector tail), where a chain of float
// adds per output drifts by more than the tolerance.
TEST(Layers, LinearBiasGradientInFloatIsEachOutputsSumOfDy) {
    std::mt19937 rng(12);
    model::Linear<float> linear(5, 37, model::Init::he, rng);
    expect_bias_grads_sum_dy(linear, xt::cast<float>(testing::random_array({20000, 5}, 14)),
                             xt::cast<float>(testing::random_array({20000, 37}, 15, 1.0, 0.25)));
}

TEST(Layers, PoolingAndReshapes) {
    model::Pool2d<double> max_pool(model::Pool::max, 2), avg_pool(model::Pool::average, 2);
    const ArrayD x = testing::random_array({2, 3, 4, 6}, 9);  // distinct values: max is unique
    check_layer(max_pool, x);
    check_layer(avg_pool, x);
    model::GlobalAvgPool<double> gap;
    check_layer(gap, x);
    model::Flatten<double> flat;
    check_layer(flat, x);
    EXPECT_EQ(shape_of(flat.forward(x, Mode::eval, Grad::none)), (Shape{2, 72}));
    const ArrayD pooled = max_pool.forward(ArrayD{{{{1, 5}, {3, 2}}}}, Mode::eval, Grad::none);
    EXPECT_EQ(pooled(0, 0, 0, 0), 5.0);
    EXPECT_THROW(max_pool.forward(testing::random_array({1, 1, 3, 4}, 1), Mode::eval, Grad::none),
                 ShapeError);
}

// On a batch large enough for the threads, in float: each window's largest value, its gradient
// to the first of the window's largest values in row order (values on a coarse grid, so that
// windows hold ties), and the windows' means.
TEST(Layers, PoolingOnManyPlanesMatchesEachWindow) {
    const Shape s{8, 16, 28, 28};
    Array<float> x = xt::cast<float>(testing::random_array(s, 21));
    for (auto& v : x)
        v = std::round(v * 4.0f) / 4.0f;
    model::Pool2d<float> max_pool(model::Pool::max, 2), avg_pool(model::Pool::average, 2);
    const Array<float> y = max_pool.forward(x, Mode::train, Grad::keep);
    const Array<float> mean = avg_pool.forward(x, Mode::eval, Grad::none);
    const Array<float> dy = xt::ones<float>({s[0], s[1], s[2] / 2, s[3] / 2});
    const Array<float> dx = max_pool.backward(dy);
    std::size_t ties = 0;
    for (std::size_t p = 0; p < s[0] * s[1]; ++p)
        for (std::size_t oy = 0; oy < 14; ++oy)
            for (std::size_t ox = 0; ox < 14; ++ox) {
                const std::size_t o = (p * 14 + oy) * 14 + ox;
                float best = -std::numeric_limits<float>::infinity(), sum = 0;
                std::size_t first = 0, count = 0;
                for (std::size_t i = 0; i < 2; ++i)
                    for (std::size_t j = 0; j < 2; ++j) {
                        const std::size_t at = (p * 28 + 2 * oy + i) * 28 + 2 * ox + j;
                        sum += x.data()[at];
                        if (x.data()[at] > best) {
                            best = x.data()[at];
                            first = at;
                        }
                    }
                for (std::size_t i = 0; i < 2; ++i)
                    for (std::size_t j = 0; j < 2; ++j) {
                        const std::size_t at = (p * 28 + 2 * oy + i) * 28 + 2 * ox + j;
                        count += x.data()[at] == best;
                        ASSERT_EQ(dx.data()[at], at == first ? 1.0f : 0.0f) << at;
                    }
                ties += count > 1;
                ASSERT_EQ(y.data()[o], best) << o;
                ASSERT_EQ(mean.data()[o], sum / 4.0f) << o;
            }
    EXPECT_GT(ties, 100u);
}

TEST(Layers, Activations) {
    // ReLU is not differentiable at 0: keep inputs away from it.
    ArrayD x = testing::random_array({3, 8}, 10);
    for (auto& v : x)
        v += v > 0 ? 0.1 : -0.1;
    for (auto kind :
         {model::Activation::relu, model::Activation::sigmoid, model::Activation::tanh}) {
        model::Elementwise<double> act(kind);
        check_layer(act, x);
    }
}

TEST(Layers, DropoutScalesKeptValuesAndIsIdentityInEval) {
    model::Dropout<double> drop(0.25, 11);
    const ArrayD x = testing::random_array({50, 40}, 12, 3.0, 0.1);
    check_layer(drop, x);
    const ArrayD y = drop.forward(x, Mode::train, Grad::none);
    std::size_t zeros = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        if (y.data()[i] == 0)
            ++zeros;
        else
            EXPECT_NEAR(y.data()[i], x.data()[i] / 0.75, 1e-12);
    }
    EXPECT_NEAR(double(zeros) / double(x.size()), 0.25, 0.03);
    const ArrayD e = drop.forward(x, Mode::eval, Grad::none);
    EXPECT_EQ(e, x);
    EXPECT_THROW(model::Dropout<double>(1.0, 1), OptionError);
}

TEST(Layers, BackwardWithoutForwardIsAnError) {
    std::mt19937 rng(1);
    model::Linear<double> lin(3, 2, model::Init::xavier, rng);
    EXPECT_THROW(lin.backward(ArrayD::from_shape({1, 2})), StateError);
    lin.forward(ArrayD::from_shape({1, 3}), Mode::train);
    EXPECT_THROW(lin.backward(ArrayD::from_shape({1, 5})), ShapeError);
    EXPECT_THROW(lin.forward(ArrayD::from_shape({1, 4}), Mode::train), ShapeError);
}

// A whole model: dense and convolutional, with the normalizer spec in every slot.
model::Sequential<double> small_mlp(const std::string& spec) {
    std::mt19937 rng(21);
    model::Sequential<double> m;
    m.add(std::make_unique<model::Linear<double>>(6, 4, model::Init::xavier, rng));
    m.add(std::make_unique<model::NormLayer<double>>(spec, 4));
    m.add(std::make_unique<model::Elementwise<double>>(model::Activation::sigmoid));
    m.add(std::make_unique<model::Linear<double>>(4, 3, model::Init::xavier, rng));
    return m;
}

model::Sequential<double> small_cnn(const std::string& spec) {
    std::mt19937 rng(22);
    model::Sequential<double> m;
    m.add(std::make_unique<model::Conv2d<double>>(2, 4, 3, 1, 1, model::Init::he, rng));
    m.add(std::make_unique<model::NormLayer<double>>(spec, 4));
    m.add(std::make_unique<model::Elementwise<double>>(model::Activation::tanh));
    m.add(std::make_unique<model::Pool2d<double>>(model::Pool::average, 2));
    m.add(std::make_unique<model::GlobalAvgPool<double>>());
    m.add(std::make_unique<model::Linear<double>>(4, 3, model::Init::xavier, rng));
    return m;
}

void check_model(model::Sequential<double>& m, const ArrayD& x) {
    const StateSnapshot<model::Sequential<double>> state(m);
    const auto errors = testing::check_gradients(
        [&](const ArrayD& in, bool keep) {
            state.restore(m);
            return m.forward(in, Mode::train, keep ? Grad::keep : Grad::none);
        },
        [&](const ArrayD& dy) { return m.backward(dy); }, refs(m.parameters()), x);
    testing::expect_gradients_match(errors, 1e-6);
}

std::string slot_spec(const std::string& variant) {
    if (variant == "group_norm") return "group_norm(groups=2)";
    // Batch Renorm's r and d are constants of the backward pass by design, so only while they
    // are clipped to 1 and 0 (the warm-up) is its gradient the true derivative.
    if (variant == "batch_renorm") return "batch_renorm(warmup=100)";
    return variant;
}

TEST(WholeModel, GradientsWithEveryNormalizer) {
    for (const auto& variant : registered_variants()) {
        SCOPED_TRACE(variant.name);
        const std::string spec = slot_spec(variant.name);
        if (variant.name != "instance_norm") {  // (N, C) has no trailing dimension to normalize
            auto mlp = small_mlp(spec);
            check_model(mlp, testing::random_array({5, 6}, 23));
        }
        auto cnn = small_cnn(spec);
        check_model(cnn, testing::random_array({3, 2, 4, 4}, 24));
    }
}

TEST(WholeModel, SoftmaxCrossEntropyGradientAndStability) {
    const std::vector<int> labels{2, 0, 1};
    ArrayD logits = testing::random_array({3, 4}, 25);
    ArrayD dlogits;
    model::softmax_cross_entropy(logits, labels, &dlogits);
    const double h = 1e-6;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        const double keep = logits.data()[i];
        logits.data()[i] = keep + h;
        const double up = model::softmax_cross_entropy(logits, labels).loss;
        logits.data()[i] = keep - h;
        const double down = model::softmax_cross_entropy(logits, labels).loss;
        logits.data()[i] = keep;
        EXPECT_NEAR(dlogits.data()[i], (up - down) / (2 * h), 1e-8);
    }
    // Logits of 1e4 would overflow exp() without the max subtracted.
    const ArrayD big{{1e4, 0.0, -1e4}, {1e4, 1e4, 0.0}};
    const auto r = model::softmax_cross_entropy(big, {0, 2});
    EXPECT_NEAR(r.loss, (0.0 + (1e4 + std::log(2.0))) / 2, 1e-9);
    EXPECT_EQ(r.correct, 1u);
    EXPECT_THROW(model::softmax_cross_entropy(big, {0, 3}), ShapeError);
    EXPECT_THROW(model::softmax_cross_entropy(big, {0}), ShapeError);
}

}  // namespace
}  // namespace normlab
