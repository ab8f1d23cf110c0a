#pragma once
// Batch Renormalization: BatchNorm whose standardized values are corrected per channel by
// x̂ = z·r + d, with r = σ_B/σ and d = (μ_B − μ)/σ taken against moving averages and clipped, so
// that training computes (in expectation) the same affine map as inference.
//
// Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
// Models", NIPS 2017, arXiv:1702.03275. Implements spec/normalizers.md §2: Algorithm 1 (moving
// mean and moving standard deviation, ε inside σ_B, r and d constants in backward) and the §4
// relaxation schedule of r_max and d_max. docs/variants/batch_renorm.md lists where this differs
// from tf.keras BatchNormalization(renorm=True).

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "normlab/normalizer_base.hpp"

namespace normlab {

struct BatchRenormOptions {
    double eps = 1e-5;
    double momentum = 0.01;
    double rmax = 3.0;
    double dmax = 5.0;
    std::optional<double> rmin = std::nullopt;
    std::int64_t warmup = 5000;
    std::int64_t rmax_steps = 40000;
    std::int64_t dmax_steps = 25000;
    bool affine = true;

    template <class V>
    void visit(V& v) {
        v("eps", eps, "added to the batch variance inside sigma_B = sqrt(var_B + eps)");
        v("momentum", momentum,
          "update rate alpha of the moving mean and moving std: m += alpha*(batch - m)");
        v("rmax", rmax, "final r_max: r is clipped to [rmin, r_max(step)]");
        v("dmax", dmax, "final d_max: d is clipped to [-d_max(step), d_max(step)]");
        v("rmin", rmin, "lower clip of r; none = 1/r_max(step) as in the paper (Keras: 0)");
        v("warmup", warmup, "training steps with r_max = 1, d_max = 0 (plain BatchNorm)");
        v("rmax_steps", rmax_steps, "step at which the linear ramp of r_max reaches rmax");
        v("dmax_steps", dmax_steps, "step at which the linear ramp of d_max reaches dmax");
        v("affine", affine, "learnable per-channel weight (gamma) and bias (beta)");
    }
};

// The clipping interval in force at one training step.
struct RenormClip {
    double rmin;
    double rmax;
    double dmax;
};

// Checks the options; OptionError prefixed with `label` ("batch_renorm(64): ...").
void check_renorm_options(const BatchRenormOptions& options, const std::string& label);

// The clipping interval of the relaxation schedule at a training step.
RenormClip renorm_clip(const BatchRenormOptions& options, std::int64_t step);

// Algorithm 1 for one channel: r = σ_B/σ and d = (μ_B − μ)/σ against the moving mean μ and
// moving std σ, clipped to the interval in force.
struct RenormCorrection {
    double r;
    double d;
};
// Defined here so that the per-channel loops that call it vectorize.
inline RenormCorrection renorm_correction(double batch_mean, double sigma_b, double moving_mean,
                                          double moving_std, const RenormClip& clip) {
    const double r = std::clamp(sigma_b / moving_std, clip.rmin, clip.rmax);
    // + 0.0 turns a clamped −0 into +0, so d_max = 0 gives exactly BatchNorm.
    const double d =
        std::clamp((batch_mean - moving_mean) / moving_std, -clip.dmax, clip.dmax) + 0.0;
    return {r, d};
}

// The moving averages after a training step: m += momentum·(batch − m) for the mean and for σ.
template <class T>
void renorm_update_moving(T& moving_mean, T& moving_std, double batch_mean, double sigma_b,
                          double momentum) {
    moving_mean = T(double(moving_mean) + momentum * (batch_mean - double(moving_mean)));
    moving_std = T(double(moving_std) + momentum * (sigma_b - double(moving_std)));
}

// The backward's coefficients (kernels::set_backward's rule) with r and d constants. x̂ here is
// the saved one, z·r without d (the kernels leave the offset out of it), so the projection on
// z = x̂/r reads dx = (r/σ_B)·(g − mean g − x̂·mean(g·x̂)/r²): d has no part in dx.
template <class T>
void renorm_coefficients(double r, double mean_g, double mean_g_xhat, T& coef_1, T& coef_xhat) {
    const double mean_gz = mean_g_xhat / r;
    coef_1 = T(mean_g);
    coef_xhat = T(mean_gz / r);
}

// dγ is Σdy·(x̂ + d), while the kernels sum dy·x̂ over the saved x̂ without d: adds d·Σdy per
// channel (training only; inference has no d).
inline void add_renorm_offset_sums(const std::vector<double>& d, const std::vector<double>& sum_dy,
                                   std::vector<double>& sum_dy_xhat) {
    for (std::size_t c = 0; c < d.size(); ++c)
        sum_dy_xhat[c] += d[c] * sum_dy[c];
}

// What a Batch Renorm forward saves: x̂ = z·r (the d of y = γ·(x̂ + d) + β is a constant of the
// backward) or, when the input was handed over, the input and the per-channel shift it is
// centred with (x̂ = (input − shift)·scale, formed again in backward); per channel, the factors
// of the backward.
template <class T>
struct SavedRenorm {
    Shape shape;
    Array<T> xhat;
    Array<T> input;
    std::vector<T> shift;      // kept with the input: μ_B in training, the moving mean in eval
    std::vector<T> scale;      // r/σ_B in training, 1/σ in eval
    std::vector<double> r, d;  // training only
    bool batch_stats = true;
};

template <class T>
class BatchRenorm : public NormalizerBase<T, SavedRenorm<T>> {
  public:
    static constexpr const char* kName = "batch_renorm";
    static constexpr const char* kSummary =
        "BatchNorm with clipped r, d corrections toward moving mean/std (Ioffe 2017)";
    using Options = BatchRenormOptions;

    explicit BatchRenorm(std::size_t num_features, Options options = {});

    // train: batch statistics corrected by r, d at the current schedule step; moving averages
    // and the step advance. eval: y = γ·(x − moving_mean)/moving_std + β.
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    // Keeps x itself, not x̂, for backward (see BasicNormalizer::forward(Array&&)).
    Array<T> forward(Array<T>&& x, Mode mode, Grad grad = Grad::keep) override;
    // r and d are constants (stop_gradient): dx = (r/σ_B)·(g − mean g − z·mean(g·z)), g = γ·dy.
    Array<T> backward(const Array<T>& dy) override;

    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    bool uses_batch_statistics() const override { return true; }

    // The clipping interval of the given step (of the next training step by default).
    RenormClip clip_at(std::int64_t step) const;
    RenormClip clip() const { return clip_at(step_); }

    const Options& options() const { return options_; }
    const Array<T>& moving_mean() const { return moving_mean_; }
    const Array<T>& moving_std() const { return moving_std_; }
    // Training forwards done so far; the schedule position.
    std::int64_t step() const { return step_; }

  private:
    // forward; keep_input: save x (which the caller then moves in) instead of writing x̂.
    Array<T> run_forward(const Array<T>& x, Mode mode, Grad grad, bool keep_input);

    Options options_;
    Array<T> moving_mean_;  // zeros
    Array<T> moving_std_;   // ones; includes ε, like σ_B
    std::int64_t step_ = 0;
};

}  // namespace normlab
