// Spec strings and the registry: parsing, canonical specs, and errors that list what is valid.
#include <gtest/gtest.h>

#include "normlab/normlab.hpp"

namespace normlab {
namespace {

std::string error_of(const std::string& spec, std::size_t channels = 8) {
    try {
        make_normalizer(spec, channels);
    } catch (const OptionError& e) {
        return e.what();
    }
    return "no error";
}

TEST(Registry, UnknownNameListsTheRegisteredNormalizers) {
    const std::string msg = error_of("batchnorm");
    EXPECT_NE(msg.find("unknown normalizer 'batchnorm'"), std::string::npos) << msg;
    for (const auto& v : registered_variants())
        EXPECT_NE(msg.find(v.name), std::string::npos) << msg;
}

TEST(Registry, UnknownOptionListsTheValidOptions) {
    EXPECT_EQ(error_of("batch_norm(momentun=0.1)"),
              "batch_norm: unknown option 'momentun'; valid options: eps, momentum, affine, "
              "track_running_stats");
    EXPECT_EQ(error_of("identity(eps=1)"), "identity: unknown option 'eps'; valid options: none");
}

TEST(Registry, MalformedSpecsAreRefused) {
    for (const char* bad : {"batch_norm(", "batch_norm(eps)", "batch_norm(eps=1e-5,eps=1e-3)",
                            "(eps=1)", "batch_norm(eps=1))", "batch norm", "batch_norm(=1)"})
        EXPECT_NE(error_of(bad), "no error") << bad;
    EXPECT_EQ(error_of("batch_norm(eps=abc)"),
              "batch_norm: option 'eps' expects a finite number, got 'abc'");
    EXPECT_EQ(error_of("batch_norm(affine=maybe)"),
              "batch_norm: option 'affine' expects true or false, got 'maybe'");
    EXPECT_EQ(error_of("group_norm(groups=2.5)"),
              "group_norm: option 'groups' expects an integer, got '2.5'");
}

TEST(Registry, OptionsAreReadAndTheCanonicalSpecListsThemAll) {
    auto bn = make_normalizer(" batch_norm ( momentum = none , eps=1e-3 ) ", 8);
    EXPECT_EQ(bn->spec(),
              "batch_norm(eps=0.001,momentum=none,affine=true,track_running_stats=true)");
    EXPECT_EQ(make_normalizer("layer_norm()", 8)->spec(), "layer_norm(eps=1e-05,affine=true)");
    EXPECT_EQ(make_normalizer("identity", 8)->spec(), "identity");
}

TEST(Registry, DoubleInstancesAreBuiltToo) {
    auto gn = make_normalizer<double>("group_norm(groups=4)", 8);
    EXPECT_EQ(gn->name(), "group_norm");
    EXPECT_EQ(gn->num_features(), 8u);
}

TEST(Registry, DescriptionListsEveryVariantWithItsDefaults) {
    const std::string text = describe_variants();
    for (const auto& v : registered_variants()) {
        EXPECT_NE(text.find(v.name + ": "), std::string::npos);
        for (const auto& o : v.options)
            EXPECT_NE(text.find(o.key + "=" + o.default_value), std::string::npos) << o.key;
    }
    EXPECT_NE(text.find("momentum=0.1"), std::string::npos);
}

TEST(Registry, ZeroFeaturesAndNonPositiveEpsAreRefused) {
    EXPECT_EQ(error_of("layer_norm", 0), "layer_norm: num_features must be at least 1, got 0");
    EXPECT_NE(error_of("layer_norm(eps=0)").find("eps must be > 0"), std::string::npos);
    EXPECT_NE(error_of("batch_norm(eps=-1)").find("eps must be > 0"), std::string::npos);
}

}  // namespace
}  // namespace normlab
