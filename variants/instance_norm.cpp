#include "instance_norm.hpp"

namespace normlab {

template <class T>
InstanceNorm<T>::InstanceNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(kName, canonical_spec(kName, options), num_features, options.affine,
                       options.affine, SetSpec{false, 1}, true, options.eps),
      options_(options),
      running_mean_(xt::zeros<T>({num_features})),
      running_var_(xt::ones<T>({num_features})) {
    if (options.momentum && !(*options.momentum >= 0 && *options.momentum <= 1))
        throw OptionError(this->label() + ": momentum must lie in [0, 1] or be none, got " +
                          format_value(*options.momentum));
}

template <class T>
Array<T> InstanceNorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    const NcsView v = this->check_input(x, 3);
    if (mode == Mode::eval && options_.track_running_stats) {
        // Every sample uses its channel's running statistics.
        std::vector<T> mean(v.n * v.c), var(v.n * v.c);
        for (std::size_t n = 0; n < v.n; ++n) {
            std::copy(running_mean_.begin(), running_mean_.end(), mean.begin() + n * v.c);
            std::copy(running_var_.begin(), running_var_.end(), var.begin() + n * v.c);
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
        ++num_batches_tracked_;
        const double f =
            options_.momentum ? *options_.momentum : 1.0 / double(num_batches_tracked_);
        const double bessel = double(v.s) / double(v.s - 1);
        for (std::size_t c = 0; c < v.c; ++c) {
            double mean_c = 0, var_c = 0;
            for (std::size_t n = 0; n < v.n; ++n) {
                mean_c += double(moments.mean[n * v.c + c]);
                var_c += double(moments.var[n * v.c + c]) * bessel;
            }
            running_mean_(c) = T((1 - f) * double(running_mean_(c)) + f * mean_c / double(v.n));
            running_var_(c) = T((1 - f) * double(running_var_(c)) + f * var_c / double(v.n));
        }
    }
    return y;
}

template <class T>
std::vector<BufferRef<T>> InstanceNorm<T>::buffers() {
    if (!options_.track_running_stats) return {};
    return {{"running_mean", &running_mean_}, {"running_var", &running_var_}};
}

template <class T>
std::vector<CounterRef> InstanceNorm<T>::counters() {
    if (!options_.track_running_stats) return {};
    return {{"num_batches_tracked", &num_batches_tracked_}};
}

template class InstanceNorm<float>;
template class InstanceNorm<double>;

}  // namespace normlab
