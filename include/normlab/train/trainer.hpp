#pragma once
// Training a model on a classification set with any normalizer, evaluating it in eval mode
// (running statistics) and in train mode (batch statistics), and checkpointing it.

#include <cstdint>
#include <functional>
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

// Mode::eval: running statistics where kept. Mode::train: batch statistics of batches of
// batch_size in a fixed order; every running statistic is restored afterwards. Sequence lengths
// come from data.lengths when it has them, otherwise from the model's length rule (if any).
Evaluation evaluate(model::Sequential<float>& model, const data::Dataset& data,
                    const Shape& example_shape, Mode mode, std::size_t batch_size);

class Trainer {
  public:
    // Builds the model and optimizer from the config; OptionError for bad options.
    Trainer(TrainConfig config, const data::Dataset& train, const data::Dataset& test);

    // Runs the remaining epochs (all of them, or those left after load_checkpoint). A NaN/Inf
    // loss (or non-finite statistics) ends the run as "diverged"; an exception from a layer as
    // "error" with its message; neither throws.
    TrainResult run(const ProgressFn& progress = {});
    // One epoch; returns false when the run diverged.
    bool run_epoch(TrainResult& result, const ProgressFn& progress = {});

    // A data set scored as every epoch scores the test set: eval mode in batches of 256, and,
    // with evaluate_train_mode, train mode in batches of eval_batch_size (or batch_size); NaN
    // when the normalizers cannot take batch statistics of those batches (single values).
    ModeEvaluations evaluate_modes(const data::Dataset& data);

    // Everything needed to continue identically: parameters, normalizer buffers and counters,
    // optimizer state, epoch and step, and the configuration (checked on load).
    void save_checkpoint(const std::string& path);
    // StateError/IoError for a file of another configuration or a damaged file; the trainer is
    // unchanged then.
    void load_checkpoint(const std::string& path);

    model::Sequential<float>& model() { return model_; }
    std::size_t epoch() const { return std::size_t(epoch_); }
    const TrainConfig& config() const { return config_; }

  private:
    std::string config_text() const;

    TrainConfig config_;
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
