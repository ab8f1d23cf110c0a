#include "batch_renorm.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "kernels/moments.hpp"
#include "kernels/set_backward.hpp"
#include "kernels/vector_width.hpp"

namespace normlab {
namespace {

// Statistics per channel over the batch and the trailing dims, as in BatchNorm.
constexpr SetSpec kChannelSets{true, 1};

// A training step's per-channel work, in every ISA clone (their square roots and divisions, two
// and three per channel, were most of a small batch's forward): the correction r, d of each
// channel and the kernels' shift, scale and offset from it.
template <class T>
NORMLAB_ISA_CLONES void correct_channels(const T* batch_mean, const T* batch_var, double eps,
                                         const T* moving_mean, const T* moving_std, RenormClip clip,
                                         std::size_t channels, double* r, double* d, T* shift,
                                         T* scale, T* offset) {
#pragma omp simd
    for (std::size_t c = 0; c < channels; ++c) {
        const double sigma_b = std::sqrt(double(batch_var[c]) + eps);
        const RenormCorrection k = renorm_correction(
            double(batch_mean[c]), sigma_b, double(moving_mean[c]), double(moving_std[c]), clip);
        r[c] = k.r;
        d[c] = k.d;
        shift[c] = batch_mean[c];
        scale[c] = T(k.r / sigma_b);
        offset[c] = T(k.d);
    }
}

// The moving averages after a training step (renorm_update_moving), in every ISA clone.
template <class T>
NORMLAB_ISA_CLONES void update_channels(const T* batch_mean, const T* batch_var, double eps,
                                        double momentum, std::size_t channels, T* moving_mean,
                                        T* moving_std) {
#pragma omp simd
    for (std::size_t c = 0; c < channels; ++c)
        renorm_update_moving(moving_mean[c], moving_std[c], double(batch_mean[c]),
                             std::sqrt(double(batch_var[c]) + eps), momentum);
}

// Position of `step` on a linear ramp that starts at `begin` and reaches 1 at `end`.
double ramp(std::int64_t step, std::int64_t begin, std::int64_t end) {
    if (step < begin) return 0.0;
    if (step >= end) return 1.0;
    return double(step - begin) / double(end - begin);
}

}  // namespace

void check_renorm_options(const BatchRenormOptions& options, const std::string& label) {
    const std::string who = label + ": ";
    if (!(options.eps > 0))
        throw OptionError(who + "eps must be > 0, got " + format_value(options.eps));
    if (!(options.momentum >= 0 && options.momentum <= 1))
        throw OptionError(who + "momentum must lie in [0, 1], got " +
                          format_value(options.momentum));
    if (!(options.rmax >= 1))
        throw OptionError(who + "rmax must be >= 1 (r is clipped to [1/rmax, rmax]), got " +
                          format_value(options.rmax));
    if (!(options.dmax >= 0))
        throw OptionError(who + "dmax must be >= 0, got " + format_value(options.dmax));
    // During warm-up r_max = 1, so an interval [rmin, 1] must exist.
    if (options.rmin && !(*options.rmin >= 0 && *options.rmin <= 1))
        throw OptionError(who + "rmin must lie in [0, 1] or be none, got " +
                          format_value(*options.rmin));
    if (options.warmup < 0)
        throw OptionError(who + "warmup must be >= 0, got " + format_value(options.warmup));
    if (options.rmax_steps < options.warmup || options.dmax_steps < options.warmup)
        throw OptionError(who +
                          "rmax_steps and dmax_steps must be >= warmup (the ramps start "
                          "after warm-up), got warmup=" +
                          format_value(options.warmup) +
                          ", rmax_steps=" + format_value(options.rmax_steps) +
                          ", dmax_steps=" + format_value(options.dmax_steps));
}

RenormClip renorm_clip(const BatchRenormOptions& options, std::int64_t step) {
    // The paper gives only the end points of the relaxation; the ramp between them is linear.
    const double rmax = 1.0 + (options.rmax - 1.0) * ramp(step, options.warmup, options.rmax_steps);
    const double dmax = options.dmax * ramp(step, options.warmup, options.dmax_steps);
    return {options.rmin ? *options.rmin : 1.0 / rmax, rmax, dmax};
}

template <class T>
BatchRenorm<T>::BatchRenorm(std::size_t num_features, Options options)
    : NormalizerBase<T, SavedRenorm<T>>(kName, canonical_spec(kName, options), num_features,
                                        options.affine, options.affine),
      options_(options),
      moving_mean_(xt::zeros<T>({num_features})),
      moving_std_(xt::ones<T>({num_features})) {
    check_renorm_options(options, this->label());
}

template <class T>
RenormClip BatchRenorm<T>::clip_at(std::int64_t step) const {
    return renorm_clip(options_, step);
}

template <class T>
Array<T> BatchRenorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    return run_forward(x, mode, grad, false);
}

template <class T>
Array<T> BatchRenorm<T>::forward(Array<T>&& x, Mode mode, Grad grad) {
    return this->forward_keeping_input(
        x, [&](const Array<T>& input) { return run_forward(input, mode, grad, true); },
        [](const SavedRenorm<T>& ctx) { return !ctx.shift.empty(); });
}

template <class T>
Array<T> BatchRenorm<T>::run_forward(const Array<T>& x, Mode mode, Grad grad, bool keep_input) {
    const NcsView v = this->check_input(x);
    const std::size_t channels = v.c;
    SavedRenorm<T> ctx;
    ctx.batch_stats = mode == Mode::train;
    ctx.scale.resize(channels);
    std::vector<T> shift(channels), offset(channels, T(0));
    std::vector<T> batch_mean, batch_var;
    // In training, β with each channel's mean residual, as BatchNorm's (beta_for_mean).
    std::vector<T> betas;

    if (mode == Mode::eval) {
        for (std::size_t c = 0; c < channels; ++c) {
            shift[c] = moving_mean_(c);
            ctx.scale[c] = T(1.0 / double(moving_std_(c)));
        }
    } else {
        if (v.n * v.s <= 1)
            throw ShapeError(this->label() +
                             ": expected more than 1 value per channel when training, got input "
                             "of shape " +
                             format_shape(shape_of(x)));
        batch_mean.resize(channels);
        batch_var.resize(channels);
        std::vector<double> residual(channels);
        kernels::collect_moments(x.data(), v, kChannelSets, true, batch_mean.data(),
                                 batch_var.data(), residual.data());
        if (const std::size_t c =
                kernels::first_non_finite(batch_mean.data(), batch_var.data(), channels);
            c < channels)
            throw NonFiniteError(
                this->label() + ": statistics of the input are not finite (channel " +
                std::to_string(c) + "): the input of shape " + format_shape(shape_of(x)) +
                " contains NaN or Inf; nothing was updated");
        ctx.r.resize(channels);
        ctx.d.resize(channels);
        correct_channels(batch_mean.data(), batch_var.data(), options_.eps, moving_mean_.data(),
                         moving_std_.data(), clip_at(step_), channels, ctx.r.data(), ctx.d.data(),
                         shift.data(), ctx.scale.data(), offset.data());
        betas.resize(channels);
        kernels::betas_for_means(channels, 1, residual.data(), ctx.scale.data(), this->gamma(),
                                 this->beta(), betas.data());
    }

    Array<T> y = Array<T>::from_shape(x.shape());
    const bool stores_xhat =
        grad == Grad::keep &&
        !(keep_input && kernels::recomputes_xhat_in_registers(v, kChannelSets));
    if (grad == Grad::keep) ctx.shape = shape_of(x);
    if (stores_xhat) ctx.xhat = Array<T>::from_shape(x.shape());
    kernels::normalize_affine(
        x.data(), v, kChannelSets, shift.data(), ctx.scale.data(), offset.data(), this->gamma(),
        betas.empty() ? this->beta() : static_cast<const T*>(betas.data()),
        stores_xhat ? ctx.xhat.data() : nullptr, y.data(), grad != Grad::keep);
    if (grad == Grad::keep && !stores_xhat) ctx.shift = std::move(shift);

    if (mode == Mode::train) {
        // After r and d: Algorithm 1 corrects with the moving averages of the previous steps.
        update_channels(batch_mean.data(), batch_var.data(), options_.eps, options_.momentum,
                        channels, moving_mean_.data(), moving_std_.data());
        ++step_;
    }
    this->save(std::move(ctx), grad);
    return y;
}

template <class T>
Array<T> BatchRenorm<T>::backward(const Array<T>& dy) {
    SavedRenorm<T> ctx = this->take(dy);
    const bool kept_input = !ctx.shift.empty();
    if (kept_input && shape_of(ctx.input) != ctx.shape)
        throw StateError(this->label() +
                         ": the saved context is missing the input its forward was to keep");
    const kernels::XhatSource<T> xhat =
        kept_input ? kernels::XhatSource<T>(ctx.input.data(), ctx.shift.data(), ctx.scale.data())
                   : kernels::XhatSource<T>(ctx.xhat.data());
    std::vector<double> sum_dy, sum_dy_xhat;
    Array<T> dx = kernels::set_backward(
        dy, xhat, this->view_of(ctx.shape), kChannelSets, this->gamma(), ctx.scale, ctx.batch_stats,
        [&ctx](std::size_t c, double mean_g, double mean_g_xhat, T& coef_1, T& coef_xhat) {
            renorm_coefficients(ctx.r[c], mean_g, mean_g_xhat, coef_1, coef_xhat);
        },
        sum_dy, sum_dy_xhat, kept_input ? std::move(ctx.input) : std::move(ctx.xhat));
    add_renorm_offset_sums(ctx.d, sum_dy, sum_dy_xhat);
    this->add_affine_grads(sum_dy_xhat.data(), sum_dy.data());
    return dx;
}

template <class T>
std::vector<BufferRef<T>> BatchRenorm<T>::buffers() {
    return {{"moving_mean", &moving_mean_}, {"moving_std", &moving_std_}};
}

template <class T>
std::vector<CounterRef> BatchRenorm<T>::counters() {
    return {{"step", &step_}};
}

template class BatchRenorm<float>;
template class BatchRenorm<double>;

}  // namespace normlab
