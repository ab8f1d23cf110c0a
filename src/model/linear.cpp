#include <cmath>
#include <vector>

#include <xtensor-blas/xblas.hpp>

#include "model/bias_grad.hpp"
#include "model/saved.hpp"
#include "normlab/model/layers.hpp"

namespace normlab::model {

template <class T>
Array<T> init_weight(const Shape& shape, std::size_t fan_in, std::size_t fan_out, Init init,
                     std::mt19937& rng, double stddev) {
    Array<T> w = Array<T>::from_shape(shape);
    if (init == Init::xavier) {
        const double limit = std::sqrt(6.0 / double(fan_in + fan_out));
        std::uniform_real_distribution<double> d(-limit, limit);
        for (auto& v : w)
            v = T(d(rng));
    } else {
        const double s = init == Init::he ? std::sqrt(2.0 / double(fan_in)) : stddev;
        std::normal_distribution<double> d(0.0, s);
        for (auto& v : w)
            v = T(d(rng));
    }
    return w;
}

template Array<float> init_weight<float>(const Shape&, std::size_t, std::size_t, Init,
                                         std::mt19937&, double);
template Array<double> init_weight<double>(const Shape&, std::size_t, std::size_t, Init,
                                           std::mt19937&, double);

template <class T>
Linear<T>::Linear(std::size_t in, std::size_t out, Init init, std::mt19937& rng, double stddev,
                  bool bias)
    : in_(in),
      out_(out),
      has_bias_(bias),
      weight_(init_weight<T>({out, in}, in, out, init, rng, stddev)),
      bias_(xt::zeros<T>({out})),
      weight_grad_(xt::zeros<T>({out, in})),
      bias_grad_(xt::zeros<T>({out})) {}

template <class T>
std::string Linear<T>::name() const {
    return "linear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ")";
}

template <class T>
Array<T> Linear<T>::forward(const Array<T>& x, Mode, Grad grad) {
    const Shape s = shape_of(x);
    if (s.size() != 2 || s[1] != in_ || s[0] == 0)
        throw ShapeError(name() + ": expected input of shape (N, " + std::to_string(in_) +
                         ") with N ≥ 1, got " + format_shape(s));
    Array<T> y = Array<T>::from_shape({s[0], out_});
    xt::blas::gemm(x, weight_, y, false, true);
    if (has_bias_) {
        // Over the storage, so that each row's adds vectorize.
        const T* b = bias_.data();
        for (std::size_t n = 0; n < s[0]; ++n) {
            T* row = y.data() + n * out_;
            for (std::size_t o = 0; o < out_; ++o)
                row[o] += b[o];
        }
    }
    if (grad == Grad::keep) inputs_.push_back(x);
    return y;
}

template <class T>
Array<T> Linear<T>::backward(const Array<T>& dy) {
    if (inputs_.empty()) take_saved(inputs_, name());
    check_dy({inputs_.back().shape()[0], out_}, shape_of(dy), name());
    const Array<T> x = take_saved(inputs_, name());
    xt::blas::gemm(dy, x, weight_grad_, true, false, T(1), T(1));  // dW += dyᵀ·x
    if (has_bias_) add_bias_grad(dy.data(), NcsView{dy.shape()[0], out_, 1}, bias_grad_);
    Array<T> dx = Array<T>::from_shape({dy.shape()[0], in_});
    xt::blas::gemm(dy, weight_, dx);
    return dx;
}

template <class T>
std::vector<ParamRef<T>> Linear<T>::parameters() {
    std::vector<ParamRef<T>> out{{"weight", &weight_, &weight_grad_}};
    if (has_bias_) out.push_back({"bias", &bias_, &bias_grad_});
    return out;
}

template class Linear<float>;
template class Linear<double>;

}  // namespace normlab::model
