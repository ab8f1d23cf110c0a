#pragma once
// Training a model on a classification set with any normalizer, evaluating it in eval mode
// (running statistics) and in train mode (batch statistics), and checkpointing it.

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "normlab/data/dataset.hpp"
#include "normlab/model/training.hpp"

namespace normlab::train {

struct TrainConfig {
    // mlp (the BN paper's), relu_mlp, cnn, lstm (row-by-row), lstm_varlen (rows truncated to
    // per-example lengths); see model::build_model.
    std::string workload = "mlp";
    std::string normalizer = "batch_norm";
    std::size_t batch_size = 60;
    std::size_t epochs = 1;
    std::string optimizer = "sgd";  // sgd or adam
    double lr = 0.1;
    double momentum = 0.9;
    double weight_decay = 0.0;
    bool decay_normalizers = false;
    std::string schedule = "constant";  // constant, step (×0.1 at 50% and 75%), cosine
    std::uint64_t seed = 0;             // weights, data order, dropout
    bool drop_last = true;              // every step sees a full batch
    bool evaluate_train_mode = true;
    std::size_t eval_batch_size = 0;  // train-mode evaluation batches; 0: batch_size
    std::size_t loss_points = 20;     // resolution of the loss curve
};

struct Evaluation {
    double loss = 0;
    double accuracy = 0;
};

struct ModeEvaluations {
    Evaluation eval;        // running statistics where kept
    Evaluation train_mode;  // batch statistics (NaN when it could not run)
};

struct EpochMetrics {
    std::size_t epoch = 0;
    double train_loss = 0;
    Evaluation test;             // eval mode
    Evaluation test_train_mode;  // batch statistics (NaN when it could not run)
    double seconds = 0;
};

struct TrainResult {
    std::string status = "ok";  // ok | diverged | error
    std::string message;
    std::vector<EpochMetrics> epochs;
    std::vector<double> loss_curve;  // mean training loss per 1/loss_points of the run
    double examples_per_second = 0;  // training steps only
    double wall_seconds = 0;
    std::size_t steps = 0;
};

using ProgressFn = std::function<void(double fraction, double loss)>;

// Data-parallel training (docs/distributed.md): this process is replica rank() of size(). Every
// replica builds the same model from the same seed, iterates over the same global batches of
// size()·batch_size examples and trains on its shard of each; gradients are averaged before
// every optimizer step, so the replicas stay identical. normlab::mpi::MpiReplicas implements it
// over MPI; the trainer itself needs no MPI.
class Replicas {
  public:
    virtual ~Replicas() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // Replaces every gradient by its mean over the replicas.
    virtual void average_gradients(model::Sequential<float>& model) = 0;
    // Copies replica 0's buffers and counters (running statistics) to every replica, as
    // PyTorch's DistributedDataParallel does before each forward: normalizers that keep
    // per-replica statistics (batch_norm on each shard) then evaluate with replica 0's.
    virtual void broadcast_buffers(model::Sequential<float>& model) = 0;
    // Element-wise sums over the replicas, in place; every replica receives them.
    virtual void sum(std::span<double> values) = 0;
};

// Mode::eval: running statistics where kept. Mode::train: batch statistics of batches of
// batch_size in a fixed order; every running statistic is restored afterwards. Sequence lengths
// come from data.lengths when it has them, otherwise from the model's length rule (if any).
Evaluation evaluate(model::Sequential<float>& model, const data::Dataset& data,
                    const Shape& example_shape, Mode mode, std::size_t batch_size);
// The same, data-parallel: every replica scores its shard and the sums are combined, so all
// replicas return the score of the whole set. Mode::eval: replica r scores the r-th contiguous
// part of the data. Mode::train: global batches of replicas.size()·batch_size, each replica
// normalizing its shard (with synchronized normalizers, the global batch); a last batch with
// fewer examples than replicas is not scored.
Evaluation evaluate(model::Sequential<float>& model, const data::Dataset& data,
                    const Shape& example_shape, Mode mode, std::size_t batch_size,
                    Replicas& replicas);

class Trainer {
  public:
    // Builds the model and optimizer from the config; OptionError for bad options. With
    // replicas, config.batch_size is the batch of each replica and the run is data-parallel
    // (global batch replicas->size()·batch_size); every replica must construct its Trainer
    // with the same config and data and call the same methods in the same order.
    Trainer(TrainConfig config, const data::Dataset& train, const data::Dataset& test,
            Replicas* replicas = nullptr);

    // Runs the remaining epochs (all of them, or those left after load_checkpoint). A NaN/Inf
    // loss (or non-finite statistics) ends the run as "diverged"; an exception from a layer as
    // "error" with its message; neither throws. Data-parallel, the replicas agree on the loss
    // and on failure at every step, so all of them end the same way at the same step.
    TrainResult run(const ProgressFn& progress = {});
    // One epoch; returns false when the run diverged.
    bool run_epoch(TrainResult& result, const ProgressFn& progress = {});

    // A data set scored as every epoch scores the test set: eval mode in batches of 256, and,
    // with evaluate_train_mode, train mode in batches of eval_batch_size (or batch_size); NaN
    // when the normalizers cannot take batch statistics of those batches (single values).
    ModeEvaluations evaluate_modes(const data::Dataset& data);

    // Everything needed to continue identically: parameters, normalizer buffers and counters,
    // optimizer state, epoch and step, and the configuration (checked on load). Data-parallel,
    // the replicas hold the same state after every step: let one rank save, and every rank load.
    void save_checkpoint(const std::string& path);
    // StateError/IoError for a file of another configuration or a damaged file; the trainer is
    // unchanged then.
    void load_checkpoint(const std::string& path);

    model::Sequential<float>& model() { return model_; }
    std::size_t epoch() const { return std::size_t(epoch_); }
    const TrainConfig& config() const { return config_; }

  private:
    std::string config_text() const;
    std::size_t replica_count() const { return replicas_ ? std::size_t(replicas_->size()) : 1; }
    double train_step(const Array<float>& x, const std::vector<int>& y,
                      const std::vector<std::size_t>& lengths, std::size_t global_rows,
                      std::size_t step);

    TrainConfig config_;
    Replicas* replicas_;
    const data::Dataset& train_;
    const data::Dataset& test_;
    Shape example_shape_;
    model::Sequential<float> model_;
    model::Optimizer<float> optimizer_;
    model::Schedule schedule_;
    std::int64_t epoch_ = 0;
    std::vector<double> curve_sum_, curve_count_;
    double trained_examples_ = 0, trained_seconds_ = 0;  // for examples per second
};

}  // namespace normlab::train
