// Per-time-step statistics (spec §7.1): one set of running statistics per step, γ and β shared,
// the last step's statistics reused beyond T_max at inference.

#include <gtest/gtest.h>

#include "scratch_path.hpp"

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"
#include "normlab/per_step.hpp"
#include "variants/batch_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

TEST(PerStep, EachStepKeepsItsOwnRunningStatistics) {
    PerStepNormalizer<double> norm("batch_norm(momentum=0.5)", 2, 3);
    for (std::size_t t = 0; t < 3; ++t) {
        norm.set_step(t);
        norm.forward(random_array({16, 2}, unsigned(t), 10.0 * double(t), 1.0), Mode::train,
                     Grad::none);
    }
    auto buffers = norm.buffers();
    ASSERT_EQ(buffers.size(), 6u);
    EXPECT_EQ(buffers[0].name, "step0.running_mean");
    EXPECT_EQ(buffers[4].name, "step2.running_mean");
    // One update with momentum 0.5 from 0: half of that step's batch mean (≈ 0, 10, 20).
    EXPECT_NEAR((*buffers[0].value)(0), 0.0, 0.5);
    EXPECT_NEAR((*buffers[2].value)(0), 5.0, 0.5);
    EXPECT_NEAR((*buffers[4].value)(0), 10.0, 0.5);
}

TEST(PerStep, SharedParametersCollectTheGradientsOfEveryStep) {
    PerStepNormalizer<double> norm("batch_norm", 3, 4);
    BatchNorm<double> single(3);
    auto shared = norm.parameters();
    auto plain = single.parameters();
    for (std::size_t i = 0; i < shared.size(); ++i)
        *shared[i].value = *plain[i].value = random_array({3}, 50 + unsigned(i), 1.0, 0.3);
    std::vector<ArrayD> xs, dys, dxs(4);
    for (unsigned t = 0; t < 4; ++t) {
        xs.push_back(random_array({5, 3, 2}, t));
        dys.push_back(random_array({5, 3, 2}, 10 + t));
        norm.set_step(t);
        norm.forward(xs[t], Mode::train);
    }
    EXPECT_EQ(norm.saved_contexts(), 4u);
    for (unsigned t = 4; t-- > 0;)
        dxs[t] = norm.backward(dys[t]);
    for (unsigned t = 0; t < 4; ++t) {
        single.forward(xs[t], Mode::train);
        EXPECT_TRUE(xt::allclose(single.backward(dys[t]), dxs[t], 1e-13, 1e-13)) << t;
    }
    for (std::size_t i = 0; i < shared.size(); ++i)
        EXPECT_TRUE(xt::allclose(*shared[i].grad, *plain[i].grad, 1e-12, 1e-12)) << shared[i].name;
}

TEST(PerStep, InferenceBeyondTheLastStepUsesItsStatistics) {
    PerStepNormalizer<double> norm("batch_norm", 2, 3);
    for (std::size_t t = 0; t < 3; ++t) {
        norm.set_step(t);
        norm.forward(random_array({8, 2}, unsigned(t), double(t), 1.0 + t), Mode::train,
                     Grad::none);
    }
    const ArrayD x = random_array({4, 2}, 9);
    norm.set_step(2);
    const ArrayD last = norm.forward(x, Mode::eval, Grad::none);
    norm.set_step(7);
    EXPECT_EQ(norm.forward(x, Mode::eval, Grad::none), last);
    norm.set_step(1);
    EXPECT_NE(norm.forward(x, Mode::eval, Grad::none), last);
    norm.set_step(3);
    EXPECT_THROW(norm.forward(x, Mode::train), ShapeError);
    EXPECT_THROW((PerStepNormalizer<double>("batch_norm", 2, 0)), OptionError);
}

TEST(PerStep, GradientsMatchFiniteDifferences) {
    PerStepNormalizer<double> norm("layer_norm", 4, 2);
    testing::randomize_parameters(norm);
    norm.set_step(1);
    testing::expect_gradients_match(
        testing::check_gradients(norm, random_array({3, 4, 2}, 4), Mode::train));
}

TEST(PerStep, StateRoundTripsWithEveryStep) {
    PerStepNormalizer<float> a("batch_norm", 2, 3), b("batch_norm", 2, 3);
    for (std::size_t t = 0; t < 3; ++t) {
        a.set_step(t);
        a.forward(xt::cast<float>(random_array({6, 2}, unsigned(t), double(t))), Mode::train,
                  Grad::none);
    }
    const auto path = testing::scratch_path("normlab_per_step_", "state.npz");
    save_state(a, path);
    load_state(b, path);
    auto ba = a.buffers(), bb = b.buffers();
    for (std::size_t i = 0; i < ba.size(); ++i)
        EXPECT_EQ(*ba[i].value, *bb[i].value);
    auto ca = a.counters(), cb = b.counters();
    for (std::size_t i = 0; i < ca.size(); ++i)
        EXPECT_EQ(*ca[i].value, *cb[i].value);
}

}  // namespace
}  // namespace normlab
