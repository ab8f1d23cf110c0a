// GroupNorm specifics (spec §5): the LayerNorm and InstanceNorm equivalences, group validation.
#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "normlab/registry.hpp"
#include "variants/group_norm.hpp"
#include "variants/instance_norm.hpp"
#include "variants/layer_norm.hpp"

namespace normlab {
namespace {

using testing::ArrayD;
using testing::random_array;

// Forward and backward of two layers with the same γ, β must agree exactly.
void expect_same_layer(BasicNormalizer<double>& a, BasicNormalizer<double>& b, const Shape& shape) {
    auto pa = a.parameters();
    auto pb = b.parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i)
        *pa[i].value = *pb[i].value = random_array({a.num_features()}, 40 + unsigned(i), 1, 0.5);
    const ArrayD x = random_array(shape, 1, 2.0, 3.0);
    const ArrayD dy = random_array(shape, 2);
    EXPECT_EQ(a.forward(x, Mode::train), b.forward(x, Mode::train)) << format_shape(shape);
    EXPECT_EQ(a.backward(dy), b.backward(dy)) << format_shape(shape);
    for (std::size_t i = 0; i < pa.size(); ++i)
        EXPECT_EQ(*pa[i].grad, *pb[i].grad);
}

TEST(GroupNorm, GroupNormWithOneGroupEqualsLayerNorm) {
    for (const Shape& shape : {Shape{5, 6}, Shape{3, 6, 7}, Shape{2, 6, 3, 4}}) {
        GroupNorm<double> gn(6, {.groups = 1});
        LayerNorm<double> ln(6);
        expect_same_layer(gn, ln, shape);
    }
}

TEST(GroupNorm, GroupNormWithOneChannelPerGroupEqualsInstanceNorm) {
    for (const Shape& shape : {Shape{3, 6, 7}, Shape{2, 6, 3, 4}}) {
        GroupNorm<double> gn(6, {.groups = 6});
        InstanceNorm<double> in(6, {.affine = true});
        expect_same_layer(gn, in, shape);
    }
}

TEST(GroupNorm, GroupsThatDoNotDivideTheChannelsAreRefused) {
    try {
        make_normalizer("group_norm(groups=4)", 6);
        FAIL() << "expected OptionError";
    } catch (const OptionError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "group_norm(6): groups must be a positive divisor of the 6 channels, got "
                  "groups=4");
    }
    EXPECT_THROW(make_normalizer("group_norm(groups=0)", 6), OptionError);
    EXPECT_THROW(make_normalizer("group_norm(groups=-2)", 6), OptionError);
    EXPECT_THROW(make_normalizer("group_norm", 48), OptionError);  // default G = 32
    EXPECT_NE(make_normalizer("group_norm", 64)->spec().find("groups=32"), std::string::npos);
}

TEST(GroupNorm, AGroupOfOneValueInTotalIsRefusedLikePyTorch) {
    GroupNorm<float> gn(4, {.groups = 4});
    EXPECT_THROW(gn.forward(xt::ones<float>({1, 4}), Mode::train), ShapeError);
    EXPECT_NO_THROW(gn.forward(xt::ones<float>({2, 4}), Mode::train, Grad::none));
}

}  // namespace
}  // namespace normlab
