#include "instance_norm.hpp"

namespace normlab {

template <class T>
InstanceNorm<T>::InstanceNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(kName, canonical_spec(kName, options), num_features, options.affine,
                       options.affine, SetSpec{false, 1}, true, options.eps),
      options_(options),
      running_(num_features) {
    RunningStats<T>::check_momentum(this->label(), options.momentum);
}

template <class T>
Array<T> InstanceNorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    const NcsView v = this->check_input(x, 3);
    if (mode == Mode::eval && options_.track_running_stats) {
        // Every sample uses its channel's running statistics.
        std::vector<T> mean(v.n * v.c), var(v.n * v.c);
        for (std::size_t n = 0; n < v.n; ++n) {
            std::copy(running_.mean.begin(), running_.mean.end(), mean.begin() + n * v.c);
            std::copy(running_.var.begin(), running_.var.end(), var.begin() + n * v.c);
        }
        return this->normalize(x, v, mean, var, false, grad);
    }
    if (v.s <= 1)
        throw ShapeError(this->label() +
                         ": expected more than 1 spatial element when training, got input of "
                         "shape " +
                         format_shape(shape_of(x)));
    typename SetNormalizer<T>::Moments moments;
    Array<T> y = this->standardize_batch(x, v, grad, &moments);
    if (mode == Mode::train && options_.track_running_stats) {
        // As PyTorch: the per-instance statistics (variance unbiased) averaged over the batch.
        const double bessel = double(v.s) / double(v.s - 1);
        std::vector<double> mean(v.c, 0.0), var(v.c, 0.0);
        for (std::size_t n = 0; n < v.n; ++n)
            for (std::size_t c = 0; c < v.c; ++c) {
                mean[c] += double(moments.mean[n * v.c + c]) / double(v.n);
                var[c] += double(moments.var[n * v.c + c]) * bessel / double(v.n);
            }
        running_.update(options_.momentum, mean, var);
    }
    return y;
}

template <class T>
std::vector<BufferRef<T>> InstanceNorm<T>::buffers() {
    if (!options_.track_running_stats) return {};
    return running_.buffers();
}

template <class T>
std::vector<CounterRef> InstanceNorm<T>::counters() {
    if (!options_.track_running_stats) return {};
    return running_.counters();
}

template class InstanceNorm<float>;
template class InstanceNorm<double>;

}  // namespace normlab
