// Saving and restoring a normalizer: bit-exact round trips for every variant, and refusal of
// mismatched, truncated or corrupt files without touching the layer.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "scratch_path.hpp"

#include "gradient_check.hpp"
#include "normlab/normlab.hpp"

namespace normlab {
namespace {

std::string scratch(const std::string& name) {
    return testing::scratch_path("normlab_state_", name);
}

// A trained-looking layer: random parameters, a few training steps of running statistics.
std::unique_ptr<Normalizer> trained(const std::string& spec, std::size_t channels) {
    auto norm = make_normalizer(spec, channels);
    for (auto& p : norm->parameters())
        *p.value = xt::cast<float>(testing::random_array(shape_of(*p.value), 5, 1.0, 0.3));
    for (unsigned step = 0; step < 3; ++step)
        norm->forward(xt::cast<float>(testing::random_array({4, channels, 5}, step, 2.0, 3.0)),
                      Mode::train, Grad::none);
    return norm;
}

class StateRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(StateRoundTrip, SaveThenLoadIsBitExact) {
    auto norm = trained(GetParam(), 4);
    const std::string path = scratch("roundtrip.npz");
    save_state(*norm, path);

    auto fresh = make_normalizer(GetParam(), 4);
    load_state(*fresh, path);
    auto rebuilt = load_normalizer(path);
    for (auto* other : {fresh.get(), rebuilt.get()}) {
        EXPECT_EQ(other->spec(), norm->spec());
        auto pa = norm->parameters(), pb = other->parameters();
        for (std::size_t i = 0; i < pa.size(); ++i)
            EXPECT_EQ(std::memcmp(pa[i].value->data(), pb[i].value->data(),
                                  pa[i].value->size() * sizeof(float)),
                      0);
        auto ba = norm->buffers(), bb = other->buffers();
        ASSERT_EQ(ba.size(), bb.size());
        for (std::size_t i = 0; i < ba.size(); ++i)
            EXPECT_EQ(*ba[i].value, *bb[i].value);
        auto ca = norm->counters(), cb = other->counters();
        ASSERT_EQ(ca.size(), cb.size());
        for (std::size_t i = 0; i < ca.size(); ++i)
            EXPECT_EQ(*ca[i].value, *cb[i].value);
        const Tensor x = xt::cast<float>(testing::random_array({2, 4, 5}, 9));
        EXPECT_EQ(other->forward(x, Mode::eval, Grad::none),
                  norm->forward(x, Mode::eval, Grad::none));
    }
}

INSTANTIATE_TEST_SUITE_P(Variants, StateRoundTrip,
                         ::testing::Values("identity", "batch_norm", "batch_norm(momentum=none)",
                                           "layer_norm",
                                           "instance_norm(affine=true,track_running_stats=true)",
                                           "group_norm(groups=2)", "rms_norm(bias=true)"),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(StateFiles, AFileOfAnotherLayerIsRefusedAndNothingChanges) {
    auto bn = trained("batch_norm", 4);
    const std::string path = scratch("mismatch.npz");
    save_state(*bn, path);

    auto other_momentum = trained("batch_norm(momentum=0.5)", 4);
    const Tensor before = *other_momentum->buffers()[0].value;
    try {
        load_state(*other_momentum, path);
        FAIL() << "expected StateError";
    } catch (const StateError& e) {
        EXPECT_NE(std::string(e.what()).find("momentum=0.5"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("momentum=0.1"), std::string::npos) << e.what();
    }
    EXPECT_EQ(*other_momentum->buffers()[0].value, before);

    auto wider = make_normalizer("batch_norm", 5);
    EXPECT_THROW(load_state(*wider, path), StateError);
    auto as_double = make_normalizer<double>("batch_norm", 4);
    EXPECT_THROW(load_state(*as_double, path), IoError);  // float32 members
}

TEST(StateFiles, TruncatedOrMissingFilesAreRefusedAndNothingChanges) {
    auto bn = trained("batch_norm", 4);
    const std::string path = scratch("truncated.npz");
    save_state(*bn, path);
    std::string bytes;
    {
        std::ifstream in(path, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    auto target = make_normalizer("batch_norm", 4);
    for (std::size_t keep : {bytes.size() / 3, bytes.size() - 30}) {
        std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, keep);
        EXPECT_THROW(load_state(*target, path), IoError) << keep;
        EXPECT_EQ(*target->buffers()[1].value, xt::ones<float>({4}));
        EXPECT_EQ(*target->counters()[0].value, 0);
    }
    std::remove(path.c_str());
    EXPECT_THROW(load_state(*target, path), IoError);
    EXPECT_THROW(load_normalizer(path), IoError);
}

TEST(StateFiles, SavingDoesNotLeaveATemporaryFile) {
    auto ln = trained("layer_norm", 4);
    const std::string path = scratch("atomic.npz");
    save_state(*ln, path);
    save_state(*ln, path);
    EXPECT_TRUE(std::filesystem::exists(path));
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

}  // namespace
}  // namespace normlab
