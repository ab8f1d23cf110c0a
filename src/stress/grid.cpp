#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "normlab/errors.hpp"
#include "normlab/model/training.hpp"
#include "normlab/registry.hpp"
#include "normlab/stress.hpp"

namespace normlab::stress {
namespace {

const std::set<std::string> kWorkloads = {"mlp", "cnn", "lstm", "lstm-varlen"};
const std::set<std::string> kData = {"fashion-mnist", "synthetic"};
// A width every registered option can accept (divisible by every usual group count), used only
// to check spec strings before anything runs.
constexpr std::size_t kProbeWidth = 20160;

}  // namespace

std::string model_workload(const std::string& workload) {
    std::string name = workload;
    std::replace(name.begin(), name.end(), '-', '_');
    return name;
}

std::string RunConfig::key() const {
    return to_json().dump();
}

nlohmann::json RunConfig::to_json() const {
    nlohmann::json j = {{"workload", workload},
                        {"data", data},
                        {"normalizer", normalizer},
                        {"batch_size", batch_size},
                        {"seed", seed},
                        {"lr", lr},
                        {"train_examples", train_examples},
                        {"test_examples", test_examples},
                        {"validation_examples", validation_examples},
                        {"epochs", epochs},
                        {"optimizer", optimizer},
                        {"lr_sweep", lr_sweep}};
    // Only data-parallel runs carry these, so that single-process keys stay as they were.
    if (ranks > 1) {
        j["ranks"] = ranks;
        j["global_batch"] = global_batch();
    }
    return j;
}

nlohmann::json RunResult::to_json() const {
    return {{"status", status},
            {"message", message},
            {"lr", lr},
            {"test_accuracy", test_accuracy},
            {"test_loss", test_loss},
            {"test_accuracy_train_mode", test_accuracy_train_mode},
            {"train_eval_gap", test_accuracy_train_mode - test_accuracy},
            {"final_train_loss", final_train_loss},
            {"loss_curve", loss_curve},
            {"examples_per_second", examples_per_second},
            {"wall_seconds", wall_seconds}};
}

double scaled_lr(const GridOptions& options, std::size_t batch_size) {
    const double ratio = double(batch_size) / double(options.base_batch);
    if (options.lr_rule == "linear") return options.base_lr * ratio;
    if (options.lr_rule == "sqrt") return options.base_lr * std::sqrt(ratio);
    return options.base_lr;
}

std::string undefined_reason(const std::string& normalizer, const std::string& workload) {
    const std::string name = parse_spec(normalizer).name;
    if (name == "instance_norm" && workload != "cnn")
        return "instance_norm needs trailing dimensions (statistics over H·W), and the " +
               workload + " workload normalizes (N, C) activations";
    if (name == "batch_layer_norm" && workload == "lstm-varlen" &&
        normalizer.find("track_running_stats=false") == std::string::npos)
        return "batch_layer_norm as published keeps its feature statistics per slot of a "
               "fixed-size batch, and padding changes the batch of a time step (use "
               "batch_layer_norm(track_running_stats=false) on lstm-varlen)";
    return "";
}

std::vector<RunConfig> expand_grid(const GridOptions& options) {
    if (options.normalizers.empty()) throw OptionError("stress: expected at least one normalizer");
    if (options.batch_sizes.empty()) throw OptionError("stress: expected at least one batch size");
    if (options.seeds.empty()) throw OptionError("stress: expected at least one seed");
    if (options.workloads.empty()) throw OptionError("stress: expected at least one workload");
    if (options.ranks == 0) throw OptionError("stress: expected at least one rank");
    for (std::size_t b : options.batch_sizes) {
        if (b == 0) throw OptionError("stress: batch sizes must be at least 1, got 0");
        if (b * options.ranks > options.train_examples)
            throw OptionError("stress: batch size " + std::to_string(b) +
                              (options.ranks > 1 ? " × " + std::to_string(options.ranks) + " ranks"
                                                 : std::string()) +
                              " exceeds the " + std::to_string(options.train_examples) +
                              " training examples");
    }
    for (const auto& w : options.workloads)
        if (!kWorkloads.count(w))
            throw OptionError("stress: unknown workload '" + w +
                              "'; expected one of mlp, cnn, lstm, lstm-varlen");
    if (!kData.count(options.data))
        throw OptionError("stress: unknown data '" + options.data +
                          "'; expected fashion-mnist or synthetic");
    if (options.data == "fashion-mnist" &&
        !std::filesystem::exists(options.data_dir + "/train-images-idx3-ubyte.gz"))
        throw OptionError("stress: Fashion-MNIST not found in " + options.data_dir +
                          " (apt-get install dataset-fashion-mnist, or --data synthetic)");
    if (options.lr_rule != "linear" && options.lr_rule != "sqrt" && options.lr_rule != "none")
        throw OptionError("stress: unknown lr rule '" + options.lr_rule +
                          "'; expected linear, sqrt or none");
    if (options.optimizer != "sgd" && options.optimizer != "adam")
        throw OptionError("stress: unknown optimizer '" + options.optimizer +
                          "'; expected sgd or adam");
    if (!(options.base_lr > 0)) throw OptionError("stress: the learning rate must be > 0");
    if (options.epochs == 0 || options.train_examples == 0 || options.test_examples == 0)
        throw OptionError("stress: epochs, training and test examples must be at least 1");
    if (!options.lr_sweep.empty() && options.validation_examples == 0)
        throw OptionError("stress: an lr sweep needs --validation-examples > 0");
    for (const auto& spec : options.normalizers)
        make_normalizer(spec, kProbeWidth);

    std::vector<RunConfig> runs;
    for (const auto& workload : options.workloads)
        for (const auto& spec : options.normalizers) {
            const std::string why = undefined_reason(spec, workload);
            if (!why.empty()) {
                if (options.skip_undefined) continue;
                throw OptionError("stress: " + why);
            }
            try {
                // Building the model checks the spec against the workload's real widths (e.g.
                // groups that must divide 100 hidden units and 16, 32, 64 channels).
                model::build_model<float>(model_workload(workload), spec, 0);
            } catch (const OptionError& e) {
                throw OptionError("stress: normalizer '" + spec + "' cannot be used in the " +
                                  workload + " workload: " + e.what());
            }
            for (std::size_t b : options.batch_sizes)
                for (unsigned seed : options.seeds) {
                    RunConfig r;
                    r.workload = workload;
                    r.data = options.data;
                    r.normalizer = spec;
                    r.batch_size = b;
                    r.seed = seed;
                    r.lr = scaled_lr(options, b * options.ranks);
                    r.train_examples = options.train_examples;
                    r.test_examples = options.test_examples;
                    r.validation_examples = options.validation_examples;
                    r.epochs = options.epochs;
                    r.optimizer = options.optimizer;
                    r.lr_sweep = options.lr_sweep;
                    r.data_dir = options.data_dir;
                    r.ranks = options.ranks;
                    runs.push_back(std::move(r));
                }
        }
    if (runs.empty())
        throw OptionError("stress: no normalizer in the grid is defined for the chosen workloads");
    return runs;
}

}  // namespace normlab::stress
