#include "normlab/mpi/sync_batch_norm.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/moments.hpp"
#include "kernels/set_backward.hpp"
#include "sync_statistics.hpp"

namespace normlab::mpi {

template <class T>
SyncBatchNorm<T>::SyncBatchNorm(std::size_t num_features, Options options, Communicator comm)
    : NormalizerBase<T, SavedSyncNormalization<T>>(kName, canonical_spec(kName, options),
                                                   num_features, options.affine, options.affine),
      options_(options),
      comm_(comm),
      running_(num_features) {
    if (!(options.eps > 0))
        throw OptionError(this->label() + ": eps must be > 0, got " + format_value(options.eps));
    RunningStats<T>::check_momentum(this->label(), options.momentum);
}

template <class T>
Array<T> SyncBatchNorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    const std::size_t channels = this->num_features();
    SavedSyncNormalization<T> ctx;
    std::vector<T> mean(channels), betas;
    ctx.inv_std.resize(channels);
    NcsView v;
    if (mode == Mode::eval && options_.track_running_stats) {
        v = sync_view(this->label(), shape_of(x), channels);
        ctx.batch_stats = false;
        std::copy(running_.mean.begin(), running_.mean.end(), mean.begin());
        kernels::inverse_std(running_.var.data(), channels, options_.eps, ctx.inv_std.data());
    } else {
        const GlobalMoments global =
            allreduce_moments(comm_, this->label(), x, channels, ++forward_calls_);
        v = this->view_of(shape_of(x));
        ctx.batch_stats = true;
        ctx.count = global.count;
        // As in BatchNorm: β takes what rounding each mean to T took off it (beta_for_mean).
        std::vector<double> residual(channels);
        for (std::size_t c = 0; c < channels; ++c) {
            mean[c] = T(global.mean[c]);
            ctx.inv_std[c] = T(1.0 / std::sqrt(global.var[c] + options_.eps));
            residual[c] = global.mean[c] - double(mean[c]);
        }
        betas.resize(channels);
        kernels::betas_for_means(channels, 1, residual.data(), ctx.inv_std.data(), this->gamma(),
                                 this->beta(), betas.data());
        if (mode == Mode::train && options_.track_running_stats) {
            // As in BatchNorm: normalize with the biased variance, store the unbiased one — of
            // the global count, so every rank stores the same values — and the mean as rounded
            // to T, as BatchNorm stores its batch mean.
            const double bessel = double(global.count) / double(global.count - 1);
            std::vector<double> batch_mean(channels), var(channels);
            for (std::size_t c = 0; c < channels; ++c) {
                batch_mean[c] = double(mean[c]);
                var[c] = global.var[c] * bessel;
            }
            running_.update(options_.momentum, batch_mean, var);
        }
    }
    Array<T> y = Array<T>::from_shape(x.shape());
    if (grad == Grad::keep) {
        ctx.shape = shape_of(x);
        ctx.xhat = Array<T>::from_shape(x.shape());
    }
    if (v.n > 0)
        kernels::normalize_affine(x.data(), v, kChannelSets, mean.data(), ctx.inv_std.data(),
                                  static_cast<const T*>(nullptr), this->gamma(),
                                  betas.empty() ? this->beta() : betas.data(),
                                  grad == Grad::keep ? ctx.xhat.data() : nullptr, y.data());
    this->save(std::move(ctx), grad);
    return y;
}

template <class T>
Array<T> SyncBatchNorm<T>::backward(const Array<T>& dy) {
    SavedSyncNormalization<T> ctx;
    std::exception_ptr failure;
    try {
        ctx = this->take(dy);
    } catch (...) {
        failure = std::current_exception();
    }
    std::vector<double> sum_dy, sum_dy_xhat;
    Array<T> dx = sync_channel_backward(
        comm_, this->label(), this->num_features(), ctx.shape, failure, ctx.batch_stats,
        ++backward_calls_, dy, ctx.xhat, this->gamma(), ctx.inv_std, ctx.count,
        [](std::size_t, double mean_g, double mean_g_xhat, T& coef_1, T& coef_xhat) {
            coef_1 = T(mean_g);
            coef_xhat = T(mean_g_xhat);
        },
        sum_dy, sum_dy_xhat);
    this->add_affine_grads(sum_dy_xhat.data(), sum_dy.data());
    return dx;
}

template <class T>
std::vector<BufferRef<T>> SyncBatchNorm<T>::buffers() {
    if (!options_.track_running_stats) return {};
    return running_.buffers();
}

template <class T>
std::vector<CounterRef> SyncBatchNorm<T>::counters() {
    if (!options_.track_running_stats) return {};
    return running_.counters();
}

template class SyncBatchNorm<float>;
template class SyncBatchNorm<double>;

}  // namespace normlab::mpi
