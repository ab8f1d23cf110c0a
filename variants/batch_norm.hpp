#pragma once
// Batch Normalization: each channel is standardized with the mean and biased variance of its
// values over the batch (and the trailing dims), then scaled and shifted per channel.
//
// Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
// Covariate Shift", ICML 2015, arXiv:1502.03167. Implements spec/normalizers.md §1 with the
// PyTorch conventions of §1.5 (unbiased running variance, momentum 0.1, cumulative average when
// momentum is none, "more than 1 value per channel" in training).

#include <cstdint>
#include <optional>

#include "normlab/running_stats.hpp"
#include "normlab/set_normalizer.hpp"

namespace normlab {

struct BatchNormOptions {
    double eps = 1e-5;
    std::optional<double> momentum = 0.1;
    bool affine = true;
    bool track_running_stats = true;

    template <class V>
    void visit(V& v) {
        v("eps", eps, "added to the batch variance inside the square root");
        v("momentum", momentum,
          "running = (1-momentum)*running + momentum*batch; none = cumulative average");
        v("affine", affine, "learnable per-channel weight (gamma) and bias (beta)");
        v("track_running_stats", track_running_stats,
          "keep running mean/var and use them in eval mode; false = batch statistics always");
    }
};

template <class T>
class BatchNorm : public SetNormalizer<T> {
  public:
    static constexpr const char* kName = "batch_norm";
    static constexpr const char* kSummary =
        "per channel over the batch and trailing dims (Ioffe & Szegedy 2015)";
    using Options = BatchNormOptions;

    explicit BatchNorm(std::size_t num_features, Options options = {});

    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    bool uses_batch_statistics() const override { return true; }

    const Options& options() const { return options_; }
    const Array<T>& running_mean() const { return running_.mean; }
    const Array<T>& running_var() const { return running_.var; }
    std::int64_t num_batches_tracked() const { return running_.batches; }

  private:
    Options options_;
    RunningStats<T> running_;
};

}  // namespace normlab
