#pragma once
// Synchronized BatchNorm: BatchNorm whose batch statistics are those of the union of every
// rank's batch, so K ranks with b examples each normalize exactly like one process with K·b.
// The GroupNorm paper (Wu & He 2018, arXiv:1803.08494, §2) and the Batch Renorm paper (Ioffe
// 2017, §1) name it as the standard remedy for small per-device batches; PyTorch calls it
// SyncBatchNorm.
//
// Implements spec/normalizers.md §1 (BatchNorm, PyTorch conventions of §1.5) over MPI:
//   forward:  local count, mean, M2 per channel (kernels::collect_moments), one all-reduce that
//             merges them with Chan's parallel formula, then the usual normalize + affine;
//             running statistics use the global mean and the unbiased variance of the global
//             count, so they are identical on every rank.
//   backward: local Σdy and Σdy·x̂ per channel, one all-reduce, then spec §1.3 with the global
//             sums and M = the global count. dγ, dβ hold this rank's contribution only; averaging
//             them with the other parameters (average_gradients) gives the full-batch gradient.
// Each pass first runs a small agreement all-reduce (docs/distributed.md), so a shape mismatch
// or a failure on one rank raises an exception on every rank instead of hanging. A rank may hold
// 0 or 1 examples as long as the global count per channel exceeds 1.

#include <cstdint>

#include "normlab/mpi/communicator.hpp"
#include "normlab/normalizer_base.hpp"
#include "normlab/running_stats.hpp"
#include "variants/batch_norm.hpp"

namespace normlab::mpi {

// A forward context plus what the synchronized backward needs: the global count per channel.
template <class T>
struct SavedSyncNormalization : SavedNormalization<T> {
    std::int64_t count = 0;
};

template <class T>
class SyncBatchNorm : public NormalizerBase<T, SavedSyncNormalization<T>> {
  public:
    static constexpr const char* kName = "sync_batch_norm";
    static constexpr const char* kSummary =
        "batch_norm with statistics over the batches of all MPI ranks (normlab_mpi)";
    using Options = BatchNormOptions;  // the same options, defaults and meaning as batch_norm

    explicit SyncBatchNorm(std::size_t num_features, Options options = {},
                           Communicator comm = Communicator());

    // train (or eval without running statistics): global batch statistics, collective on every
    // rank of the communicator. eval with running statistics: local, no communication.
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    // Collective whatever the mode of the matching forward (the agreement step always runs).
    Array<T> backward(const Array<T>& dy) override;

    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    bool uses_batch_statistics() const override { return true; }

    const Options& options() const { return options_; }
    const Communicator& communicator() const { return comm_; }
    const Array<T>& running_mean() const { return running_.mean; }
    const Array<T>& running_var() const { return running_.var; }

  private:
    Options options_;
    Communicator comm_;
    RunningStats<T> running_;
    std::int64_t forward_calls_ = 0;  // synchronized forwards; ranks must agree on it
    std::int64_t backward_calls_ = 0;
};

}  // namespace normlab::mpi
