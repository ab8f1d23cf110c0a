#include <xtensor-blas/xblas.hpp>

#include "model/saved.hpp"
#include "normlab/model/layers.hpp"

namespace normlab::model {

template <class T>
Array<T> init_weight(const Shape& shape, std::size_t fan_in, std::size_t fan_out, Init init,
                     std::mt19937& rng, double stddev);

namespace {

struct Geometry {
    std::size_t c, h, w, k, stride, pad, oh, ow;
    std::size_t rows() const { return c * k * k; }
    std::size_t cols() const { return oh * ow; }
};

// cols[(c·k + i)·k + j][oy·ow + ox] = x[c][oy·stride + i − pad][ox·stride + j − pad], or 0.
template <class T>
void im2col(const T* x, const Geometry& g, T* cols) {
    for (std::size_t c = 0; c < g.c; ++c)
        for (std::size_t i = 0; i < g.k; ++i)
            for (std::size_t j = 0; j < g.k; ++j) {
                T* row = cols + ((c * g.k + i) * g.k + j) * g.cols();
                for (std::size_t oy = 0; oy < g.oh; ++oy) {
                    const std::ptrdiff_t y = std::ptrdiff_t(oy * g.stride + i) - std::ptrdiff_t(g.pad);
                    for (std::size_t ox = 0; ox < g.ow; ++ox) {
                        const std::ptrdiff_t xx =
                            std::ptrdiff_t(ox * g.stride + j) - std::ptrdiff_t(g.pad);
                        const bool inside = y >= 0 && y < std::ptrdiff_t(g.h) && xx >= 0 &&
                                            xx < std::ptrdiff_t(g.w);
                        row[oy * g.ow + ox] = inside ? x[(c * g.h + std::size_t(y)) * g.w + std::size_t(xx)] : T(0);
                    }
                }
            }
}

// The adjoint of im2col: adds every column entry back to the input position it came from.
template <class T>
void col2im(const T* cols, const Geometry& g, T* dx) {
    for (std::size_t c = 0; c < g.c; ++c)
        for (std::size_t i = 0; i < g.k; ++i)
            for (std::size_t j = 0; j < g.k; ++j) {
                const T* row = cols + ((c * g.k + i) * g.k + j) * g.cols();
                for (std::size_t oy = 0; oy < g.oh; ++oy) {
                    const std::ptrdiff_t y = std::ptrdiff_t(oy * g.stride + i) - std::ptrdiff_t(g.pad);
                    if (y < 0 || y >= std::ptrdiff_t(g.h)) continue;
                    for (std::size_t ox = 0; ox < g.ow; ++ox) {
                        const std::ptrdiff_t xx =
                            std::ptrdiff_t(ox * g.stride + j) - std::ptrdiff_t(g.pad);
                        if (xx >= 0 && xx < std::ptrdiff_t(g.w))
                            dx[(c * g.h + std::size_t(y)) * g.w + std::size_t(xx)] += row[oy * g.ow + ox];
                    }
                }
            }
}

}  // namespace

template <class T>
Conv2d<T>::Conv2d(std::size_t in, std::size_t out, std::size_t kernel, std::size_t stride,
                  std::size_t padding, Init init, std::mt19937& rng, bool bias)
    : in_(in),
      out_(out),
      kernel_(kernel),
      stride_(stride),
      padding_(padding),
      has_bias_(bias),
      weight_(init_weight<T>({out, in, kernel, kernel}, in * kernel * kernel,
                             out * kernel * kernel, init, rng, 0.01)),
      bias_(xt::zeros<T>({out})),
      weight_grad_(xt::zeros<T>({out, in, kernel, kernel})),
      bias_grad_(xt::zeros<T>({out})) {
    if (kernel == 0 || stride == 0)
        throw OptionError(name() + ": kernel and stride must be at least 1");
}

template <class T>
std::string Conv2d<T>::name() const {
    return "conv2d(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", " +
           std::to_string(kernel_) + "x" + std::to_string(kernel_) + ", stride " +
           std::to_string(stride_) + ", pad " + std::to_string(padding_) + ")";
}

template <class T>
Array<T> Conv2d<T>::forward(const Array<T>& x, Mode, Grad grad) {
    const Shape s = shape_of(x);
    if (s.size() != 4 || s[1] != in_ || s[0] == 0 || s[2] + 2 * padding_ < kernel_ ||
        s[3] + 2 * padding_ < kernel_)
        throw ShapeError(name() + ": expected input of shape (N, " + std::to_string(in_) +
                         ", H, W) with H, W + 2·pad ≥ " + std::to_string(kernel_) + ", got " +
                         format_shape(s));
    const Geometry g{in_, s[2], s[3], kernel_, stride_, padding_,
                     (s[2] + 2 * padding_ - kernel_) / stride_ + 1,
                     (s[3] + 2 * padding_ - kernel_) / stride_ + 1};
    Array<T> y = Array<T>::from_shape({s[0], out_, g.oh, g.ow});
    Array<T> cols = Array<T>::from_shape({g.rows(), g.cols()});
    Array<T> out_n = Array<T>::from_shape({out_, g.cols()});
    weight_.reshape({out_, g.rows()});
    for (std::size_t n = 0; n < s[0]; ++n) {
        im2col(x.data() + n * in_ * g.h * g.w, g, cols.data());
        xt::blas::gemm(weight_, cols, out_n);
        T* yn = y.data() + n * out_ * g.cols();
        for (std::size_t o = 0; o < out_; ++o)
            for (std::size_t p = 0; p < g.cols(); ++p)
                yn[o * g.cols() + p] = out_n(o, p) + (has_bias_ ? bias_(o) : T(0));
    }
    weight_.reshape({out_, in_, kernel_, kernel_});
    if (grad == Grad::keep) inputs_.push_back(x);
    return y;
}

template <class T>
Array<T> Conv2d<T>::backward(const Array<T>& dy) {
    if (inputs_.empty()) take_saved(inputs_, name());
    const Shape s = shape_of(inputs_.back());
    const Geometry g{in_, s[2], s[3], kernel_, stride_, padding_,
                     (s[2] + 2 * padding_ - kernel_) / stride_ + 1,
                     (s[3] + 2 * padding_ - kernel_) / stride_ + 1};
    check_dy({s[0], out_, g.oh, g.ow}, shape_of(dy), name());
    const Array<T> x = take_saved(inputs_, name());
    Array<T> dx = xt::zeros<T>(s);
    Array<T> cols = Array<T>::from_shape({g.rows(), g.cols()});
    Array<T> dcols = Array<T>::from_shape({g.rows(), g.cols()});
    Array<T> dy_n = Array<T>::from_shape({out_, g.cols()});
    weight_.reshape({out_, g.rows()});
    weight_grad_.reshape({out_, g.rows()});
    for (std::size_t n = 0; n < s[0]; ++n) {
        std::copy(dy.data() + n * out_ * g.cols(), dy.data() + (n + 1) * out_ * g.cols(),
                  dy_n.data());
        im2col(x.data() + n * in_ * g.h * g.w, g, cols.data());
        xt::blas::gemm(dy_n, cols, weight_grad_, false, true, T(1), T(1));  // dW += dy·colsᵀ
        xt::blas::gemm(weight_, dy_n, dcols, true, false);                 // dcols = Wᵀ·dy
        col2im(dcols.data(), g, dx.data() + n * in_ * g.h * g.w);
        if (has_bias_)
            for (std::size_t o = 0; o < out_; ++o)
                for (std::size_t p = 0; p < g.cols(); ++p) bias_grad_(o) += dy_n(o, p);
    }
    weight_.reshape({out_, in_, kernel_, kernel_});
    weight_grad_.reshape({out_, in_, kernel_, kernel_});
    return dx;
}

template <class T>
std::vector<ParamRef<T>> Conv2d<T>::parameters() {
    std::vector<ParamRef<T>> out{{"weight", &weight_, &weight_grad_}};
    if (has_bias_) out.push_back({"bias", &bias_, &bias_grad_});
    return out;
}

template class Conv2d<float>;
template class Conv2d<double>;

}  // namespace normlab::model
