#include "rms_norm.hpp"

#include <limits>

namespace normlab {

template <class T>
RmsNorm<T>::RmsNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(kName, canonical_spec(kName, options), num_features, options.affine,
                       options.affine && options.bias, SetSpec{false, num_features}, false,
                       options.eps.value_or(std::numeric_limits<T>::epsilon())),
      options_(options) {
    if (options.bias && !options.affine)
        throw OptionError(this->label() + ": bias=true needs affine=true");
}

template <class T>
Array<T> RmsNorm<T>::forward(const Array<T>& x, Mode /*mode: same in train and eval*/, Grad grad) {
    const NcsView v = this->check_input(x);
    return this->standardize_batch(x, v, grad);
}

template class RmsNorm<float>;
template class RmsNorm<double>;

}  // namespace normlab
