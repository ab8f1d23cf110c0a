// Variable-length sequences in the recurrent layers: padding takes no part in any statistic,
// output or gradient, so a padded batch computes exactly what the unpadded sequences do; and
// batch statistics are kept per time step, over that step's valid rows.
#include <gtest/gtest.h>

#include <xtensor/xview.hpp>

#include "gradient_check.hpp"
#include "lstm_test_support.hpp"
#include "normlab/errors.hpp"
#include "normlab/per_step.hpp"
#include "normlab/registry.hpp"

namespace normlab::model {
namespace {

using testing::ArrayD;
using testing::kFeatures;
using testing::kHidden;
using testing::random_array;

constexpr std::size_t kSteps = 5, kBatch = 4;
const std::vector<std::size_t> kLengths{5, 3, 4, 1};

struct Case {
    RecurrentCell cell;
    std::string spec;
};

void PrintTo(const Case& c, std::ostream* os) {
    *os << (c.cell == RecurrentCell::lstm ? "lstm " : "rnn ") << c.spec;
}

// Every normalizer that accepts a batch whose size changes from step to step. The published
// batch_layer_norm keeps statistics per slot of a fixed-size batch; see the last test.
std::vector<Case> cases() {
    std::vector<Case> out;
    for (const char* spec :
         {"identity", "batch_norm", "layer_norm", "group_norm(groups=2)", "rms_norm",
          "batch_renorm",
          "batch_layer_norm(weights=actual,track_running_stats=false,batch_moving_mean=false,"
          "batch_moving_var=false)"})
        for (RecurrentCell cell : {RecurrentCell::lstm, RecurrentCell::tanh_rnn})
            out.push_back({cell, spec});
    return out;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
    std::string name = info.param.cell == RecurrentCell::lstm ? "lstm_" : "rnn_";
    const std::string& spec = info.param.spec;
    for (char ch : spec.substr(0, spec.find(',')))
        name += std::isalnum((unsigned char)ch) ? ch : '_';
    return name;
}

RecurrentNorms everywhere(const Case& c) {
    RecurrentNorms n;
    n.input = n.recurrent = c.spec;
    if (c.cell == RecurrentCell::lstm) n.cell = c.spec;
    return n;
}

// One run of a fresh layer (same weights every time) on a padded batch: forward in training,
// backward of dy; what the comparisons need.
struct Outcome {
    ArrayD y, dx;
    std::vector<ArrayD> grads, buffers;
};

Outcome run(const Case& c, const ArrayD& x, const std::vector<std::size_t>& lengths,
            const ArrayD& dy) {
    auto layer = testing::make_recurrent(c.cell, everywhere(c), SequenceOutput::all_steps, 8);
    testing::randomize(*layer, 5);
    Outcome r;
    r.y = layer->forward(x, lengths, Mode::train);
    r.dx = layer->backward(dy);
    for (auto& p : layer->parameters())
        r.grads.push_back(*p.grad);
    for (auto& b : layer->buffers())
        r.buffers.push_back(*b.value);
    return r;
}

// x (T, N, F) with the positions beyond each length replaced by large garbage.
ArrayD with_garbage(ArrayD x, const std::vector<std::size_t>& lengths, unsigned seed) {
    const ArrayD noise = random_array(shape_of(x), seed, 0.0, 1e3);
    for (std::size_t t = 0; t < x.shape()[0]; ++t)
        for (std::size_t n = 0; n < x.shape()[1]; ++n)
            if (t >= lengths[n])
                for (std::size_t f = 0; f < x.shape()[2]; ++f)
                    x(t, n, f) = noise(t, n, f);
    return x;
}

// Sequence n of a (T, N, ·) array, its first `steps` steps.
ArrayD sequence(const ArrayD& a, std::size_t n, std::size_t steps) {
    ArrayD out = ArrayD::from_shape({steps, a.shape()[2]});
    for (std::size_t t = 0; t < steps; ++t)
        for (std::size_t f = 0; f < a.shape()[2]; ++f)
            out(t, f) = a(t, n, f);
    return out;
}

double max_abs_diff(const ArrayD& a, const ArrayD& b) {
    EXPECT_EQ(shape_of(a), shape_of(b));
    double d = 0;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
        d = std::max(d, std::abs(a.data()[i] - b.data()[i]));
    return d;
}

// The real sequences of `got` (batch positions `where[n]`) against those of `want`.
void expect_same_sequences(const ArrayD& want, const ArrayD& got,
                           const std::vector<std::size_t>& where, double tol,
                           const std::string& what) {
    for (std::size_t n = 0; n < kBatch; ++n)
        EXPECT_LE(
            max_abs_diff(sequence(want, n, kLengths[n]), sequence(got, where[n], kLengths[n])), tol)
            << what << " of sequence " << n;
}

class Padding : public ::testing::TestWithParam<Case> {};

TEST_P(Padding, IsInvisibleToOutputsGradientsAndStatistics) {
    const Case& c = GetParam();
    ArrayD x = random_array({kSteps, kBatch, kFeatures}, 1);
    for (std::size_t t = 0; t < kSteps; ++t)
        for (std::size_t n = 0; n < kBatch; ++n)
            if (t >= kLengths[n]) xt::view(x, t, n) = 0.0;
    const ArrayD dy = random_array({kSteps, kBatch, kHidden}, 2);
    const Outcome ref = run(c, x, kLengths, dy);  // the reference: zero padding
    const std::vector<std::size_t> same{0, 1, 2, 3};

    // Outputs at padded positions are zero; dx there is zero.
    for (std::size_t t = 0; t < kSteps; ++t)
        for (std::size_t n = 0; n < kBatch; ++n)
            if (t >= kLengths[n]) {
                for (std::size_t j = 0; j < kHidden; ++j)
                    EXPECT_EQ(ref.y(t, n, j), 0.0);
                for (std::size_t f = 0; f < kFeatures; ++f)
                    EXPECT_EQ(ref.dx(t, n, f), 0.0);
            }

    auto expect_same_state = [&](const Outcome& other, const std::string& what) {
        ASSERT_EQ(other.grads.size(), ref.grads.size());
        for (std::size_t i = 0; i < ref.grads.size(); ++i)
            EXPECT_LT(max_abs_diff(ref.grads[i], other.grads[i]), 1e-11)
                << what << ": gradient " << i;
        ASSERT_EQ(other.buffers.size(), ref.buffers.size());
        for (std::size_t i = 0; i < ref.buffers.size(); ++i)
            EXPECT_LT(max_abs_diff(ref.buffers[i], other.buffers[i]), 1e-12)
                << what << ": buffer " << i;
    };

    {  // Different garbage in the padding, and in dy at padded positions.
        const Outcome other =
            run(c, with_garbage(x, kLengths, 7), kLengths, with_garbage(dy, kLengths, 8));
        expect_same_sequences(ref.y, other.y, same, 0.0, "garbage: y");
        expect_same_sequences(ref.dx, other.dx, same, 0.0, "garbage: dx");
        expect_same_state(other, "garbage");
    }
    {  // Three more padded steps at the end.
        ArrayD longer = random_array({kSteps + 3, kBatch, kFeatures}, 3, 0.0, 1e3);
        ArrayD dlonger = random_array({kSteps + 3, kBatch, kHidden}, 4);
        xt::view(longer, xt::range(0, kSteps)) = x;
        xt::view(dlonger, xt::range(0, kSteps)) = dy;
        const Outcome other = run(c, longer, kLengths, dlonger);
        expect_same_sequences(ref.y, other.y, same, 0.0, "longer: y");
        expect_same_sequences(ref.dx, other.dx, same, 0.0, "longer: dx");
        expect_same_state(other, "longer");
    }
    {  // Two empty sequences in the batch, and the order of the others reversed.
        const std::vector<std::size_t> where{5, 3, 2,
                                             0};  // sequence n sits at batch position where[n]
        std::vector<std::size_t> lengths(6, 0);
        ArrayD mixed = random_array({kSteps, 6, kFeatures}, 5, 0.0, 1e3);
        ArrayD dmixed = random_array({kSteps, 6, kHidden}, 6);
        for (std::size_t n = 0; n < kBatch; ++n) {
            lengths[where[n]] = kLengths[n];
            xt::view(mixed, xt::all(), where[n]) = xt::view(x, xt::all(), n);
            xt::view(dmixed, xt::all(), where[n]) = xt::view(dy, xt::all(), n);
        }
        const Outcome other = run(c, mixed, lengths, dmixed);
        // Sums over a batch in another order round differently: equal to rounding.
        expect_same_sequences(ref.y, other.y, where, 1e-12, "reordered: y");
        expect_same_sequences(ref.dx, other.dx, where, 1e-12, "reordered: dx");
        expect_same_state(other, "reordered");
        for (std::size_t n : {1, 4})
            for (std::size_t t = 0; t < kSteps; ++t)
                for (std::size_t j = 0; j < kHidden; ++j)
                    EXPECT_EQ(other.y(t, n, j), 0.0);
    }
}

TEST_P(Padding, EqualLengthsEqualTheUnpaddedInput) {
    // Every sequence 3 steps long, padded to 5: the same as the (3, N, F) input.
    Case c = GetParam();
    const ArrayD x = random_array({3, kBatch, kFeatures}, 11);
    const ArrayD dy = random_array({3, kBatch, kHidden}, 12);
    const Outcome plain = run(c, x, {}, dy);
    ArrayD padded = random_array({5, kBatch, kFeatures}, 13, 0.0, 1e3);
    ArrayD dpadded = random_array({5, kBatch, kHidden}, 14);
    xt::view(padded, xt::range(0, 3)) = x;
    xt::view(dpadded, xt::range(0, 3)) = dy;
    const Outcome masked = run(c, padded, {3, 3, 3, 3}, dpadded);
    EXPECT_EQ(ArrayD(xt::view(masked.y, xt::range(0, 3))), plain.y);
    EXPECT_EQ(ArrayD(xt::view(masked.dx, xt::range(0, 3))), plain.dx);
    EXPECT_EQ(masked.grads, plain.grads);
    EXPECT_EQ(masked.buffers, plain.buffers);
}

// With per-sample statistics a sequence alone is the same computation as in any batch.
class PerSamplePadding : public ::testing::TestWithParam<Case> {};

TEST_P(PerSamplePadding, EachSequenceAloneEqualsItsRowsOfThePaddedBatch) {
    const Case& c = GetParam();
    const ArrayD x = with_garbage(random_array({kSteps, kBatch, kFeatures}, 21), kLengths, 22);
    const ArrayD dy = random_array({kSteps, kBatch, kHidden}, 23);
    const Outcome batch = run(c, x, kLengths, dy);
    for (std::size_t n = 0; n < kBatch; ++n) {
        const std::size_t len = kLengths[n];
        ArrayD xn = ArrayD::from_shape({len, 1, kFeatures}),
               dyn = ArrayD::from_shape({len, 1, kHidden});
        xt::view(xn, xt::all(), 0) = sequence(x, n, len);
        xt::view(dyn, xt::all(), 0) = sequence(dy, n, len);
        const Outcome alone = run(c, xn, {}, dyn);
        EXPECT_LT(max_abs_diff(ArrayD(xt::view(alone.y, xt::all(), 0)), sequence(batch.y, n, len)),
                  1e-13)
            << "sequence " << n;
        EXPECT_LT(
            max_abs_diff(ArrayD(xt::view(alone.dx, xt::all(), 0)), sequence(batch.dx, n, len)),
            1e-13)
            << "sequence " << n;
    }
}

INSTANTIATE_TEST_SUITE_P(EveryNormalizer, Padding, ::testing::ValuesIn(cases()), case_name);

std::vector<Case> per_sample_cases() {
    std::vector<Case> out;
    for (const auto& c : cases())
        if (!make_normalizer<double>(c.spec, 4 * kHidden)->uses_batch_statistics())
            out.push_back(c);
    return out;
}

INSTANTIATE_TEST_SUITE_P(PerSampleNormalizers, PerSamplePadding,
                         ::testing::ValuesIn(per_sample_cases()), case_name);

// Batch norm in the input slot only, momentum 1: after one training forward each step's running
// mean is the mean of W_x·x_t over that step's valid rows and its running variance their
// unbiased variance — computed here directly from the weights.
TEST(PerStepStatistics, AreKeptPerStepOverTheValidRowsOnly) {
    RecurrentNorms norms;
    norms.input = "batch_norm(momentum=1)";
    auto layer = testing::make_recurrent(RecurrentCell::lstm, norms, SequenceOutput::all_steps, 6);
    ArrayD x = with_garbage(random_array({kSteps, kBatch, kFeatures}, 31, 0.0, 1.0), kLengths, 32);
    for (std::size_t t = 0; t < kSteps; ++t)  // step t centred at 3t, so the steps differ
        for (std::size_t n = 0; n < kBatch; ++n)
            x(t, n, 0) += 3.0 * double(t) * (t < kLengths[n]);
    layer->forward(x, kLengths, Mode::train, Grad::none);
    const ArrayD& w = *layer->parameters()[0].value;  // weight_ih (4H, F)
    auto& per_step = dynamic_cast<PerStepNormalizer<double>&>(
        *layer->slot_normalizer(RecurrentLayer<double>::Slot::input));
    ASSERT_EQ(per_step.max_steps(), 6u);
    for (std::size_t t = 0; t < kSteps; ++t) {
        auto buffers = per_step.step_normalizer(t).buffers();  // running_mean, running_var
        auto counters = per_step.step_normalizer(t).counters();
        std::vector<std::size_t> valid;
        for (std::size_t n = 0; n < kBatch; ++n)
            if (t < kLengths[n]) valid.push_back(n);
        if (valid.size() < 2) {
            // A single valid row: normalized with the step's running statistics, which stay put.
            EXPECT_EQ(*counters[0].value, 0) << "step " << t;
            EXPECT_TRUE(xt::all(xt::equal(*buffers[0].value, 0.0))) << "step " << t;
            continue;
        }
        EXPECT_EQ(*counters[0].value, 1) << "step " << t;
        for (std::size_t u = 0; u < 4 * kHidden; ++u) {
            std::vector<double> a;
            for (std::size_t n : valid) {
                double s = 0;
                for (std::size_t f = 0; f < kFeatures; ++f)
                    s += w(u, f) * x(t, n, f);
                a.push_back(s);
            }
            double mean = 0, var = 0;
            for (double v : a)
                mean += v / double(a.size());
            for (double v : a)
                var += (v - mean) * (v - mean) / double(a.size() - 1);
            EXPECT_NEAR((*buffers[0].value)(u), mean, 1e-12) << "step " << t << " unit " << u;
            EXPECT_NEAR((*buffers[1].value)(u), var, 1e-10) << "step " << t << " unit " << u;
        }
    }
    // Step 5 was never reached: still the initial statistics.
    EXPECT_EQ(*per_step.step_normalizer(5).counters()[0].value, 0);
}

TEST(Masks, ALoneValidRowOfAFullBatchIsNotRefusedButABatchOfOneIs) {
    auto layer = testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::batch_norm_lstm(),
                                         SequenceOutput::last_step);
    EXPECT_NO_THROW(layer->forward(random_array({5, 4, kFeatures}, 1), kLengths, Mode::train));
    // Without padding a batch of one has no batch statistics, as everywhere else in normlab.
    EXPECT_THROW(layer->forward(random_array({5, 1, kFeatures}, 1), Mode::train), ShapeError);
}

TEST(Masks, PublishedBatchLayerNormRefusesStepsWhoseBatchSizeChanges) {
    auto layer = testing::make_recurrent(RecurrentCell::lstm,
                                         RecurrentNorms::batch_norm_lstm("batch_layer_norm"),
                                         SequenceOutput::last_step);
    const ArrayD x = random_array({5, 4, kFeatures}, 1);
    layer->forward(x, {5, 5, 3, 3}, Mode::train, Grad::none);  // fixes B per step: 4, 4, 4, 2, 2
    try {
        layer->forward(x, {5, 5, 5, 3}, Mode::train, Grad::none);
        ADD_FAILURE() << "no ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("at step 3"), std::string::npos) << e.what();
    }
}

TEST(Masks, SequentialPassesLengthsForOneCallOnly) {
    std::mt19937 rng(3);
    RecurrentOptions o;
    o.input_size = kFeatures;
    o.hidden_size = kHidden;
    o.max_steps = 5;
    o.norms = RecurrentNorms::layer_norm_lstm();
    Sequential<double> model;
    model.add(std::make_unique<TimeMajor<double>>());
    model.add(std::make_unique<Lstm<double>>(o, rng));
    auto& lstm = static_cast<RecurrentLayer<double>&>(model.layer(1));
    const ArrayD x = random_array({4, 5, kFeatures}, 1);  // batch-first
    const ArrayD direct =
        lstm.forward(xt::transpose(x, {1, 0, 2}), kLengths, Mode::train, Grad::none);
    EXPECT_EQ(model.forward(x, kLengths, Mode::train, Grad::none), direct);
    const ArrayD full = model.forward(x, Mode::train, Grad::none);
    EXPECT_EQ(full, lstm.forward(xt::transpose(x, {1, 0, 2}), Mode::train, Grad::none));
    EXPECT_NE(full, direct);
    // Slot parameters are normalizer parameters (no weight decay by default); the weights are not.
    for (const auto& p : model.parameters())
        EXPECT_EQ(p.normalizer, p.name.find("_norm.") != std::string::npos) << p.name;
}

}  // namespace
}  // namespace normlab::model
