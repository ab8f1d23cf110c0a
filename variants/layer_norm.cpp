#include "layer_norm.hpp"

namespace normlab {

template <class T>
LayerNorm<T>::LayerNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(kName, canonical_spec(kName, options), num_features, options.affine,
                       options.affine, SetSpec{false, num_features}, true, options.eps),
      options_(options) {}

template <class T>
Array<T> LayerNorm<T>::forward(const Array<T>& x, Mode /*mode: same in train and eval*/,
                               Grad grad) {
    const NcsView v = this->check_input(x);
    return this->standardize_batch(x, v, grad);
}

template class LayerNorm<float>;
template class LayerNorm<double>;

}  // namespace normlab
