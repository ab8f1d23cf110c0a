#include "batch_norm.hpp"

namespace normlab {

template <class T>
BatchNorm<T>::BatchNorm(std::size_t num_features, Options options)
    : SetNormalizer<T>(kName, canonical_spec(kName, options), num_features, options.affine,
                       options.affine, SetSpec{true, 1}, true, options.eps),
      options_(options),
      running_(num_features) {
    RunningStats<T>::check_momentum(this->label(), options.momentum);
}

template <class T>
Array<T> BatchNorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    const NcsView v = this->check_input(x);
    if (mode == Mode::eval && options_.track_running_stats) {
        const std::vector<T> mean(running_.mean.begin(), running_.mean.end());
        const std::vector<T> var(running_.var.begin(), running_.var.end());
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
        // Normalizing uses the biased variance; the running estimate stores the unbiased one.
        const double bessel = double(m) / double(m - 1);
        std::vector<double> mean(v.c), var(v.c);
        for (std::size_t c = 0; c < v.c; ++c) {
            mean[c] = double(moments.mean[c]);
            var[c] = double(moments.var[c]) * bessel;
        }
        running_.update(options_.momentum, mean, var);
    }
    return y;
}

template <class T>
std::vector<BufferRef<T>> BatchNorm<T>::buffers() {
    if (!options_.track_running_stats) return {};
    return running_.buffers();
}

template <class T>
std::vector<CounterRef> BatchNorm<T>::counters() {
    if (!options_.track_running_stats) return {};
    return running_.counters();
}

template class BatchNorm<float>;
template class BatchNorm<double>;

}  // namespace normlab
