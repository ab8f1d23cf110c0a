#include <xtensor-blas/xblas.hpp>

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/parallel.hpp"
#include "model/bias_grad.hpp"
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

// The output columns ox of kernel column j whose input column ox·stride + j − pad lies inside
// [0, w): [first, end), empty when none does. Outside it the input is padding.
std::pair<std::size_t, std::size_t> inside_columns(const Geometry& g, std::size_t j) {
    const std::size_t first = g.pad > j ? (g.pad - j + g.stride - 1) / g.stride : 0;
    if (g.w + g.pad < j + 1) return {0, 0};
    const std::size_t end = std::min(g.ow, (g.w + g.pad - j - 1) / g.stride + 1);
    return {std::min(first, end), end};
}

// cols[(c·k + i)·k + j][oy·ow + ox] = x[c][oy·stride + i − pad][ox·stride + j − pad], or 0;
// rows are `ld` apart, so the columns of a whole batch sit side by side for one GEMM. Each row
// of output positions is zeros, a run copied from one input row, zeros: a test of both bounds
// per value made this copy a sixth of the CNN's training time.
template <class T>
void im2col(const T* x, const Geometry& g, T* cols, std::size_t ld) {
    for (std::size_t c = 0; c < g.c; ++c)
        for (std::size_t i = 0; i < g.k; ++i)
            for (std::size_t j = 0; j < g.k; ++j) {
                T* row = cols + ((c * g.k + i) * g.k + j) * ld;
                const auto [first, end] = inside_columns(g, j);
                for (std::size_t oy = 0; oy < g.oh; ++oy) {
                    T* out = row + oy * g.ow;
                    const std::size_t y = oy * g.stride + i;
                    if (y < g.pad || y - g.pad >= g.h) {
                        std::fill_n(out, g.ow, T(0));
                        continue;
                    }
                    // Output column ox reads input column ox·stride + j − pad, ≥ 0 from first on.
                    const T* from = x + (c * g.h + y - g.pad) * g.w;
                    std::fill_n(out, first, T(0));
                    if (g.stride == 1)
                        std::copy_n(from + (first + j - g.pad), end - first, out + first);
                    else
                        for (std::size_t ox = first; ox < end; ++ox)
                            out[ox] = from[ox * g.stride + j - g.pad];
                    std::fill_n(out + end, g.ow - end, T(0));
                }
            }
}

// The adjoint of im2col: adds every column entry back to the input position it came from.
template <class T>
void col2im(const T* cols, const Geometry& g, T* dx, std::size_t ld) {
    for (std::size_t c = 0; c < g.c; ++c)
        for (std::size_t i = 0; i < g.k; ++i)
            for (std::size_t j = 0; j < g.k; ++j) {
                const T* row = cols + ((c * g.k + i) * g.k + j) * ld;
                const auto [first, end] = inside_columns(g, j);
                for (std::size_t oy = 0; oy < g.oh; ++oy) {
                    const std::size_t y = oy * g.stride + i;
                    if (y < g.pad || y - g.pad >= g.h) continue;
                    const T* from = row + oy * g.ow;
                    T* to = dx + (c * g.h + y - g.pad) * g.w;
                    for (std::size_t ox = first; ox < end; ++ox)
                        to[ox * g.stride + j - g.pad] += from[ox];
                }
            }
}

// The geometry of an input of shape s = (N, C, H, W), already checked.
Geometry geometry(std::size_t channels, const Shape& s, std::size_t kernel, std::size_t stride,
                  std::size_t pad) {
    return {channels,
            s[2],
            s[3],
            kernel,
            stride,
            pad,
            (s[2] + 2 * pad - kernel) / stride + 1,
            (s[3] + 2 * pad - kernel) / stride + 1};
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
      weight_(init_weight<T>({out, in, kernel, kernel}, in * kernel * kernel, out * kernel * kernel,
                             init, rng, 0.01)),
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
    const Geometry g = geometry(in_, s, kernel_, stride_, padding_);
    // One GEMM for the whole batch: columns of sample n occupy [n·P, (n+1)·P).
    const std::size_t batch = s[0], positions = g.cols(), ld = batch * positions;
    // A team of threads costs more than copying a few small images.
    const bool parallel = batch > 1 && ld * g.rows() >= (std::size_t(1) << 16);
    Array<T> cols = Array<T>::from_shape({g.rows(), ld});
    Array<T> out_all = Array<T>::from_shape({out_, ld});
    kernels::parallel_for(batch, parallel, [&](std::size_t n) {
        im2col(x.data() + n * in_ * g.h * g.w, g, cols.data() + n * positions, ld);
    });
    weight_.reshape({out_, g.rows()});
    xt::blas::gemm(weight_, cols, out_all);
    weight_.reshape({out_, in_, kernel_, kernel_});
    Array<T> y = Array<T>::from_shape({batch, out_, g.oh, g.ow});
    const T* src = out_all.data();
    T* dst = y.data();
    kernels::parallel_for(batch, parallel, [&](std::size_t n) {
        for (std::size_t o = 0; o < out_; ++o) {
            const T b = has_bias_ ? bias_.data()[o] : T(0);
            const T* from = src + o * ld + n * positions;
            T* to = dst + (n * out_ + o) * positions;
            for (std::size_t p = 0; p < positions; ++p)
                to[p] = from[p] + b;
        }
    });
    if (grad == Grad::keep) inputs_.push_back(x);
    return y;
}

template <class T>
Array<T> Conv2d<T>::backward(const Array<T>& dy) {
    if (inputs_.empty()) take_saved(inputs_, name());
    const Shape s = shape_of(inputs_.back());
    const Geometry g = geometry(in_, s, kernel_, stride_, padding_);
    check_dy({s[0], out_, g.oh, g.ow}, shape_of(dy), name());
    const Array<T> x = take_saved(inputs_, name());
    const std::size_t batch = s[0], positions = g.cols(), ld = batch * positions;
    // A team of threads costs more than copying a few small images.
    const bool parallel = batch > 1 && ld * g.rows() >= (std::size_t(1) << 16);
    Array<T> cols = Array<T>::from_shape({g.rows(), ld});
    Array<T> dy_all = Array<T>::from_shape({out_, ld});
    Array<T> dcols = Array<T>::from_shape({g.rows(), ld});
    kernels::parallel_for(batch, parallel, [&](std::size_t n) {
        im2col(x.data() + n * in_ * g.h * g.w, g, cols.data() + n * positions, ld);
        for (std::size_t o = 0; o < out_; ++o)
            std::copy_n(dy.data() + (n * out_ + o) * positions, positions,
                        dy_all.data() + o * ld + n * positions);
    });
    weight_.reshape({out_, g.rows()});
    weight_grad_.reshape({out_, g.rows()});
    xt::blas::gemm(dy_all, cols, weight_grad_, false, true, T(1), T(1));  // dW += dy·colsᵀ
    xt::blas::gemm(weight_, dy_all, dcols, true, false);                  // dcols = Wᵀ·dy
    Array<T> dx = xt::zeros<T>(s);
    kernels::parallel_for(batch, parallel, [&](std::size_t n) {
        col2im(dcols.data() + n * positions, g, dx.data() + n * in_ * g.h * g.w, ld);
    });
    // dy_all holds each output channel's values of the whole batch in one row.
    if (has_bias_) add_bias_grad(dy_all.data(), NcsView{1, out_, ld}, bias_grad_);
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
