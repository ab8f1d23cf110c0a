#pragma once
// What the variants share besides the kernels: input validation, the affine parameters and the
// LIFO stack of saved forward contexts. A variant adds its options, buffers and statistics.

#include <string>
#include <utility>
#include <vector>

#include "normlab/errors.hpp"
#include "normlab/normalizer.hpp"
#include "normlab/options.hpp"

namespace normlab {

// What a standardize-then-affine forward saves for its backward.
template <class T>
struct SavedNormalization {
    Shape shape;
    Array<T> xhat;            // the normalized input before γ, β (empty when input is kept)
    std::vector<T> inv_std;   // per reduction set
    bool batch_stats = true;  // false: statistics were constants (running estimates)
    // Instead of x̂, a forward that was handed its input (forward(Array&&)) keeps the input and
    // the per-set mean it was centred with: x̂ = (input − mean)·inv_std, recomputed in backward.
    Array<T> input;
    std::vector<T> mean;
    // Per set, for per-sample sets on rows: the rounding of the set's float mean as an offset of
    // x̂ (x̂ + mean_offset is the x̂ y was formed from), which backward takes into the set's
    // coefficients. Empty: none.
    std::vector<T> mean_offset;
    bool keeps_input = false;  // the input moves in once the variant's forward has returned
};

template <class T, class Context = SavedNormalization<T>>
class NormalizerBase : public BasicNormalizer<T> {
  public:
    std::string name() const override { return name_; }
    std::string spec() const override { return spec_; }
    std::size_t num_features() const override { return num_features_; }

    std::vector<ParamRef<T>> parameters() override {
        std::vector<ParamRef<T>> out;
        if (has_weight_) out.push_back({"weight", &weight_, &weight_grad_});
        if (has_bias_) out.push_back({"bias", &bias_, &bias_grad_});
        return out;
    }

    std::size_t saved_contexts() const override { return saved_.size(); }
    void clear_saved() override { saved_.clear(); }

  protected:
    NormalizerBase(std::string name, std::string spec, std::size_t num_features, bool has_weight,
                   bool has_bias)
        : name_(std::move(name)),
          spec_(std::move(spec)),
          num_features_(num_features),
          has_weight_(has_weight),
          has_bias_(has_bias) {
        if (num_features == 0)
            throw OptionError(name_ + ": num_features must be at least 1, got 0");
        if (has_weight_) {
            weight_ = xt::ones<T>({num_features});
            weight_grad_ = xt::zeros<T>({num_features});
        }
        if (has_bias_) {
            bias_ = xt::zeros<T>({num_features});
            bias_grad_ = xt::zeros<T>({num_features});
        }
    }

    // "batch_norm(64)": how error messages name the layer.
    std::string label() const { return name_ + "(" + std::to_string(num_features_) + ")"; }

    // Checks (N, C, ...) with C = num_features and no empty dimension; min_rank = 3 for layers
    // that need trailing dimensions.
    NcsView check_input(const Array<T>& x, std::size_t min_rank = 2) const {
        const Shape shape = shape_of(x);
        const std::string expected = min_rank > 2
                                         ? "(N, " + std::to_string(num_features_) + ", L, ...)"
                                         : "(N, " + std::to_string(num_features_) + ", ...)";
        if (shape.size() < min_rank || shape[1] != num_features_)
            throw ShapeError(label() + ": expected input of shape " + expected + ", got " +
                             format_shape(shape));
        NcsView v{shape[0], shape[1], 1};
        for (std::size_t i = 2; i < shape.size(); ++i)
            v.s *= shape[i];
        if (v.size() == 0)
            throw ShapeError(label() + ": expected a non-empty input of shape " + expected +
                             ", got " + format_shape(shape));
        return v;
    }

    static NcsView view_of(const Shape& shape) {
        NcsView v{shape[0], shape[1], 1};
        for (std::size_t i = 2; i < shape.size(); ++i)
            v.s *= shape[i];
        return v;
    }

    void save(Context ctx, Grad grad) {
        if (grad == Grad::keep) saved_.push_back(std::move(ctx));
    }

    // The most recent saved context (there must be one).
    Context& last_saved() { return saved_.back(); }

    // forward(Array&&) of a layer that keeps the input it is handed, instead of x̂, for its
    // backward: run(x) is the layer's forward on x, which leaves x as it is; if it saved a
    // context and keeps_input(that context) says the context takes the input, x moves into the
    // context's `input`. Only once the forward has returned: an input the forward refuses (NaN,
    // a wrong shape) stays with the caller, unchanged.
    template <class Run, class KeepsInput>
    Array<T> forward_keeping_input(Array<T>& x, Run&& run, KeepsInput&& keeps_input) {
        const std::size_t saved_before = saved_.size();
        Array<T> y = run(std::as_const(x));
        if (saved_.size() == saved_before + 1 && keeps_input(std::as_const(saved_.back())))
            saved_.back().input = std::move(x);
        return y;
    }

    // Takes the most recent saved context after checking that dy matches it.
    Context take(const Array<T>& dy) {
        if (saved_.empty())
            throw StateError(label() +
                             ": backward() called without a matching forward() "
                             "(no saved context; was forward run with Grad::none?)");
        const Shape got = shape_of(dy);
        if (got != saved_.back().shape)
            throw ShapeError(label() + ": expected dy of shape " +
                             format_shape(saved_.back().shape) +
                             " (the shape of the last forward input), got " + format_shape(got));
        Context ctx = std::move(saved_.back());
        saved_.pop_back();
        return ctx;
    }

    const T* gamma() const { return has_weight_ ? weight_.data() : nullptr; }
    const T* beta() const { return has_bias_ ? bias_.data() : nullptr; }

    // Adds Σdy·x̂ and Σdy (per channel) to the parameter gradients.
    // Plain loops over the arrays' storage: through the tensors' element access, with both
    // branches inside, this took about a microsecond per thousand channels.
    void add_affine_grads(const double* sum_dy_xhat, const double* sum_dy) {
        if (has_weight_) {
            T* grad = weight_grad_.data();
            for (std::size_t c = 0; c < num_features_; ++c)
                grad[c] += T(sum_dy_xhat[c]);
        }
        if (has_bias_) {
            T* grad = bias_grad_.data();
            for (std::size_t c = 0; c < num_features_; ++c)
                grad[c] += T(sum_dy[c]);
        }
    }

    bool has_weight() const { return has_weight_; }
    bool has_bias() const { return has_bias_; }

    Array<T> weight_, bias_, weight_grad_, bias_grad_;

  private:
    std::string name_;
    std::string spec_;
    std::size_t num_features_;
    bool has_weight_;
    bool has_bias_;
    std::vector<Context> saved_;
};

}  // namespace normlab
