#include "batch_norm.hpp"

namespace normlab {

template <class T>
BatchNorm<T>::BatchNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(kName, canonical_spec(kName, options), num_features, options.affine,
                       options.affine, SetSpec{true, 1}, true, options.eps),
      options_(options),
      running_mean_(xt::zeros<T>({num_features})),
      running_var_(xt::ones<T>({num_features})) {
    if (options.momentum && !(*options.momentum >= 0 && *options.momentum <= 1))
        throw OptionError(this->label() + ": momentum must lie in [0, 1] or be none, got " +
                          format_value(*options.momentum));
}

template <class T>
Array<T> BatchNorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    const NcsView v = this->check_input(x);
    if (mode == Mode::eval && options_.track_running_stats) {
        const std::vector<T> mean(running_mean_.begin(), running_mean_.end());
        const std::vector<T> var(running_var_.begin(), running_var_.end());
        return this->normalize(x, v, mean, var, false, grad);
    }
    const std::size_t m = v.n * v.s;
    if (m <= 1)
        throw ShapeError(this->label() +
                         ": expected more than 1 value per channel when training, got input of "
                         "shape " +
                         format_shape(shape_of(x)));
    typename SetNormalizer<T>::Moments moments;
    Array<T> y = this->standardize_batch(x, v, grad, &moments);
    if (mode == Mode::train && options_.track_running_stats) {
        ++num_batches_tracked_;
        const double f =
            options_.momentum ? *options_.momentum : 1.0 / double(num_batches_tracked_);
        // Normalizing uses the biased variance; the running estimate stores the unbiased one.
        const double bessel = double(m) / double(m - 1);
        for (std::size_t c = 0; c < v.c; ++c) {
            running_mean_(c) = T((1 - f) * double(running_mean_(c)) + f * double(moments.mean[c]));
            running_var_(c) =
                T((1 - f) * double(running_var_(c)) + f * double(moments.var[c]) * bessel);
        }
    }
    return y;
}

template <class T>
std::vector<BufferRef<T>> BatchNorm<T>::buffers() {
    if (!options_.track_running_stats) return {};
    return {{"running_mean", &running_mean_}, {"running_var", &running_var_}};
}

template <class T>
std::vector<CounterRef> BatchNorm<T>::counters() {
    if (!options_.track_running_stats) return {};
    return {{"num_batches_tracked", &num_batches_tracked_}};
}

template class BatchNorm<float>;
template class BatchNorm<double>;

}  // namespace normlab
