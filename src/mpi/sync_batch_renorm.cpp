#include "normlab/mpi/sync_batch_renorm.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/moments.hpp"
#include "kernels/set_backward.hpp"
#include "sync_statistics.hpp"

namespace normlab::mpi {
template <class T>
SyncBatchRenorm<T>::SyncBatchRenorm(std::size_t num_features, Options options, Communicator comm)
    : NormalizerBase<T, SavedSyncRenorm<T>>(kName, canonical_spec(kName, options), num_features,
                                            options.affine, options.affine),
      options_(options),
      comm_(comm),
      moving_mean_(xt::zeros<T>({num_features})),
      moving_std_(xt::ones<T>({num_features})) {
    check_renorm_options(options, this->label());
}

template <class T>
Array<T> SyncBatchRenorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    const std::size_t channels = this->num_features();
    SavedSyncRenorm<T> ctx;
    ctx.batch_stats = mode == Mode::train;
    ctx.scale.resize(channels);
    std::vector<T> shift(channels), offset(channels, T(0)), betas;
    NcsView v;
    if (mode == Mode::eval) {
        v = sync_view(this->label(), shape_of(x), channels);
        for (std::size_t c = 0; c < channels; ++c) {
            shift[c] = moving_mean_(c);
            ctx.scale[c] = T(1.0 / double(moving_std_(c)));
        }
    } else {
        const GlobalMoments global =
            allreduce_moments(comm_, this->label(), x, channels, ++forward_calls_);
        v = this->view_of(shape_of(x));
        ctx.count = global.count;
        // Algorithm 1 of the paper (as in batch_renorm), with the global μ_B and σ_B.
        const RenormClip clip = renorm_clip(options_, step_);
        ctx.r.resize(channels);
        ctx.d.resize(channels);
        // The mean as rounded to T for r, d and the moving averages, as batch_renorm takes its
        // batch mean; β takes what that rounding took off it (beta_for_mean).
        std::vector<double> residual(channels);
        for (std::size_t c = 0; c < channels; ++c) {
            shift[c] = T(global.mean[c]);
            const double sigma_b = std::sqrt(global.var[c] + options_.eps);
            const auto [r, d] = renorm_correction(
                double(shift[c]), sigma_b, double(moving_mean_(c)), double(moving_std_(c)), clip);
            ctx.r[c] = r;
            ctx.d[c] = d;
            ctx.scale[c] = T(r / sigma_b);
            offset[c] = T(d);
            residual[c] = global.mean[c] - double(shift[c]);
        }
        betas.resize(channels);
        kernels::betas_for_means(channels, 1, residual.data(), ctx.scale.data(), this->gamma(),
                                 this->beta(), betas.data());
        // After r and d: the correction uses the moving averages of the previous steps.
        const double a = options_.momentum;
        for (std::size_t c = 0; c < channels; ++c)
            renorm_update_moving(moving_mean_(c), moving_std_(c), double(shift[c]),
                                 std::sqrt(global.var[c] + options_.eps), a);
        ++step_;
    }
    Array<T> y = Array<T>::from_shape(x.shape());
    if (grad == Grad::keep) {
        ctx.shape = shape_of(x);
        ctx.xhat = Array<T>::from_shape(x.shape());
    }
    if (v.n > 0)
        kernels::normalize_affine(x.data(), v, kChannelSets, shift.data(), ctx.scale.data(),
                                  offset.data(), this->gamma(),
                                  betas.empty() ? this->beta() : betas.data(),
                                  grad == Grad::keep ? ctx.xhat.data() : nullptr, y.data());
    this->save(std::move(ctx), grad);
    return y;
}

template <class T>
Array<T> SyncBatchRenorm<T>::backward(const Array<T>& dy) {
    SavedSyncRenorm<T> ctx;
    std::exception_ptr failure;
    try {
        ctx = this->take(dy);
    } catch (...) {
        failure = std::current_exception();
    }
    std::vector<double> sum_dy, sum_dy_xhat;
    Array<T> dx = sync_channel_backward(
        comm_, this->label(), this->num_features(), ctx.shape, failure, ctx.batch_stats,
        ++backward_calls_, dy, ctx.xhat, this->gamma(), ctx.scale, ctx.count,
        [&ctx](std::size_t c, double mean_g, double mean_g_xhat, T& coef_1, T& coef_xhat) {
            renorm_coefficients(ctx.r[c], mean_g, mean_g_xhat, coef_1, coef_xhat);
        },
        sum_dy, sum_dy_xhat);
    add_renorm_offset_sums(ctx.d, sum_dy, sum_dy_xhat);
    this->add_affine_grads(sum_dy_xhat.data(), sum_dy.data());
    return dx;
}

template <class T>
std::vector<BufferRef<T>> SyncBatchRenorm<T>::buffers() {
    return {{"moving_mean", &moving_mean_}, {"moving_std", &moving_std_}};
}

template <class T>
std::vector<CounterRef> SyncBatchRenorm<T>::counters() {
    return {{"step", &step_}};
}

template class SyncBatchRenorm<float>;
template class SyncBatchRenorm<double>;

}  // namespace normlab::mpi
