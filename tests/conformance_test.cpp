// Properties every registered normalizer must have, checked on every shape it supports:
// gradients against finite differences (train and eval), LIFO contexts, spec round trips,
// float/double agreement, and clear errors for bad input.
#include <cmath>
#include <limits>
#include <set>

#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

constexpr std::size_t kChannels = 4;

// Specs exercised on every shape; instance_norm needs trailing dimensions.
const std::vector<std::string>& specs() {
    static const std::vector<std::string> s = {
        "identity",
        "batch_norm",
        "batch_norm(affine=false)",
        "batch_norm(momentum=none)",
        "batch_norm(track_running_stats=false)",
        "layer_norm",
        "layer_norm(affine=false)",
        "instance_norm(affine=true)",
        "instance_norm(affine=true,track_running_stats=true)",
        "group_norm(groups=2)",
        "group_norm(groups=1)",
        "group_norm(groups=4)",
        "rms_norm",
        "rms_norm(bias=true,eps=1e-6)",
        // During its warm-up Batch Renorm clips r = 1, d = 0; with relaxed clipping r and d depend
        // on x but are constants of the backward, so finite differences do not apply
        // (tests/batch_renorm_test.cpp checks that case against a frozen-r, d reference).
        "batch_renorm",
        "batch_renorm(affine=false,rmax=1,dmax=0,warmup=0,rmax_steps=0,dmax_steps=0)",
        "batch_layer_norm",
        "batch_layer_norm(weights=actual,track_running_stats=false,batch_moving_mean=false,"
        "batch_moving_var=false)",
    };
    return s;
}

const std::vector<Shape>& shapes() {
    static const std::vector<Shape> s = {
        {6, kChannels}, {5, kChannels, 7}, {3, kChannels, 3, 5}, {2, kChannels, 2, 3, 2}};
    return s;
}

struct Case {
    std::string spec;
    Shape shape;
};

void PrintTo(const Case& c, std::ostream* os) {
    *os << c.spec << " on " << format_shape(c.shape);
}

std::vector<Case> cases() {
    std::vector<Case> out;
    for (const auto& spec : specs())
        for (const auto& shape : shapes())
            if (!(spec.rfind("instance_norm", 0) == 0 && shape.size() < 3))
                out.push_back({spec, shape});
    return out;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
    std::string name;
    for (char ch : info.param.spec)
        name += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
    for (auto d : info.param.shape) {
        name += '_';
        name += std::to_string(d);
    }
    return name;
}

class Conformance : public ::testing::TestWithParam<Case> {
  protected:
    std::unique_ptr<BasicNormalizer<double>> make() const {
        return make_normalizer<double>(GetParam().spec, kChannels);
    }
    ArrayD input(unsigned seed) const { return random_array(GetParam().shape, seed, 0.5, 2.0); }
    bool computes_statistics() const { return GetParam().spec != "identity"; }
};

TEST_P(Conformance, GradientsMatchFiniteDifferencesInTrainMode) {
    auto norm = make();
    testing::randomize_parameters(*norm);
    testing::expect_gradients_match(testing::check_gradients(*norm, input(1), Mode::train));
}

TEST_P(Conformance, GradientsMatchFiniteDifferencesInEvalMode) {
    auto norm = make();
    testing::randomize_parameters(*norm);
    norm->begin_epoch();
    for (unsigned step = 0; step < 3; ++step)
        norm->forward(input(10 + step), Mode::train, Grad::none);
    norm->end_epoch();  // variants with per-epoch population statistics publish them here
    testing::expect_gradients_match(testing::check_gradients(*norm, input(2), Mode::eval));
}

TEST_P(Conformance, SeveralForwardsThenBackwardsInReverseOrderMatchSeparateCalls) {
    auto stacked = make();
    auto single = make();
    const ArrayD x1 = input(3), x2 = input(4);
    const ArrayD dy1 = random_array(GetParam().shape, 5), dy2 = random_array(GetParam().shape, 6);
    stacked->forward(x1, Mode::train);
    stacked->forward(x2, Mode::train);
    EXPECT_EQ(stacked->saved_contexts(), 2u);
    const ArrayD dx2 = stacked->backward(dy2);
    const ArrayD dx1 = stacked->backward(dy1);
    EXPECT_EQ(stacked->saved_contexts(), 0u);

    single->forward(x1, Mode::train);
    EXPECT_EQ(single->backward(dy1), dx1);
    single->forward(x2, Mode::train);
    EXPECT_EQ(single->backward(dy2), dx2);
    auto p_stacked = stacked->parameters();
    auto p_single = single->parameters();
    ASSERT_EQ(p_stacked.size(), p_single.size());
    for (std::size_t i = 0; i < p_single.size(); ++i)
        EXPECT_TRUE(xt::allclose(*p_stacked[i].grad, *p_single[i].grad, 1e-12, 1e-12))
            << p_single[i].name;
}

// forward(Array&&) lets a layer keep x instead of x̂; nothing observable may change.
TEST_P(Conformance, HandingOverTheInputGivesTheSameBits) {
    for (Mode mode : {Mode::train, Mode::eval}) {
        auto kept = make();
        auto handed = make();
        testing::randomize_parameters(*kept);
        testing::randomize_parameters(*handed);
        // A training step first, so eval mode has running statistics where a layer keeps them.
        for (auto* norm : {kept.get(), handed.get()}) {
            norm->begin_epoch();
            norm->forward(input(1), Mode::train, Grad::none);
            norm->end_epoch();
        }
        const ArrayD x = input(2);
        ArrayD copy = x;
        const ArrayD y_kept = kept->forward(x, mode);
        const ArrayD y_handed = handed->forward(std::move(copy), mode);
        EXPECT_EQ(y_kept, y_handed);
        const ArrayD dy = random_array(GetParam().shape, 3);
        EXPECT_EQ(kept->backward(dy), handed->backward(dy));
        const auto p_kept = kept->parameters();
        const auto p_handed = handed->parameters();
        for (std::size_t i = 0; i < p_kept.size(); ++i)
            EXPECT_EQ(*p_kept[i].grad, *p_handed[i].grad) << p_kept[i].name;
        EXPECT_EQ(handed->saved_contexts(), 0u);
    }
}

TEST_P(Conformance, SpecRoundTripsThroughTheRegistry) {
    auto norm = make();
    auto again = make_normalizer<double>(norm->spec(), kChannels);
    EXPECT_EQ(again->spec(), norm->spec());
    EXPECT_EQ(again->name(), norm->name());
    EXPECT_EQ(norm->num_features(), kChannels);
}

TEST_P(Conformance, FloatAgreesWithDouble) {
    auto norm_d = make();
    auto norm_f = make_normalizer<float>(GetParam().spec, kChannels);
    const ArrayD x = input(7);
    const Array<float> xf = xt::cast<float>(x);
    const ArrayD yd = norm_d->forward(x, Mode::train);
    const Array<float> yf = norm_f->forward(xf, Mode::train);
    EXPECT_TRUE(xt::allclose(xt::cast<double>(yf), yd, 1e-5, 1e-5));
    const ArrayD dy = random_array(GetParam().shape, 8);
    const ArrayD dxd = norm_d->backward(dy);
    const Array<float> dxf = norm_f->backward(xt::cast<float>(dy));
    EXPECT_TRUE(xt::allclose(xt::cast<double>(dxf), dxd, 1e-4, 1e-5));
}

TEST_P(Conformance, RejectsWrongChannelCountNamingLayerAndShapes) {
    auto norm = make();
    Shape wrong = GetParam().shape;
    wrong[1] = kChannels + 1;
    try {
        norm->forward(random_array(wrong, 1), Mode::train);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(norm->name() + "(4)"), std::string::npos) << msg;
        EXPECT_NE(msg.find(format_shape(wrong)), std::string::npos) << msg;
        EXPECT_NE(msg.find("(N, 4"), std::string::npos) << msg;
    }
    EXPECT_EQ(norm->saved_contexts(), 0u);
}

TEST_P(Conformance, RejectsRankOneAndEmptyInput) {
    auto norm = make();
    EXPECT_THROW(norm->forward(ArrayD::from_shape({kChannels}), Mode::train), ShapeError);
    Shape empty = GetParam().shape;
    empty[0] = 0;
    try {
        norm->forward(ArrayD::from_shape(empty), Mode::train);
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("non-empty"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(format_shape(empty)), std::string::npos) << e.what();
    }
}

TEST_P(Conformance, BackwardWithoutForwardIsAStateError) {
    auto norm = make();
    const ArrayD dy = random_array(GetParam().shape, 1);
    try {
        norm->backward(dy);
        FAIL() << "expected StateError";
    } catch (const StateError& e) {
        EXPECT_NE(std::string(e.what()).find("without a matching forward"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find(norm->name()), std::string::npos);
    }
    norm->forward(input(1), Mode::train, Grad::none);
    EXPECT_THROW(norm->backward(dy), StateError);
}

TEST_P(Conformance, BackwardWithMismatchedDyIsAShapeErrorAndKeepsTheContext) {
    auto norm = make();
    norm->forward(input(1), Mode::train);
    Shape other = GetParam().shape;
    other[0] += 1;
    try {
        norm->backward(random_array(other, 2));
        FAIL() << "expected ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find(format_shape(GetParam().shape)), std::string::npos);
        EXPECT_NE(std::string(e.what()).find(format_shape(other)), std::string::npos);
    }
    EXPECT_EQ(norm->saved_contexts(), 1u);
    EXPECT_NO_THROW(norm->backward(random_array(GetParam().shape, 2)));
}

TEST_P(Conformance, NonFiniteInputIsRefusedAndStateIsUntouched) {
    auto norm = make();
    norm->forward(input(1), Mode::train, Grad::none);
    std::vector<ArrayD> before;
    for (auto& b : norm->buffers())
        before.push_back(*b.value);
    std::vector<std::int64_t> counts;
    for (auto& c : norm->counters())
        counts.push_back(*c.value);

    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        ArrayD x = input(2);
        x.data()[x.size() / 2] = bad;
        if (!computes_statistics()) {
            const ArrayD y = norm->forward(x, Mode::train, Grad::none);
            EXPECT_FALSE(std::isfinite(y.data()[x.size() / 2]));  // identity passes it through
            continue;
        }
        EXPECT_THROW(norm->forward(x, Mode::train), NonFiniteError);
        EXPECT_EQ(norm->saved_contexts(), 0u);
        auto buffers = norm->buffers();
        for (std::size_t i = 0; i < buffers.size(); ++i)
            EXPECT_EQ(*buffers[i].value, before[i]);
        auto counters = norm->counters();
        for (std::size_t i = 0; i < counters.size(); ++i)
            EXPECT_EQ(*counters[i].value, counts[i]);
    }
}

// A refused input handed over with forward(Array&&) stays with the caller, unchanged: the layer
// takes it only once its forward has succeeded.
TEST_P(Conformance, AHandedOverInputThatIsRefusedStaysWithTheCaller) {
    Shape wrong = GetParam().shape;
    wrong[1] += 1;
    ArrayD mismatched = random_array(wrong, 4);
    const ArrayD mismatched_before = mismatched;
    EXPECT_THROW(make()->forward(std::move(mismatched), Mode::train), ShapeError);
    EXPECT_EQ(mismatched, mismatched_before);
    if (!computes_statistics()) return;
    for (Mode mode : {Mode::train, Mode::eval}) {
        auto norm = make();
        norm->begin_epoch();
        norm->forward(input(1), Mode::train, Grad::none);
        norm->end_epoch();
        ArrayD x = input(2);
        x.data()[x.size() / 2] = std::numeric_limits<double>::quiet_NaN();
        const ArrayD before = x;
        bool refused = false;
        try {
            norm->forward(std::move(x), mode);
        } catch (const NonFiniteError&) {
            refused = true;
        }
        // Inference with running statistics takes no statistics of the input: NaN passes.
        if (mode == Mode::train) {
            EXPECT_TRUE(refused);
        }
        if (!refused) continue;
        EXPECT_EQ(norm->saved_contexts(), 0u);
        ASSERT_EQ(x.shape(), before.shape()) << int(mode);
        for (std::size_t i = 0; i < x.size(); ++i)
            EXPECT_TRUE(x.data()[i] == before.data()[i] ||
                        (std::isnan(x.data()[i]) && std::isnan(before.data()[i])))
                << "mode " << int(mode) << ", value " << i;
    }
}

TEST_P(Conformance, SamplesInteractExactlyWhenTheVariantUsesBatchStatistics) {
    auto norm = make();
    const ArrayD x = input(3);
    const ArrayD y = norm->forward(x, Mode::train, Grad::none);
    const std::size_t per_sample = x.size() / x.shape()[0];
    if (norm->uses_batch_statistics()) {
        // Changing the last sample changes the first sample's output.
        ArrayD x2 = x;
        for (std::size_t i = x.size() - per_sample; i < x.size(); ++i)
            x2.data()[i] += 5.0;
        const ArrayD y2 = norm->forward(x2, Mode::train, Grad::none);
        double change = 0;
        for (std::size_t i = 0; i < per_sample; ++i)
            change = std::max(change, std::abs(y2.data()[i] - y.data()[i]));
        EXPECT_GT(change, 1e-3);
        return;
    }
    // Each sample alone gives the same output as inside the batch.
    for (std::size_t n = 0; n < x.shape()[0]; ++n) {
        Shape one = GetParam().shape;
        one[0] = 1;
        ArrayD xn = ArrayD::from_shape(one);
        std::copy(x.data() + n * per_sample, x.data() + (n + 1) * per_sample, xn.data());
        if (GetParam().spec == "group_norm(groups=4)" && one.size() == 2) {
            EXPECT_THROW(norm->forward(xn, Mode::train), ShapeError);  // one value per group
            continue;
        }
        const ArrayD yn = norm->forward(xn, Mode::train, Grad::none);
        for (std::size_t i = 0; i < per_sample; ++i)
            EXPECT_NEAR(yn.data()[i], y.data()[n * per_sample + i], 1e-12);
    }
}

INSTANTIATE_TEST_SUITE_P(AllVariants, Conformance, ::testing::ValuesIn(cases()), case_name);

TEST(ConformanceCoverage, EveryRegisteredVariantIsExercised) {
    std::set<std::string> covered;
    for (const auto& spec : specs())
        covered.insert(parse_spec(spec).name);
    for (const auto& v : registered_variants())
        EXPECT_TRUE(covered.count(v.name))
            << v.name << " is registered but not in the conformance list";
}

}  // namespace
}  // namespace normlab
