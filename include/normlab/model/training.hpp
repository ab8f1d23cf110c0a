#pragma once
// Loss, optimizers, learning-rate schedules and model builders.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "normlab/model/layer.hpp"
#include "normlab/model/layers.hpp"

namespace normlab::model {

struct LossResult {
    double loss = 0;  // mean over the batch
    std::size_t correct = 0;
};

// Softmax cross-entropy of logits (N, K) against labels in [0, K), computed with the max
// subtracted (no overflow for large logits); fills *dlogits with ∂loss/∂logits when given.
// ShapeError for mismatched sizes or labels out of range.
template <class T>
LossResult softmax_cross_entropy(const Array<T>& logits, const std::vector<int>& labels,
                                 Array<T>* dlogits = nullptr);

struct SgdOptions {
    double momentum = 0.9;
    double weight_decay = 0.0;
    bool decay_normalizers = false;  // false: γ, β of normalizers are not decayed
};

struct AdamOptions {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    double weight_decay = 0.0;  // L2, added to the gradient
    bool decay_normalizers = false;
};

// One optimizer for every parameter of a model; state (velocities, moments, step) is exposed as
// named buffers so checkpoints can save and restore it.
template <class T>
class Optimizer {
  public:
    static Optimizer sgd(std::vector<ModelParam<T>> params, SgdOptions options);
    static Optimizer adam(std::vector<ModelParam<T>> params, AdamOptions options);
    void step(double lr);
    std::vector<BufferRef<T>> state();
    std::int64_t steps() const { return steps_; }
    std::int64_t* steps_counter() { return &steps_; }
    const std::string& kind() const { return kind_; }

  private:
    std::string kind_;
    std::vector<ModelParam<T>> params_;
    std::vector<Array<T>> first_, second_;
    SgdOptions sgd_;
    AdamOptions adam_;
    std::int64_t steps_ = 0;
};

// lr at a step: "constant", "step" (×gamma every `every` steps), "cosine" (to 0 over `total`).
struct Schedule {
    std::string kind = "constant";
    double base = 0.1;
    std::size_t every = 0;
    double gamma = 0.1;
    std::size_t total = 0;
    double at(std::size_t step) const;
};

// The workloads of DESIGN.md, each taking the normalizer spec (one argument swaps it).
// "bn_mlp": the BN paper's MLP (spec §1.8) — 784 → 3 × (linear 100 → norm → sigmoid) →
//           linear 10, small Gaussian initial weights N(0, 1/fan_in), the normalizer before each
//           nonlinearity; the linear layer before a normalizer has no bias (β takes its role).
// "relu_mlp": the same with ReLU and He initialization.
// "cnn": (1, 28, 28) → [conv3×3 16 → norm → ReLU → maxpool2] → [conv3×3 32 → norm → ReLU →
//        maxpool2] → conv3×3 64 → norm → ReLU → global average pool → linear 10.
// "lstm": row-by-row images, (N, 28, 28) read as 28 steps of 28 pixels → LSTM with 128 hidden
//         units → linear 10 on the last hidden state. The normalizer goes into all three slots
//         (input, recurrent, cell) with the recipe of RecurrentNorms::recipe_for: BN-LSTM's
//         (γ = 0.1, β_x = β_h = 0) for batch-statistics normalizers, LN-LSTM's otherwise;
//         "identity" is a plain LSTM. Per-step statistics for the 28 steps.
// "lstm_varlen": the same network on rows truncated to a per-example length in [7, 28]: the
//         rows beyond it are padding (present in the input, masked). The length of an example
//         is drawn from a hash of its pixels (varlen_lengths), so it is the same whatever the
//         subset, order or caller; the model carries it as its length rule. Data sets with
//         their own lengths (Dataset::lengths) take precedence.
template <class T>
Sequential<T> build_model(const std::string& workload, const std::string& normalizer,
                          std::uint64_t seed);

// The input shape a workload expects per example: (784,), (1, 28, 28) or (28, 28).
Shape example_shape(const std::string& workload);

// The lstm_varlen lengths of a batch (N, 28, 28) (or (N, 784)): for each example, 7 + h % 22
// with h a 64-bit hash of its pixel values — uniform over [7, 28], fixed by the data alone.
template <class T>
std::vector<std::size_t> varlen_lengths(const Array<T>& batch);

}  // namespace normlab::model
