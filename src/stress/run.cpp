#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>

#include "normlab/errors.hpp"
#include "normlab/stress.hpp"
#include "normlab/train/trainer.hpp"

namespace normlab::stress {
namespace {

// The synthetic set is one fixed data set (seed 0) for every run: the run's seed varies the
// weights and the batch order, never the data.
constexpr std::uint64_t kSyntheticDataSeed = 0;

struct RunData {
    data::Dataset train, validation, test;
};

const data::Split& full_split(const RunConfig& run) {
    static std::map<std::string, std::unique_ptr<data::Split>> cache;
    static std::mutex cache_mutex;  // concurrent runs (--jobs) load each data set once
    const std::lock_guard lock(cache_mutex);
    const std::size_t wanted = run.train_examples + run.validation_examples;
    const std::string key = run.data == "synthetic" ? "synthetic:" + std::to_string(wanted) + ":" +
                                                          std::to_string(run.test_examples)
                                                    : "fashion-mnist:" + run.data_dir;
    auto& slot = cache[key];
    if (!slot) {
        if (run.data == "synthetic")
            slot = std::make_unique<data::Split>(
                data::make_synthetic(wanted, run.test_examples, kSyntheticDataSeed));
        else if (run.data == "fashion-mnist")
            slot = std::make_unique<data::Split>(data::load_fashion_mnist(run.data_dir));
        else
            throw OptionError("stress: unknown data '" + run.data +
                              "'; expected fashion-mnist or synthetic");
    }
    return *slot;
}

RunData run_data(const RunConfig& run) {
    const auto& split = full_split(run);
    const std::size_t wanted = run.train_examples + run.validation_examples;
    if (wanted > split.train.size() || run.test_examples > split.test.size())
        throw OptionError(
            "stress: asked for " + std::to_string(run.train_examples) + " training + " +
            std::to_string(run.validation_examples) + " validation and " +
            std::to_string(run.test_examples) + " test examples; " + run.data + " has " +
            std::to_string(split.train.size()) + " and " + std::to_string(split.test.size()));
    return {split.train.slice(0, run.train_examples),
            split.train.slice(run.train_examples, run.validation_examples),
            split.test.slice(0, run.test_examples)};
}

train::TrainConfig trainer_config(const RunConfig& run, double lr) {
    train::TrainConfig c;
    c.workload = model_workload(run.workload);
    c.normalizer = run.normalizer;
    c.batch_size = run.batch_size;
    c.epochs = run.epochs;
    c.optimizer = run.optimizer;
    c.lr = lr;
    c.seed = run.seed;
    c.drop_last = true;  // every step sees a batch of the run's size
    c.evaluate_train_mode = true;
    c.loss_points = 20;
    return c;
}

void copy_training(const train::TrainResult& t, RunResult& r) {
    r.status = t.status;
    r.message = t.message;
    r.loss_curve = t.loss_curve;
    r.final_train_loss =
        t.loss_curve.empty() ? std::numeric_limits<double>::quiet_NaN() : t.loss_curve.back();
    r.examples_per_second = t.examples_per_second;
}

}  // namespace

RunResult run_configuration(const RunConfig& run, Progress& progress, train::Replicas* replicas) {
    const std::size_t replica_count = replicas ? std::size_t(replicas->size()) : 1;
    if (replica_count != run.ranks)
        throw OptionError("stress: the run is configured for " + std::to_string(run.ranks) +
                          " rank(s) but " + std::to_string(replica_count) + " replica(s) run it");
    const auto t0 = std::chrono::steady_clock::now();
    const RunData d = run_data(run);
    RunResult result;
    result.lr = run.lr;

    if (run.lr_sweep.empty()) {
        train::Trainer trainer(trainer_config(run, run.lr), d.train, d.test, replicas);
        const auto t = trainer.run([&](double f, double loss) { progress.update(f, loss); });
        copy_training(t, result);
        if (!t.epochs.empty()) {
            const auto& last = t.epochs.back();
            result.test_accuracy = last.test.accuracy;
            result.test_loss = last.test.loss;
            result.test_accuracy_train_mode = last.test_train_mode.accuracy;
        }
    } else {
        // Every multiplier trains on the same data and seed and is scored on the validation
        // split; the best one (by validation accuracy, eval mode) is scored on the test set.
        double best_accuracy = -1;
        std::unique_ptr<train::Trainer> best;
        const double parts = double(run.lr_sweep.size());
        for (std::size_t i = 0; i < run.lr_sweep.size(); ++i) {
            const double lr = run.lr * run.lr_sweep[i];
            auto trainer = std::make_unique<train::Trainer>(trainer_config(run, lr), d.train,
                                                            d.validation, replicas);
            const auto t = trainer->run(
                [&](double f, double loss) { progress.update((double(i) + f) / parts, loss); });
            const double accuracy = t.status == "ok" ? t.epochs.back().test.accuracy : -1;
            if (accuracy > best_accuracy || !best) {
                best_accuracy = accuracy;
                best = std::move(trainer);
                copy_training(t, result);
                result.lr = lr;
            }
        }
        if (result.status == "ok") {
            const auto scores = best->evaluate_modes(d.test);
            result.test_accuracy = scores.eval.accuracy;
            result.test_loss = scores.eval.loss;
            result.test_accuracy_train_mode = scores.train_mode.accuracy;
        }
    }
    if (result.status != "ok") {
        // Metrics of a run that did not finish are not results; NaN keeps them out of means.
        result.test_accuracy = result.test_loss = result.test_accuracy_train_mode =
            std::numeric_limits<double>::quiet_NaN();
    }
    result.wall_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;
}

}  // namespace normlab::stress
