// Forward, running statistics, backward and eval output against values computed by PyTorch's
// own layers (tests/data/make_golden.py), to 1e-5 relative in float.
#include <filesystem>

#include <gtest/gtest.h>

#include "normlab/normlab.hpp"

namespace normlab {
namespace {

std::vector<std::string> golden_cases() {
    std::vector<std::string> names;
    for (const auto& entry :
         std::filesystem::directory_iterator(std::string(NORMLAB_TEST_DATA_DIR) + "/golden"))
        if (entry.path().extension() == ".npz") names.push_back(entry.path().stem().string());
    std::sort(names.begin(), names.end());
    return names;
}

// |ours − torch| ≤ 1e-5·|torch| + 1e-6 for every element.
void expect_close(const Tensor& ours, const Tensor& torch, const std::string& what) {
    ASSERT_EQ(shape_of(ours), shape_of(torch)) << what;
    std::size_t bad = 0;
    double worst = 0;
    for (std::size_t i = 0; i < torch.size(); ++i) {
        const double diff = std::abs(double(ours.data()[i]) - double(torch.data()[i]));
        const double allowed = 1e-5 * std::abs(double(torch.data()[i])) + 1e-6;
        if (diff > allowed) ++bad;
        worst = std::max(worst, diff / allowed);
    }
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << torch.size()
                       << " elements outside 1e-5 relative (worst at " << worst
                       << "x the tolerance)";
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, MatchesPyTorch) {
    const auto archive =
        NpzArchive::load(std::string(NORMLAB_TEST_DATA_DIR) + "/golden/" + GetParam() + ".npz");
    const auto spec_bytes = archive.get<std::uint8_t>("spec");
    const std::string spec(spec_bytes.begin(), spec_bytes.end());
    const Tensor x0 = archive.get<float>("x0");
    auto norm = make_normalizer(spec, x0.shape()[1]);
    for (auto& p : norm->parameters())
        *p.value = archive.get<float>(p.name);

    const auto steps = archive.get<std::int64_t>("steps")();
    for (std::int64_t t = 0; t < steps; ++t) {
        const std::string step = std::to_string(t);
        const bool last = t == steps - 1;
        const Tensor y = norm->forward(archive.get<float>("x" + step), Mode::train,
                                       last ? Grad::keep : Grad::none);
        expect_close(y, archive.get<float>("y" + step), spec + " train output, step " + step);
        for (auto& b : norm->buffers())
            expect_close(*b.value, archive.get<float>(b.name + step), spec + " " + b.name + step);
    }
    const Tensor dx = norm->backward(archive.get<float>("dy"));
    expect_close(dx, archive.get<float>("dx"), spec + " dx");
    for (auto& p : norm->parameters())
        expect_close(*p.grad, archive.get<float>("d" + p.name), spec + " d" + p.name);
    expect_close(norm->forward(archive.get<float>("x_eval"), Mode::eval, Grad::none),
                 archive.get<float>("y_eval"), spec + " eval output");
}

INSTANTIATE_TEST_SUITE_P(PyTorch, GoldenTest, ::testing::ValuesIn(golden_cases()),
                         [](const auto& info) { return info.param; });

TEST(GoldenData, EveryCaseIsPresent) {
    EXPECT_GE(golden_cases().size(), 14u);
}

}  // namespace
}  // namespace normlab
