#include <cmath>

#include "model/saved.hpp"
#include "normlab/model/layers.hpp"
#include "normlab/registry.hpp"

namespace normlab::model {

template <class T>
std::string Elementwise<T>::name() const {
    return kind_ == Activation::relu ? "relu" : kind_ == Activation::sigmoid ? "sigmoid" : "tanh";
}

template <class T>
Array<T> Elementwise<T>::forward(const Array<T>& x, Mode, Grad grad) {
    Array<T> y = Array<T>::from_shape(x.shape());
    const T* in = x.data();
    T* out = y.data();
    const std::size_t n = x.size();
    switch (kind_) {
        case Activation::relu:
            for (std::size_t i = 0; i < n; ++i)
                out[i] = in[i] > T(0) ? in[i] : T(0);
            break;
        case Activation::sigmoid:
            // Written so that neither branch overflows exp().
            for (std::size_t i = 0; i < n; ++i)
                out[i] = in[i] >= T(0) ? T(1) / (T(1) + std::exp(-in[i]))
                                       : std::exp(in[i]) / (T(1) + std::exp(in[i]));
            break;
        case Activation::tanh:
            for (std::size_t i = 0; i < n; ++i)
                out[i] = std::tanh(in[i]);
            break;
    }
    if (grad == Grad::keep) saved_.push_back(kind_ == Activation::relu ? x : y);
    return y;
}

template <class T>
Array<T> Elementwise<T>::backward(const Array<T>& dy) {
    if (saved_.empty()) take_saved(saved_, name());
    check_dy(shape_of(saved_.back()), shape_of(dy), name());
    const Array<T> s = take_saved(saved_, name());
    Array<T> dx = Array<T>::from_shape(dy.shape());
    const std::size_t n = dy.size();
    for (std::size_t i = 0; i < n; ++i) {
        const T v = s.data()[i], g = dy.data()[i];
        dx.data()[i] = kind_ == Activation::relu      ? (v > T(0) ? g : T(0))
                       : kind_ == Activation::sigmoid ? g * v * (T(1) - v)
                                                      : g * (T(1) - v * v);
    }
    return dx;
}

template <class T>
Dropout<T>::Dropout(double p, std::uint64_t seed) : p_(p), seed_(seed) {
    if (!(p >= 0 && p < 1))
        throw OptionError("dropout: p must lie in [0, 1), got " + std::to_string(p));
}

template <class T>
std::string Dropout<T>::name() const {
    return "dropout(" + std::to_string(p_) + ")";
}

template <class T>
Array<T> Dropout<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    if (mode == Mode::eval || p_ == 0) {
        if (grad == Grad::keep) masks_.push_back(xt::ones<T>(x.shape()));
        return x;
    }
    std::mt19937_64 rng(seed_ ^ (0x9e3779b97f4a7c15ULL * std::uint64_t(++calls_)));
    std::bernoulli_distribution keep(1.0 - p_);
    Array<T> mask = Array<T>::from_shape(x.shape());
    const T scale = T(1.0 / (1.0 - p_));
    for (auto& m : mask)
        m = keep(rng) ? scale : T(0);
    Array<T> y = x * mask;
    if (grad == Grad::keep) masks_.push_back(std::move(mask));
    return y;
}

template <class T>
Array<T> Dropout<T>::backward(const Array<T>& dy) {
    if (masks_.empty()) take_saved(masks_, name());
    check_dy(shape_of(masks_.back()), shape_of(dy), name());
    const Array<T> mask = take_saved(masks_, name());
    return dy * mask;
}

template <class T>
NormLayer<T>::NormLayer(const std::string& spec, std::size_t num_features)
    : norm_(make_normalizer<T>(spec, num_features)) {}

template class Elementwise<float>;
template class Elementwise<double>;
template class Dropout<float>;
template class Dropout<double>;
template class NormLayer<float>;
template class NormLayer<double>;

}  // namespace normlab::model
