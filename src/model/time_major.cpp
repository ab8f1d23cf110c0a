#include "model/saved.hpp"
#include "normlab/model/recurrent.hpp"

namespace normlab::model {
namespace {

// (A, B, F) → (B, A, F).
template <class T>
Array<T> swap_leading_axes(const Array<T>& x) {
    const std::size_t a = x.shape()[0], b = x.shape()[1], f = x.shape()[2];
    Array<T> y = Array<T>::from_shape({b, a, f});
    for (std::size_t i = 0; i < a; ++i)
        for (std::size_t j = 0; j < b; ++j)
            std::copy_n(x.data() + (i * b + j) * f, f, y.data() + (j * a + i) * f);
    return y;
}

}  // namespace

template <class T>
Array<T> TimeMajor<T>::forward(const Array<T>& x, Mode, Grad grad) {
    check_rank(shape_of(x), 3, "(N, T, F)", name());
    if (grad == Grad::keep) shapes_.push_back(shape_of(x));
    return swap_leading_axes(x);
}

template <class T>
Array<T> TimeMajor<T>::backward(const Array<T>& dy) {
    if (shapes_.empty()) take_saved(shapes_, name());
    const Shape& s = shapes_.back();
    check_dy({s[1], s[0], s[2]}, shape_of(dy), name());
    take_saved(shapes_, name());
    return swap_leading_axes(dy);
}

template class TimeMajor<float>;
template class TimeMajor<double>;

}  // namespace normlab::model
