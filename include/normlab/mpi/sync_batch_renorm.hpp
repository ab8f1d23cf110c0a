#pragma once
// Synchronized Batch Renormalization: Batch Renorm (Ioffe 2017, arXiv:1702.03275, spec §2)
// whose μ_B and σ_B are those of the union of every rank's batch, so r and d, the moving mean and
// the moving std are the same on every rank and equal to a single process with the global batch.
// The statistics travel as in SyncBatchNorm (one all-reduce of count, mean, M2 per channel in
// the forward, one of Σdy, Σdy·x̂ in the backward); the r/d correction, the relaxation schedule
// and the options are batch_renorm's.

#include <cstdint>

#include "normlab/mpi/communicator.hpp"
#include "normlab/normalizer_base.hpp"
#include "variants/batch_renorm.hpp"

namespace normlab::mpi {

template <class T>
struct SavedSyncRenorm : SavedRenorm<T> {
    std::int64_t count = 0;  // values per channel on all ranks together
};

template <class T>
class SyncBatchRenorm : public NormalizerBase<T, SavedSyncRenorm<T>> {
  public:
    static constexpr const char* kName = "sync_batch_renorm";
    static constexpr const char* kSummary =
        "batch_renorm with statistics over the batches of all MPI ranks (normlab_mpi)";
    using Options = BatchRenormOptions;

    explicit SyncBatchRenorm(std::size_t num_features, Options options = {},
                             Communicator comm = Communicator());

    // train: collective; eval: y = γ·(x − moving_mean)/moving_std + β, local.
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    // Collective whatever the mode of the matching forward; r and d are constants.
    Array<T> backward(const Array<T>& dy) override;

    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    bool uses_batch_statistics() const override { return true; }

    RenormClip clip() const { return renorm_clip(options_, step_); }
    const Options& options() const { return options_; }
    const Communicator& communicator() const { return comm_; }
    const Array<T>& moving_mean() const { return moving_mean_; }
    const Array<T>& moving_std() const { return moving_std_; }
    std::int64_t step() const { return step_; }

  private:
    Options options_;
    Communicator comm_;
    Array<T> moving_mean_;  // zeros
    Array<T> moving_std_;   // ones; includes ε, like σ_B
    std::int64_t step_ = 0;
    std::int64_t forward_calls_ = 0;
    std::int64_t backward_calls_ = 0;
};

}  // namespace normlab::mpi
