#pragma once
// Build a normalizer from a spec string: make_normalizer("group_norm(groups=8)", 64).

#include <cstddef>
#include <functional>
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

// The built-in variants, then those added by register_variant, in registration order.
const std::vector<VariantInfo>& registered_variants();

// Variants that live outside the core library add themselves here: the MPI-synchronized ones
// (normlab_mpi) need a communicator the core library knows nothing about, so they register a
// factory that captures it. Registering a name again replaces the earlier extra entry (e.g. with
// another communicator); a built-in name is refused with OptionError. Register before building
// layers from several threads: the registry is not locked.
template <class T>
using NormalizerFactory = std::function<std::unique_ptr<BasicNormalizer<T>>(
    std::size_t num_features, const ParsedSpec& spec)>;

void register_variant(VariantInfo info, NormalizerFactory<float> make_float,
                      NormalizerFactory<double> make_double);

// Every variant with its options and defaults, as text for --help pages.
std::string describe_variants();

}  // namespace normlab
