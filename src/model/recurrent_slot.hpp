#pragma once
// One normalizer slot of a recurrent layer: a registered normalizer applied at every time step,
// wrapped in PerStepNormalizer when it uses batch statistics (Cooijmans et al. 2016, §3: the
// statistics of the early transient differ from the stationary regime, so each step keeps its
// own), with γ initialized as the recipe says and, optionally, β held at zero.

#include <memory>
#include <string>
#include <vector>

#include "normlab/normalizer.hpp"

namespace normlab::model {

template <class T>
class RecurrentSlot {
  public:
    // spec "none" or "": an empty slot (apply() returns its input). label names the slot in
    // errors and parameter names ("input_norm").
    RecurrentSlot(const std::string& spec, std::size_t features, std::size_t max_steps,
                  double gamma, bool learn_beta, std::string label);

    bool empty() const { return !norm_; }
    // x: the valid rows of step `step`, (rows, features). full_batch is the batch size before
    // padding was removed: a batch-statistics slot whose step keeps a single valid row only
    // because of padding normalizes that row with the step's running statistics (a batch of one
    // has no variance; the unpadded batch could run, so the padded one must too).
    Array<T> forward(const Array<T>& x, std::size_t step, std::size_t full_batch, Mode mode,
                     Grad grad);
    Array<T> backward(const Array<T>& dy);

    // Names prefixed with the label; a held-at-zero β is left out.
    std::vector<ParamRef<T>> parameters();
    std::vector<BufferRef<T>> buffers();
    std::vector<CounterRef> counters();
    void clear_saved();
    void begin_epoch();
    void end_epoch();
    BasicNormalizer<T>* normalizer() { return norm_.get(); }
    const std::string& label() const { return label_; }

  private:
    std::unique_ptr<BasicNormalizer<T>> norm_;
    bool per_step_ = false;
    bool learn_beta_ = true;
    std::string label_;
};

}  // namespace normlab::model
