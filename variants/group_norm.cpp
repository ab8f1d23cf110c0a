#include "group_norm.hpp"

namespace normlab {
namespace {

std::size_t channels_per_group(std::size_t num_features, std::int64_t groups) {
    if (groups < 1 || num_features % std::size_t(groups) != 0)
        throw OptionError("group_norm(" + std::to_string(num_features) +
                          "): groups must be a positive divisor of the " +
                          std::to_string(num_features) +
                          " channels, got groups=" + std::to_string(groups));
    return num_features / std::size_t(groups);
}

}  // namespace

template <class T>
GroupNorm<T>::GroupNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(
          kName, canonical_spec(kName, options), num_features, options.affine, options.affine,
          SetSpec{false, channels_per_group(num_features, options.groups)}, true, options.eps),
      options_(options) {}

template <class T>
Array<T> GroupNorm<T>::forward(const Array<T>& x, Mode /*mode: same in train and eval*/,
                               Grad grad) {
    const NcsView v = this->check_input(x);
    // PyTorch's F.group_norm refuses an input whose (N·C/G)·prod(trailing dims) is 1.
    if (v.n * this->sets().channels_per_set * v.s == 1)
        throw ShapeError(this->label() +
                         ": expected more than 1 value per group, got input of "
                         "shape " +
                         format_shape(shape_of(x)) +
                         " with groups=" + std::to_string(options_.groups));
    return this->standardize_batch(x, v, grad);
}

template class GroupNorm<float>;
template class GroupNorm<double>;

}  // namespace normlab
