#include "normlab/set_normalizer.hpp"

#include <cmath>
#include <utility>

#include "kernels/moments.hpp"
#include "kernels/set_backward.hpp"

namespace normlab {

template <class T>
SetNormalizer<T>::SetNormalizer(std::string name, std::string spec, std::size_t num_features,
                                bool has_weight, bool has_bias, SetSpec sets, bool center,
                                double eps)
    : NormalizerBase<T>(std::move(name), std::move(spec), num_features, has_weight, has_bias),
      sets_(sets),
      center_(center),
      eps_(eps) {
    if (!(eps > 0))
        throw OptionError(this->label() + ": eps must be > 0, got " + format_value(eps));
}

namespace {

template <class T>
void check_finite(const std::vector<T>& mean, const std::vector<T>& var, const std::string& label,
                  const Shape& shape) {
    const std::size_t i = kernels::first_non_finite(mean.data(), var.data(), mean.size());
    if (i < mean.size())
        throw NonFiniteError(label + ": statistics of the input are not finite (set " +
                             std::to_string(i) + " of " + std::to_string(mean.size()) +
                             "): the input of shape " + format_shape(shape) +
                             " contains NaN or Inf; nothing was updated");
}

}  // namespace

template <class T>
Array<T> SetNormalizer<T>::forward(Array<T>&& x, Mode mode, Grad grad) {
    // standardize_batch / normalize recognize the handed-over input by its address and save its
    // mean instead of writing x̂.
    handed_over_ = &x;
    struct Release {
        const Array<T>*& handed_over;
        ~Release() { handed_over = nullptr; }
    } release{handed_over_};
    return this->forward_keeping_input(
        x,
        [&](const Array<T>& input) {
            return static_cast<BasicNormalizer<T>&>(*this).forward(input, mode, grad);
        },
        [](const SavedNormalization<T>& ctx) { return ctx.keeps_input; });
}

template <class T>
typename SetNormalizer<T>::Moments SetNormalizer<T>::batch_moments(const Array<T>& x,
                                                                   const NcsView& v) const {
    const std::size_t k = sets_.num_sets(v);
    Moments m{std::vector<T>(k), std::vector<T>(k)};
    kernels::collect_moments(x.data(), v, sets_, center_, m.mean.data(), m.var.data());
    check_finite(m.mean, m.var, this->label(), shape_of(x));
    return m;
}

template <class T>
T* SetNormalizer<T>::prepare_saved(SavedNormalization<T>& ctx, const Array<T>& x, const NcsView& v,
                                   Grad grad) const {
    if (grad != Grad::keep) return nullptr;
    ctx.shape = shape_of(x);
    if (&x == handed_over_ && kernels::recomputes_xhat_in_registers(v, sets_)) {
        ctx.keeps_input = true;
        return nullptr;
    }
    ctx.xhat = Array<T>::from_shape(x.shape());
    return ctx.xhat.data();
}

template <class T>
Array<T> SetNormalizer<T>::standardize_batch(const Array<T>& x, const NcsView& v, Grad grad,
                                             Moments* stats) {
    const std::size_t k = sets_.num_sets(v);
    Moments m{std::vector<T>(k), std::vector<T>(k)};
    SavedNormalization<T> ctx;
    ctx.batch_stats = true;
    ctx.inv_std.resize(k);
    Array<T> y = Array<T>::from_shape(x.shape());
    T* xhat = prepare_saved(ctx, x, v, grad);
    if (grad == Grad::keep && kernels::takes_mean_offsets(v, sets_, center_))
        ctx.mean_offset.resize(k);
    kernels::standardize(x.data(), v, sets_, center_, eps_, this->gamma(), this->beta(),
                         m.mean.data(), m.var.data(), ctx.inv_std.data(), xhat, y.data(),
                         ctx.mean_offset.empty() ? nullptr : ctx.mean_offset.data());
    check_finite(m.mean, m.var, this->label(), shape_of(x));
    if (ctx.keeps_input) ctx.mean = m.mean;
    this->save(std::move(ctx), grad);
    if (stats) *stats = std::move(m);
    return y;
}

template <class T>
Array<T> SetNormalizer<T>::normalize(const Array<T>& x, const NcsView& v,
                                     const std::vector<T>& mean, const std::vector<T>& var,
                                     bool batch_stats, Grad grad) {
    SavedNormalization<T> ctx;
    ctx.batch_stats = batch_stats;
    ctx.inv_std.resize(var.size());
    kernels::inverse_std(var.data(), var.size(), eps_, ctx.inv_std.data());
    Array<T> y = Array<T>::from_shape(x.shape());
    T* xhat = prepare_saved(ctx, x, v, grad);
    kernels::normalize_affine(x.data(), v, sets_, mean.data(), ctx.inv_std.data(),
                              static_cast<const T*>(nullptr), this->gamma(), this->beta(), xhat,
                              y.data(), grad != Grad::keep);
    if (ctx.keeps_input) ctx.mean = mean;
    this->save(std::move(ctx), grad);
    return y;
}

template <class T>
Array<T> SetNormalizer<T>::backward(const Array<T>& dy) {
    SavedNormalization<T> ctx = this->take(dy);
    const bool kept_input = ctx.keeps_input;
    if (kept_input && shape_of(ctx.input) != ctx.shape)
        throw StateError(this->label() +
                         ": the saved context is missing the input its forward "
                         "was to keep");
    const kernels::XhatSource<T> xhat =
        kept_input ? kernels::XhatSource<T>(ctx.input.data(), ctx.mean.data(), ctx.inv_std.data())
                   : kernels::XhatSource<T>(ctx.xhat.data());
    std::vector<double> sum_dy, sum_dy_xhat;
    const bool center = center_;
    // Per-sample sets on rows formed y from x̂ + o, o a set's mean_offset; x̂ (stored, or formed
    // again from the input) is without it. With g = γ·dy, dx = s·(g − mean(g) − c·(x̂ + o)) where
    // c = mean(g·(x̂ + o)) = mean(g·x̂) + o·mean(g): the offset goes into the set's coefficients,
    // c and mean(g) + c·o, in double, with nothing added per value. Left out, the rounding reached
    // dx as (μ − μ_f)·s² (GroupNorm(32)'s dx at mean 100 4-25 ulp from its double twin's:
    // 1/σ of sets of 16-32 values varies by a factor of several). dγ = Σ dy·x̂ does not take it.
    const T* mean_offset = ctx.mean_offset.empty() ? nullptr : ctx.mean_offset.data();
    Array<T> dx = kernels::set_backward(
        dy, xhat, this->view_of(ctx.shape), sets_, this->gamma(), ctx.inv_std, ctx.batch_stats,
        [center, mean_offset](std::size_t k, double mean_g, double mean_g_xhat, T& coef_1,
                              T& coef_xhat) {
            double c1 = mean_g, c = mean_g_xhat;
            if (mean_offset) {
                const double offset = double(mean_offset[k]);
                c += offset * mean_g;
                c1 += c * offset;
            }
            coef_1 = center ? T(c1) : T(0);
            coef_xhat = T(c);
        },
        sum_dy, sum_dy_xhat, kept_input ? std::move(ctx.input) : std::move(ctx.xhat));
    this->add_affine_grads(sum_dy_xhat.data(), sum_dy.data());
    return dx;
}

template class SetNormalizer<float>;
template class SetNormalizer<double>;

}  // namespace normlab
