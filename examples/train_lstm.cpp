// Trains an LSTM on row-by-row Fashion-MNIST (28 steps of 28 pixels, 128 hidden units, classified
// from the last hidden state) once per normalizer, and prints the test accuracy after every
// epoch in eval mode (population statistics) and in train mode (batch statistics). Default: the
// LN-LSTM (layer_norm in all three slots, γ = 1) and the BN-LSTM (batch_norm, per-step
// statistics, γ = 0.1, β_x = β_h = 0) — see docs/recurrent.md.
//   train_lstm [epochs] [workload: lstm | lstm_varlen] [normalizer ...]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "normlab/runtime.hpp"
#include "normlab/train/trainer.hpp"

int main(int argc, char** argv) {
    normlab::reuse_freed_memory();
    const std::size_t epochs = argc > 1 ? std::size_t(std::atoi(argv[1])) : 5;
    const std::string workload = argc > 2 ? argv[2] : "lstm";
    std::vector<std::string> specs;
    for (int i = 3; i < argc; ++i)
        specs.emplace_back(argv[i]);
    if (specs.empty()) specs = {"layer_norm", "batch_norm"};
    try {
        const auto data = normlab::data::load_fashion_mnist();
        for (const auto& spec : specs) {
            normlab::train::TrainConfig c;
            c.workload = workload;
            c.normalizer = spec;
            c.batch_size = 64;
            c.epochs = epochs;
            c.optimizer = "adam";
            c.lr = 1e-3;
            normlab::train::Trainer trainer(c, data.train, data.test);
            std::printf("%s on %s, batch 64, Adam lr 1e-3\n", spec.c_str(), workload.c_str());
            std::fflush(stdout);
            normlab::train::TrainResult result;
            while (trainer.epoch() < epochs && trainer.run_epoch(result)) {
                const auto& m = result.epochs.back();
                std::printf(
                    "  epoch %zu  train loss %.4f  test accuracy %.2f%% (train mode %.2f%%)"
                    "  %.1f s\n",
                    m.epoch, m.train_loss, 100 * m.test.accuracy, 100 * m.test_train_mode.accuracy,
                    m.seconds);
                std::fflush(stdout);
            }
            if (result.status != "ok")
                std::printf("  %s: %s\n", result.status.c_str(), result.message.c_str());
            std::printf("  %.0f training examples/s\n", result.examples_per_second);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "train_lstm: %s\n", e.what());
        return 1;
    }
    return 0;
}
