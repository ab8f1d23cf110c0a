#pragma once
// Standardize over reduction sets, then per-channel affine (spec §0). BatchNorm, LayerNorm,
// InstanceNorm, GroupNorm and RMSNorm are this class with different sets and different sources
// of (mean, variance); the backward pass is the same for all of them.

#include <string>
#include <vector>

#include "normlab/normalizer_base.hpp"
#include "normlab/set_spec.hpp"

namespace normlab {

template <class T>
class SetNormalizer : public NormalizerBase<T> {
  public:
    using BasicNormalizer<T>::forward;
    // Keeps x itself, not x̂, for backward (see BasicNormalizer::forward(Array&&)).
    Array<T> forward(Array<T>&& x, Mode mode, Grad grad = Grad::keep) override;

    // dx by the generic projection of spec §0 when the statistics came from the input (without
    // the mean term when not centred), a plain rescale when they were constants; adds dγ, dβ.
    Array<T> backward(const Array<T>& dy) override;

  protected:
    // center = false: RMS normalization (mean taken as 0, "variance" is the mean square).
    SetNormalizer(std::string name, std::string spec, std::size_t num_features, bool has_weight,
                  bool has_bias, SetSpec sets, bool center, double eps);

    struct Moments {
        std::vector<T> mean;
        std::vector<T> var;  // biased
    };

    // Statistics of x per set; throws NonFiniteError (nothing updated) if any is NaN or Inf.
    Moments batch_moments(const Array<T>& x, const NcsView& v) const;

    // Statistics from x and normalization in one sweep (each set normalized while in cache);
    // fills *stats when given. Throws NonFiniteError, saving nothing, if a statistic is NaN/Inf.
    Array<T> standardize_batch(const Array<T>& x, const NcsView& v, Grad grad,
                               Moments* stats = nullptr);

    // y = γ·(x − mean)/sqrt(var + eps) + β with one (mean, var) per set. batch_stats says whether
    // they were computed from x (the backward then projects) or are constants.
    Array<T> normalize(const Array<T>& x, const NcsView& v, const std::vector<T>& mean,
                       const std::vector<T>& var, bool batch_stats, Grad grad);

    const SetSpec& sets() const { return sets_; }
    double eps() const { return eps_; }

  private:
    // With Grad::keep, sets up ctx for backward and returns where to write x̂ — or null when x is
    // the input handed over to forward(Array&&) and backward can recompute x̂ from it: then
    // ctx.keeps_input is set, and the caller records the per-set mean in ctx.mean.
    T* prepare_saved(SavedNormalization<T>& ctx, const Array<T>& x, const NcsView& v,
                     Grad grad) const;

    const Array<T>* handed_over_ = nullptr;
    SetSpec sets_;
    bool center_;
    double eps_;
};

}  // namespace normlab
