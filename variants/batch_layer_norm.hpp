#pragma once
// Batch-Layer Normalization: the input is standardized twice, over the batch (per channel and
// position) and over the channels (per sample and position), and the two copies are mixed with
// fixed weights that depend on the batch size B, divided by √C, then scaled and shifted per
// channel.
//
// Ziaee & Çano, "Batch Layer Normalization, A new normalization layer for CNNs and RNNs", ICAAI
// 2022, arXiv:2209.08898. Implements spec/normalizers.md §6 as the authors' code does it (github
// A2Amir/Batch-Layer-Normalization, helpers/bln_layer.py): w_F = 1/B − 1e-4, w_B = 1 − (1/B +
// 1e-4), ε = 1e-3, per-epoch population statistics and four independent inference flags.
// docs/variants/batch_layer_norm.md says what is faithful and what is an addition.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "normlab/normalizer_base.hpp"

namespace normlab {

struct BatchLayerNormOptions {
    double eps = 1e-3;
    std::int64_t batch_size = 0;
    std::string weights = "configured";
    std::int64_t positions = 0;
    bool batch_moving_mean = true;
    bool batch_moving_var = true;
    bool feature_moving_mean = false;
    bool feature_moving_var = false;
    bool track_running_stats = true;
    bool affine = true;

    template <class V>
    void visit(V& v) {
        v("eps", eps, "added to both variances inside the square roots (published: 1e-3)");
        v("batch_size", batch_size,
          "the configured batch size B of the mixing weights, the B/(B-1) factor and the "
          "per-slot feature statistics; 0 = the batch size of the first forward call");
        v("weights", weights,
          "configured: w_F, w_B from batch_size (published); actual: from the batch size of "
          "each call");
        v("positions", positions,
          "S = product of the trailing dims (1 for (N, C) input), the shape of the running "
          "statistics; 0 = taken from the first forward call");
        v("batch_moving_mean", batch_moving_mean,
          "eval uses the population batch mean (true) or the current batch's (false)");
        v("batch_moving_var", batch_moving_var,
          "eval uses the population batch variance (true) or the current batch's (false)");
        v("feature_moving_mean", feature_moving_mean,
          "eval uses the population feature mean of each batch slot (true) or the current one");
        v("feature_moving_var", feature_moving_var,
          "eval uses the population feature variance of each batch slot (true) or the current "
          "one");
        v("track_running_stats", track_running_stats,
          "accumulate per-epoch population statistics (published); false = none are kept, all "
          "four flags must be false and any batch size is accepted");
        v("affine", affine, "learnable per-channel weight (gamma) and bias (beta)");
    }
};

// The published mixing weights for batch size B: w_F = 1/B − 1e-4, w_B = 1 − (1/B + 1e-4).
struct BlnWeights {
    double feature;
    double batch;
};
BlnWeights bln_weights(double batch_size);

// An allocator whose resize leaves new values uninitialized: the per-set arrays of a call are
// written whole before they are read, and the batch branch has a set per channel and position,
// whose zeroing (megabytes per call on (2, 64, 56, 56)) cost more than the work on them.
template <class T>
struct UninitializedAllocator : std::allocator<T> {
    template <class U>
    struct rebind {
        using other = UninitializedAllocator<U>;
    };
    UninitializedAllocator() = default;
    template <class U>
    UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}  // NOLINT
    template <class U>
    void construct(U* p) noexcept {
        ::new (static_cast<void*>(p)) U;
    }
    template <class U, class... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};

// Per-set values of one call (sized with resize, then written whole).
template <class T>
using SetValues = std::vector<T, UninitializedAllocator<T>>;

// How one branch was standardized: per set, x̂ = (x − shift)·inv_std with shift and inv_std
// each either from the input or a population constant.
template <class T>
struct BlnBranch {
    SetValues<T> inv_std;
    // (shift − current mean)·inv_std when the mean is a constant but the variance is not: the
    // variance's derivative involves x centred on the current mean, which is x̂ + delta. Empty
    // (all 0) otherwise.
    SetValues<T> delta;
    bool mean_from_input = true;
    bool var_from_input = true;
    // Every set is one value shifted by its own mean (the batch branch at a batch of one, with
    // the input's mean): x̂ = (x − x)·inv_std = 0 for each value, so the branch adds exactly zero
    // to y and to dx and is not formed; inv_std and delta are empty.
    bool vanishes = false;
};

template <class T>
struct SavedBln {
    Shape shape;
    // The input; backward forms both branches' x̂ = (input − shift)·inv_std from it again.
    Array<T> input;
    SetValues<T> shift_batch;    // batch branch, per (c, s) over n
    SetValues<T> shift_feature;  // feature branch, per (n, s) over c
    BlnBranch<T> batch, feature;
    T coef_batch = T(0), coef_feature = T(0);  // w_B/√C and w_F/√C
};

template <class T>
class BatchLayerNorm : public NormalizerBase<T, SavedBln<T>> {
  public:
    static constexpr const char* kName = "batch_layer_norm";
    static constexpr const char* kSummary =
        "batch and feature standardizations mixed by batch-size weights, /sqrt(C) (Ziaee & Cano "
        "2022)";
    using Options = BatchLayerNormOptions;

    explicit BatchLayerNorm(std::size_t num_features, Options options = {});

    // train: current statistics for both branches; adds them to the epoch's sums. eval: each of
    // the four statistics from the population or the current input, as the flags say.
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    // Keeps x itself for backward instead of a copy (see BasicNormalizer::forward(Array&&)).
    Array<T> forward(Array<T>&& x, Mode mode, Grad grad = Grad::keep) override;
    // Sum of the two branch projections (spec §6.4); a branch statistic that was a population
    // constant contributes no projection term.
    Array<T> backward(const Array<T>& dy) override;

    // The canonical spec, with batch_size and positions once the first call has fixed them.
    std::string spec() const override { return canonical_spec(kName, options_); }

    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    bool uses_batch_statistics() const override { return true; }

    // begin_epoch clears the epoch's sums; end_epoch turns them into the population statistics
    // (means over the epoch's steps, variances times B/(B−1)) and clears them.
    void begin_epoch() override;
    void end_epoch() override;

    const Options& options() const { return options_; }
    // The mixing weights a call with n samples uses.
    BlnWeights weights_for(std::size_t n) const;

    const Array<T>& moving_batch_mean() const { return moving_batch_mean_; }      // (C, S)
    const Array<T>& moving_batch_var() const { return moving_batch_var_; }        // (C, S)
    const Array<T>& moving_feature_mean() const { return moving_feature_mean_; }  // (B, S)
    const Array<T>& moving_feature_var() const { return moving_feature_var_; }    // (B, S)
    std::int64_t epoch_steps() const { return epoch_steps_; }
    // Training steps behind the population statistics; 0 = no epoch has ended yet.
    std::int64_t population_steps() const { return population_steps_; }

  private:
    // forward; handed_over: x is moved into the saved context by the caller, not copied.
    Array<T> run_forward(const Array<T>& x, Mode mode, Grad grad, bool handed_over);
    // Throws if x cannot be used in this mode with the fixed (or about to be fixed) geometry.
    void check_call(const Array<T>& x, const NcsView& v, bool train, std::size_t batch,
                    std::size_t positions) const;
    void allocate_buffers();
    void clear_sums();

    Options options_;
    // Population statistics (the published moving_Bmean, moving_Bvar, moving_Fmean,
    // moving_Fvar after update_mm_mv) and the sums of the current epoch.
    Array<T> moving_batch_mean_, moving_batch_var_, moving_feature_mean_, moving_feature_var_;
    Array<T> sum_batch_mean_, sum_batch_var_, sum_feature_mean_, sum_feature_var_;
    std::int64_t epoch_steps_ = 0;
    std::int64_t population_steps_ = 0;
};

}  // namespace normlab
