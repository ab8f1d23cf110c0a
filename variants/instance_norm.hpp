#pragma once
// Instance Normalization: each (sample, channel) is standardized over its trailing dims only.
// Statistics are recomputed per input in train and eval, unless running statistics are tracked.
//
// Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for Fast
// Stylization", 2016, arXiv:1607.08022. Implements spec/normalizers.md §4 with the defaults of
// PyTorch's InstanceNorm{1,2,3}d (affine=false, track_running_stats=false).

#include <cstdint>
#include <optional>

#include "normlab/running_stats.hpp"
#include "normlab/set_normalizer.hpp"

namespace normlab {

struct InstanceNormOptions {
    double eps = 1e-5;
    std::optional<double> momentum = 0.1;
    bool affine = false;
    bool track_running_stats = false;

    template <class V>
    void visit(V& v) {
        v("eps", eps, "added to the variance inside the square root");
        v("momentum", momentum,
          "for running statistics: running = (1-momentum)*running + momentum*batch mean over "
          "samples; none = cumulative average");
        v("affine", affine, "learnable per-channel weight (gamma) and bias (beta)");
        v("track_running_stats", track_running_stats,
          "keep per-channel running mean/var and use them in eval mode");
    }
};

template <class T>
class InstanceNorm : public SetNormalizer<T> {
  public:
    static constexpr const char* kName = "instance_norm";
    static constexpr const char* kSummary =
        "per sample and channel over the trailing dims (Ulyanov et al. 2016)";
    using Options = InstanceNormOptions;

    explicit InstanceNorm(std::size_t num_features, Options options = {});

    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    bool uses_batch_statistics() const override { return false; }

    const Options& options() const { return options_; }
    const Array<T>& running_mean() const { return running_.mean; }
    const Array<T>& running_var() const { return running_.var; }

  private:
    Options options_;
    RunningStats<T> running_;
};

}  // namespace normlab
