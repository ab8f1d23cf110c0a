#include "normlab/train/trainer.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <stdexcept>

#include "normlab/data/dataset.hpp"
#include "normlab/errors.hpp"
#include "normlab/npz.hpp"
#include "normlab/state_snapshot.hpp"

namespace normlab::train {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

model::Optimizer<float> make_optimizer(const TrainConfig& c, model::Sequential<float>& m) {
    if (c.optimizer == "sgd")
        return model::Optimizer<float>::sgd(m.parameters(),
                                            {c.momentum, c.weight_decay, c.decay_normalizers});
    if (c.optimizer == "adam") {
        model::AdamOptions o;
        o.weight_decay = c.weight_decay;
        o.decay_normalizers = c.decay_normalizers;
        return model::Optimizer<float>::adam(m.parameters(), o);
    }
    throw OptionError("train: unknown optimizer '" + c.optimizer + "'; expected sgd or adam");
}

Array<std::uint8_t> text_array(const std::string& s) {
    return xt::adapt(std::vector<std::uint8_t>(s.begin(), s.end()));
}

}  // namespace

Evaluation evaluate(model::Sequential<float>& model, const data::Dataset& data,
                    const Shape& example_shape, Mode mode, std::size_t batch_size) {
    // A diagnostic pass in train mode changes no running statistic.
    const StateSnapshot snapshot(model);
    Evaluation e;
    data::BatchIterator it(data, batch_size, 0, 0, false, false);
    Array<float> x;
    std::vector<int> y;
    std::vector<std::size_t> lengths;
    std::size_t correct = 0;
    double loss_sum = 0;
    try {
        while (it.next(x, y, example_shape, &lengths)) {
            const auto r = model::softmax_cross_entropy(
                lengths.empty() ? model.forward(x, mode, Grad::none)
                                : model.forward(x, lengths, mode, Grad::none),
                y);
            loss_sum += r.loss * double(y.size());
            correct += r.correct;
        }
    } catch (...) {
        snapshot.restore(model);
        throw;
    }
    snapshot.restore(model);
    e.loss = loss_sum / double(data.size());
    e.accuracy = double(correct) / double(data.size());
    return e;
}

Evaluation evaluate(model::Sequential<float>& model, const data::Dataset& data,
                    const Shape& example_shape, Mode mode, std::size_t batch_size,
                    Replicas& replicas) {
    const auto rank = std::size_t(replicas.rank()), count = std::size_t(replicas.size());
    // loss sum, correct, examples scored, replicas that failed
    std::array<double, 4> sums{};
    std::exception_ptr failure;
    try {
        if (mode == Mode::eval) {
            // Nothing in eval mode crosses replicas: each scores its part on its own.
            const data::RowRange part = data::shard_rows(data.size(), rank, count);
            if (part.size() > 0) {
                const Evaluation e = evaluate(model, data.slice(part.begin, part.size()),
                                              example_shape, mode, batch_size);
                sums = {e.loss * double(part.size()), e.accuracy * double(part.size()),
                        double(part.size()), 0};
            }
        } else {
            const StateSnapshot snapshot(model);
            try {
                data::BatchIterator it(data, batch_size * count, 0, 0, false, false);
                it.shard(rank, count);
                Array<float> x;
                std::vector<int> y;
                std::vector<std::size_t> lengths;
                while (it.next(x, y, example_shape, &lengths)) {
                    const auto r = model::softmax_cross_entropy(
                        lengths.empty() ? model.forward(x, mode, Grad::none)
                                        : model.forward(x, lengths, mode, Grad::none),
                        y);
                    sums[0] += r.loss * double(y.size());
                    sums[1] += double(r.correct);
                    sums[2] += double(y.size());
                }
            } catch (...) {
                snapshot.restore(model);
                throw;
            }
            snapshot.restore(model);
        }
    } catch (...) {
        failure = std::current_exception();
        sums[3] = 1;
    }
    replicas.sum(sums);
    if (sums[3] > 0) {
        if (failure) std::rethrow_exception(failure);
        throw std::runtime_error("evaluate: " + std::to_string(int(sums[3])) +
                                 " other replica(s) failed");
    }
    if (sums[2] == 0)
        throw ShapeError("evaluate: no example could be scored (" + std::to_string(data.size()) +
                         " examples, " + std::to_string(count) + " replicas)");
    return {sums[0] / sums[2], sums[1] / sums[2]};
}

Trainer::Trainer(TrainConfig config, const data::Dataset& train, const data::Dataset& test,
                 Replicas* replicas)
    : config_(std::move(config)),
      replicas_(replicas),
      train_(train),
      test_(test),
      example_shape_(model::example_shape(config_.workload)),
      model_(model::build_model<float>(config_.workload, config_.normalizer, config_.seed)),
      optimizer_(make_optimizer(config_, model_)) {
    if (config_.batch_size == 0)
        throw OptionError("train: the batch size must be at least 1, got 0");
    const std::size_t global_batch = config_.batch_size * replica_count();
    if (global_batch > train.size())
        throw OptionError("train: batch size " + std::to_string(config_.batch_size) +
                          (replicas_ ? " × " + std::to_string(replica_count()) + " replicas" : "") +
                          " exceeds the " + std::to_string(train.size()) + " training examples");
    if (!(config_.lr > 0)) throw OptionError("train: the learning rate must be > 0");
    const std::size_t per_epoch =
        data::BatchIterator(train, global_batch, 0, 0, config_.drop_last, false).batches();
    const std::size_t total = per_epoch * config_.epochs;
    schedule_.base = config_.lr;
    schedule_.kind = config_.schedule;
    if (config_.schedule == "step") {
        schedule_.every = std::max<std::size_t>(total / 2, 1);
        schedule_.gamma = 0.1;
    } else if (config_.schedule == "cosine") {
        schedule_.total = total;
    } else if (config_.schedule != "constant") {
        throw OptionError("train: unknown schedule '" + config_.schedule +
                          "'; expected constant, step or cosine");
    }
    curve_sum_.assign(std::max<std::size_t>(config_.loss_points, 1), 0.0);
    curve_count_.assign(curve_sum_.size(), 0.0);
}

double Trainer::train_step(const Array<float>& x, const std::vector<int>& y,
                           const std::vector<std::size_t>& lengths, std::size_t global_rows,
                           std::size_t step) {
    Array<float> dlogits;
    model_.zero_grad();
    if (!replicas_) {
        const auto r =
            model::softmax_cross_entropy(lengths.empty() ? model_.forward(x, Mode::train)
                                                         : model_.forward(x, lengths, Mode::train),
                                         y, &dlogits);
        if (std::isfinite(r.loss)) model_.backward(dlogits);
        return r.loss;
    }
    // Models without running statistics (layer_norm, ...) skip the collective on every rank.
    if (!model_.buffers().empty() || !model_.counters().empty())
        replicas_->broadcast_buffers(model_);
    // The replicas agree on the loss and on failure before their gradients meet: one that
    // threw while the others went on to the gradient all-reduce would leave them waiting.
    // A shard's share of the global batch weights its loss, so uneven shards (a last partial
    // batch) give the gradient of the global mean, as one process would.
    const double share = double(y.size()) / double(global_rows);
    std::array<double, 3> status{};  // weighted loss, replicas that threw, non-finite
    std::exception_ptr failure;
    try {
        const auto r =
            model::softmax_cross_entropy(lengths.empty() ? model_.forward(x, Mode::train)
                                                         : model_.forward(x, lengths, Mode::train),
                                         y, &dlogits);
        status[0] = r.loss * share;
        if (std::isfinite(r.loss)) {
            const double scale = share * double(replica_count());
            if (scale != 1.0) dlogits *= float(scale);
            model_.backward(dlogits);
        }
    } catch (const NonFiniteError&) {
        failure = std::current_exception();
        status[2] = 1;
    } catch (...) {
        failure = std::current_exception();
        status[1] = 1;
    }
    replicas_->sum(status);
    if (status[1] > 0 || status[2] > 0) {
        model_.clear_saved();
        if (failure) std::rethrow_exception(failure);
        if (status[1] > 0)
            throw std::runtime_error("step " + std::to_string(step) + ": " +
                                     std::to_string(int(status[1])) + " other replica(s) failed");
        throw NonFiniteError("step " + std::to_string(step) +
                             ": non-finite values on another replica");
    }
    if (std::isfinite(status[0])) replicas_->average_gradients(model_);
    return status[0];
}

bool Trainer::run_epoch(TrainResult& result, const ProgressFn& progress) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t replicas = replica_count();
    data::BatchIterator it(train_, config_.batch_size * replicas, config_.seed, std::size_t(epoch_),
                           config_.drop_last);
    if (replicas_) it.shard(std::size_t(replicas_->rank()), replicas);
    const std::size_t total_steps = it.batches() * config_.epochs;
    Array<float> x;
    std::vector<int> y;
    std::vector<std::size_t> lengths;
    double loss_sum = 0;
    std::size_t batches = 0, examples = 0;
    model_.begin_epoch();
    while (it.next(x, y, example_shape_, &lengths)) {
        const std::size_t step = std::size_t(optimizer_.steps());
        const double loss = train_step(x, y, lengths, it.batch_rows(), step);
        if (!std::isfinite(loss)) {
            model_.clear_saved();
            result.status = "diverged";
            result.message =
                "training loss became " + std::to_string(loss) + " at step " + std::to_string(step);
            return false;
        }
        optimizer_.step(schedule_.at(step));
        loss_sum += loss;
        ++batches;
        examples += it.batch_rows();
        const std::size_t point =
            std::min(curve_sum_.size() - 1,
                     step * curve_sum_.size() / std::max<std::size_t>(total_steps, 1));
        curve_sum_[point] += loss;
        curve_count_[point] += 1;
        if (progress) progress(double(step + 1) / double(total_steps), loss);
    }
    model_.end_epoch();
    const double train_seconds = seconds_since(t0);
    ++epoch_;

    EpochMetrics m;
    m.epoch = std::size_t(epoch_);
    m.train_loss = batches ? loss_sum / double(batches) : 0.0;
    const ModeEvaluations scores = evaluate_modes(test_);
    m.test = scores.eval;
    m.test_train_mode = scores.train_mode;
    m.seconds = seconds_since(t0);
    result.epochs.push_back(m);
    result.steps += batches;
    trained_examples_ += double(examples);
    trained_seconds_ += train_seconds;
    result.examples_per_second = trained_examples_ / std::max(trained_seconds_, 1e-9);
    if (!std::isfinite(m.test.loss)) {
        result.status = "diverged";
        result.message = "test loss is " + std::to_string(m.test.loss) + " after epoch " +
                         std::to_string(m.epoch);
        return false;
    }
    return true;
}

ModeEvaluations Trainer::evaluate_modes(const data::Dataset& data) {
    // Data-parallel, the replicas score with replica 0's running statistics (those a
    // checkpoint of replica 0 would hold).
    if (replicas_) replicas_->broadcast_buffers(model_);
    auto score = [&](Mode mode, std::size_t batch_size) {
        return replicas_ ? evaluate(model_, data, example_shape_, mode, batch_size, *replicas_)
                         : evaluate(model_, data, example_shape_, mode, batch_size);
    };
    ModeEvaluations scores;
    scores.eval = score(Mode::eval, 256);
    scores.train_mode = {std::numeric_limits<double>::quiet_NaN(),
                         std::numeric_limits<double>::quiet_NaN()};
    if (config_.evaluate_train_mode) {
        try {
            scores.train_mode = score(Mode::train, config_.eval_batch_size ? config_.eval_batch_size
                                                                           : config_.batch_size);
        } catch (const std::exception&) {
            // e.g. batch statistics of single values: there is no train-mode output to score.
        }
    }
    return scores;
}

TrainResult Trainer::run(const ProgressFn& progress) {
    TrainResult result;
    const auto t0 = std::chrono::steady_clock::now();
    try {
        while (std::size_t(epoch_) < config_.epochs)
            if (!run_epoch(result, progress)) break;
    } catch (const NonFiniteError& e) {
        model_.clear_saved();
        result.status = "diverged";
        result.message = e.what();
    } catch (const std::exception& e) {
        model_.clear_saved();
        result.status = "error";
        result.message = e.what();
    }
    for (std::size_t i = 0; i < curve_sum_.size(); ++i)
        if (curve_count_[i] > 0) result.loss_curve.push_back(curve_sum_[i] / curve_count_[i]);
    result.wall_seconds = seconds_since(t0);
    return result;
}

std::string Trainer::config_text() const {
    const auto& c = config_;
    return "workload=" + c.workload + ";normalizer=" + c.normalizer +
           ";batch_size=" + std::to_string(c.batch_size) + ";epochs=" + std::to_string(c.epochs) +
           ";optimizer=" + c.optimizer + ";lr=" + std::to_string(c.lr) +
           ";momentum=" + std::to_string(c.momentum) +
           ";weight_decay=" + std::to_string(c.weight_decay) + ";schedule=" + c.schedule +
           ";seed=" + std::to_string(c.seed) + ";drop_last=" + std::to_string(c.drop_last) +
           ";train_examples=" + std::to_string(train_.size());
}

void Trainer::save_checkpoint(const std::string& path) {
    NpzArchive a;
    a.put("__config__", text_array(config_text()));
    a.put("epoch", Array<std::int64_t>(epoch_));
    a.put("optimizer.steps", Array<std::int64_t>(optimizer_.steps()));
    for (auto& p : model_.parameters())
        a.put("model." + p.name, *p.value);
    for (auto& b : model_.buffers())
        a.put("model." + b.name, *b.value);
    for (auto& c : model_.counters())
        a.put("model." + c.name, Array<std::int64_t>(*c.value));
    for (auto& s : optimizer_.state())
        a.put("optimizer." + s.name, *s.value);
    a.put("loss_curve.sum", Array<double>(xt::adapt(curve_sum_)));
    a.put("loss_curve.count", Array<double>(xt::adapt(curve_count_)));
    a.save(path);
}

void Trainer::load_checkpoint(const std::string& path) {
    const NpzArchive a = NpzArchive::load(path);
    const auto config = a.get<std::uint8_t>("__config__");
    const std::string text(config.begin(), config.end());
    if (text != config_text())
        throw StateError("checkpoint '" + path +
                         "' was written by another configuration:\n  file:    " + text +
                         "\n  trainer: " + config_text());
    // Read and check everything, then assign.
    std::vector<std::pair<Array<float>*, Array<float>>> tensors;
    auto stage = [&](const std::string& name, Array<float>* target) {
        Array<float> v = a.get<float>(name);
        // An empty target is a buffer whose shape the first input fixes (batch_layer_norm's);
        // the layer's geometry counters, restored below, agree with the file's shape.
        if (target->size() != 0 && shape_of(v) != shape_of(*target))
            throw StateError("checkpoint '" + path + "': expected '" + name + "' of shape " +
                             format_shape(shape_of(*target)) + ", got " +
                             format_shape(shape_of(v)));
        tensors.emplace_back(target, std::move(v));
    };
    for (auto& p : model_.parameters())
        stage("model." + p.name, p.value);
    for (auto& b : model_.buffers())
        stage("model." + b.name, b.value);
    for (auto& s : optimizer_.state())
        stage("optimizer." + s.name, s.value);
    std::vector<std::pair<std::int64_t*, std::int64_t>> counts;
    for (auto& c : model_.counters())
        counts.emplace_back(c.value, a.get<std::int64_t>("model." + c.name)());
    counts.emplace_back(&epoch_, a.get<std::int64_t>("epoch")());
    counts.emplace_back(optimizer_.steps_counter(), a.get<std::int64_t>("optimizer.steps")());
    const auto sum = a.get<double>("loss_curve.sum"), count = a.get<double>("loss_curve.count");
    if (sum.size() != curve_sum_.size() || count.size() != curve_count_.size())
        throw StateError("checkpoint '" + path + "': loss curve of another resolution");
    for (auto& [target, value] : tensors)
        *target = std::move(value);
    for (auto& [target, value] : counts)
        *target = value;
    std::copy(sum.begin(), sum.end(), curve_sum_.begin());
    std::copy(count.begin(), count.end(), curve_count_.begin());
}

}  // namespace normlab::train
