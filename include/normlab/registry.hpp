#pragma once
// Build a normalizer from a spec string: make_normalizer("group_norm(groups=8)", 64).

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "normlab/normalizer.hpp"
#include "normlab/options.hpp"

namespace normlab {

struct VariantInfo {
    std::string name;
    std::string summary;
    std::vector<OptionInfo> options;  // with their defaults
};

// Throws OptionError for an unknown name (listing the registered ones), an unknown option
// (listing the variant's options), a malformed value or an impossible combination.
template <class T = float>
std::unique_ptr<BasicNormalizer<T>> make_normalizer(const std::string& spec,
                                                    std::size_t num_features);

const std::vector<VariantInfo>& registered_variants();

// Every variant with its options and defaults, as text for --help pages.
std::string describe_variants();

}  // namespace normlab
