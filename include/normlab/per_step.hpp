#pragma once
// Per-time-step statistics for a normalizer applied at every step of a recurrent network
// (Cooijmans et al. 2016, "Recurrent Batch Normalization", arXiv:1603.09025, §3; spec §7.1):
// one inner normalizer — and so one set of running statistics — per step 0 … T_max−1, all
// sharing one γ and β. At inference, steps beyond T_max−1 reuse the statistics of the last step.
// Works with any registered normalizer; it matters for those with batch statistics.

#include <memory>
#include <string>
#include <vector>

#include "normlab/normalizer.hpp"

namespace normlab {

template <class T>
class PerStepNormalizer : public BasicNormalizer<T> {
  public:
    // Throws OptionError for a bad spec or max_steps = 0.
    PerStepNormalizer(const std::string& spec, std::size_t num_features, std::size_t max_steps);

    // The step the next forward belongs to (0-based). Training beyond max_steps − 1 is a
    // ShapeError; eval beyond it uses the last step's statistics.
    void set_step(std::size_t step) { step_ = step; }
    std::size_t max_steps() const { return steps_.size(); }

    std::string name() const override { return "per_step"; }
    std::string spec() const override;
    std::size_t num_features() const override { return num_features_; }

    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;

    // The shared γ, β (named like the inner normalizer's).
    std::vector<ParamRef<T>> parameters() override;
    // Every step's buffers and counters, named "step<t>.<name>".
    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;

    std::size_t saved_contexts() const override { return pending_steps_.size(); }
    void clear_saved() override;
    bool uses_batch_statistics() const override { return steps_.front()->uses_batch_statistics(); }
    void begin_epoch() override;
    void end_epoch() override;

    BasicNormalizer<T>& step_normalizer(std::size_t step) { return *steps_.at(step); }

  private:
    std::size_t num_features_;
    std::vector<std::unique_ptr<BasicNormalizer<T>>> steps_;
    std::vector<Array<T>> shared_values_, shared_grads_;
    std::vector<std::string> param_names_;
    std::vector<std::size_t> pending_steps_;  // the step of every saved context, LIFO
    std::size_t step_ = 0;
};

}  // namespace normlab
