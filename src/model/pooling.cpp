#include <cstdint>

#include "kernels/moments.hpp"
#include "kernels/parallel.hpp"
#include "model/saved.hpp"
#include "normlab/model/layers.hpp"

namespace normlab::model {

template <class T>
std::string Pool2d<T>::name() const {
    return std::string(kind_ == Pool::max ? "max" : "avg") + "_pool(" + std::to_string(kernel_) +
           ")";
}

template <class T>
Array<T> Pool2d<T>::forward(const Array<T>& x, Mode, Grad grad) {
    const Shape s = shape_of(x);
    if (s.size() != 4 || s[0] == 0 || s[2] % kernel_ != 0 || s[3] % kernel_ != 0)
        throw ShapeError(name() +
                         ": expected input of shape (N, C, H, W) with H and W multiples "
                         "of " +
                         std::to_string(kernel_) + ", got " + format_shape(s));
    const std::size_t planes = s[0] * s[1], h = s[2], w = s[3], oh = h / kernel_, ow = w / kernel_;
    Array<T> y = Array<T>::from_shape({s[0], s[1], oh, ow});
    Saved saved{s, {}};
    if (kind_ == Pool::max) saved.argmax.resize(y.size());
    const T* in = x.data();
    T* out = y.data();
    std::uint32_t* argmax = saved.argmax.data();
    const std::size_t k = kernel_;
    // Planes split between the threads from the kernels' threshold on, the kind tested once per
    // window: tested per value on one thread, max pooling took 8% of the CNN's training time.
    // Max: the first of the window's largest values (a NaN first stays: nothing compares above).
    kernels::parallel_for(planes, x.size() >= kernels::kParallelMin, [&](std::size_t p) {
        for (std::size_t oy = 0; oy < oh; ++oy)
            for (std::size_t ox = 0; ox < ow; ++ox) {
                const std::size_t corner = (p * h + oy * k) * w + ox * k;
                const std::size_t o = (p * oh + oy) * ow + ox;
                if (kind_ == Pool::max) {
                    T best = in[corner];
                    std::size_t where = corner;
                    for (std::size_t i = 0; i < k; ++i)
                        for (std::size_t j = 0; j < k; ++j)
                            if (in[corner + i * w + j] > best) {
                                best = in[corner + i * w + j];
                                where = corner + i * w + j;
                            }
                    out[o] = best;
                    argmax[o] = std::uint32_t(where);
                } else {
                    T sum = T(0);
                    for (std::size_t i = 0; i < k; ++i)
                        for (std::size_t j = 0; j < k; ++j)
                            sum += in[corner + i * w + j];
                    out[o] = sum / T(k * k);
                }
            }
    });
    if (grad == Grad::keep) saved_.push_back(std::move(saved));
    return y;
}

template <class T>
Array<T> Pool2d<T>::backward(const Array<T>& dy) {
    if (saved_.empty()) take_saved(saved_, name());
    const Shape s = saved_.back().shape;
    check_dy({s[0], s[1], s[2] / kernel_, s[3] / kernel_}, shape_of(dy), name());
    const Saved saved = take_saved(saved_, name());
    Array<T> dx = xt::zeros<T>(s);
    if (kind_ == Pool::max) {
        for (std::size_t i = 0; i < dy.size(); ++i)
            dx.data()[saved.argmax[i]] += dy.data()[i];
        return dx;
    }
    const std::size_t h = s[2], w = s[3], oh = h / kernel_, ow = w / kernel_;
    const T share = T(1) / T(kernel_ * kernel_);
    for (std::size_t p = 0; p < s[0] * s[1]; ++p)
        for (std::size_t y = 0; y < h; ++y)
            for (std::size_t x = 0; x < w; ++x)
                dx.data()[(p * h + y) * w + x] =
                    dy.data()[(p * oh + y / kernel_) * ow + x / kernel_] * share;
    return dx;
}

template <class T>
Array<T> GlobalAvgPool<T>::forward(const Array<T>& x, Mode, Grad grad) {
    const Shape s = shape_of(x);
    if (s.size() != 4 || s[0] == 0)
        throw ShapeError(name() + ": expected input of shape (N, C, H, W), got " + format_shape(s));
    const std::size_t planes = s[0] * s[1], hw = s[2] * s[3];
    Array<T> y = Array<T>::from_shape({s[0], s[1]});
    for (std::size_t p = 0; p < planes; ++p) {
        double sum = 0;
        for (std::size_t i = 0; i < hw; ++i)
            sum += double(x.data()[p * hw + i]);
        y.data()[p] = T(sum / double(hw));
    }
    if (grad == Grad::keep) shapes_.push_back(s);
    return y;
}

template <class T>
Array<T> GlobalAvgPool<T>::backward(const Array<T>& dy) {
    if (shapes_.empty()) take_saved(shapes_, name());
    const Shape s = shapes_.back();
    check_dy({s[0], s[1]}, shape_of(dy), name());
    shapes_.pop_back();
    const std::size_t hw = s[2] * s[3];
    Array<T> dx = Array<T>::from_shape(s);
    for (std::size_t p = 0; p < s[0] * s[1]; ++p)
        for (std::size_t i = 0; i < hw; ++i)
            dx.data()[p * hw + i] = dy.data()[p] / T(hw);
    return dx;
}

template <class T>
Array<T> Flatten<T>::forward(const Array<T>& x, Mode, Grad grad) {
    const Shape s = shape_of(x);
    if (s.size() < 2 || s[0] == 0)
        throw ShapeError(name() + ": expected input of shape (N, ...), got " + format_shape(s));
    Array<T> y = x;
    y.reshape({s[0], x.size() / s[0]});
    if (grad == Grad::keep) shapes_.push_back(s);
    return y;
}

template <class T>
Array<T> Flatten<T>::backward(const Array<T>& dy) {
    if (shapes_.empty()) take_saved(shapes_, name());
    const Shape s = shapes_.back();
    std::size_t features = 1;
    for (std::size_t i = 1; i < s.size(); ++i)
        features *= s[i];
    check_dy({s[0], features}, shape_of(dy), name());
    shapes_.pop_back();
    Array<T> dx = dy;
    dx.reshape(s);
    return dx;
}

template class Pool2d<float>;
template class Pool2d<double>;
template class GlobalAvgPool<float>;
template class GlobalAvgPool<double>;
template class Flatten<float>;
template class Flatten<double>;

}  // namespace normlab::model
