// Trains the BN paper's MLP (3 × 100 sigmoid units, batch 60) on Fashion-MNIST, once per
// normalizer given on the command line (default: batch_norm and identity), and prints the test
// accuracy after every epoch in eval mode and in train mode (batch statistics).
//   train_mlp [epochs] [normalizer ...]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "normlab/runtime.hpp"
#include "normlab/train/trainer.hpp"

int main(int argc, char** argv) {
    normlab::reuse_freed_memory();
    const std::size_t epochs = argc > 1 ? std::size_t(std::atoi(argv[1])) : 5;
    std::vector<std::string> specs;
    for (int i = 2; i < argc; ++i)
        specs.emplace_back(argv[i]);
    if (specs.empty()) specs = {"batch_norm", "identity"};
    try {
        const auto data = normlab::data::load_fashion_mnist();
        for (const auto& spec : specs) {
            normlab::train::TrainConfig c;
            c.workload = "mlp";
            c.normalizer = spec;
            c.batch_size = 60;
            c.epochs = epochs;
            c.lr = 0.1;
            normlab::train::Trainer trainer(c, data.train, data.test);
            std::printf("%s, batch 60, SGD lr 0.1 momentum 0.9\n", spec.c_str());
            std::size_t seen = 0;
            normlab::train::TrainResult result;
            while (trainer.epoch() < epochs && trainer.run_epoch(result)) {
                const auto& m = result.epochs.back();
                std::printf(
                    "  epoch %zu  train loss %.4f  test accuracy %.2f%% (train mode %.2f%%)"
                    "  %.1f s\n",
                    m.epoch, m.train_loss, 100 * m.test.accuracy, 100 * m.test_train_mode.accuracy,
                    m.seconds);
                seen = m.epoch;
            }
            if (result.status != "ok")
                std::printf("  %s: %s\n", result.status.c_str(), result.message.c_str());
            std::printf("  %.0f training examples/s over %zu epochs\n", result.examples_per_second,
                        seen);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "train_mlp: %s\n", e.what());
        return 1;
    }
    return 0;
}
