// Whole-model training speed on Fashion-MNIST: one epoch of the BN paper's MLP (3 × 100 sigmoid
// units, batch 60) per normalizer, one pass of the small CNN over a 6000-example slice (batch
// 32), and one pass of the row-by-row LSTM over a 2000-example slice (batch 32).
// The reported time is the training steps only (forward, backward, optimizer step); the
// examples_per_second counter is what docs/models.md and docs/benchmarks.md quote.
//   ./build-bench/benchmarks/training_bench --benchmark_filter=mlp
#include <benchmark/benchmark.h>

#include <string>

#include "normlab/registry.hpp"
#include "normlab/runtime.hpp"
#include "normlab/train/trainer.hpp"

namespace {

const normlab::data::Split& fashion_mnist() {
    static const normlab::data::Split split = normlab::data::load_fashion_mnist();
    return split;
}

void train_one_epoch(benchmark::State& state, const std::string& workload, const std::string& spec,
                     std::size_t batch, std::size_t examples) {
    const auto& full = fashion_mnist();
    const normlab::data::Dataset train = full.train.slice(0, examples);
    const normlab::data::Dataset test = full.test.slice(0, 1000);
    double trained = 0;
    for (auto _ : state) {
        normlab::train::TrainConfig c;
        c.workload = workload;
        c.normalizer = spec;
        c.batch_size = batch;
        c.epochs = 1;
        c.lr = 0.1;
        c.evaluate_train_mode = false;
        normlab::train::Trainer trainer(c, train, test);
        normlab::train::TrainResult result;
        if (!trainer.run_epoch(result)) {
            state.SkipWithError((spec + ": " + result.status + " " + result.message).c_str());
            return;
        }
        const double examples_trained = double(result.steps * batch);
        state.SetIterationTime(examples_trained / result.examples_per_second);
        trained += examples_trained;
    }
    state.counters["examples_per_second"] =
        benchmark::Counter(trained, benchmark::Counter::kIsRate);
}

// Defined for (N, C) activations (instance_norm needs spatial positions) and for images.
std::string spec_for(const std::string& variant) {
    return variant == "group_norm" ? "group_norm(groups=4)" : variant;
}

const bool registered = [] {
    normlab::reuse_freed_memory();
    for (const auto& v : normlab::registered_variants()) {
        if (v.name != "instance_norm")
            benchmark::RegisterBenchmark(("mlp_epoch/" + v.name).c_str(),
                                         [name = v.name](benchmark::State& s) {
                                             train_one_epoch(s, "mlp", spec_for(name), 60, 60000);
                                         })
                ->UseManualTime()
                ->Unit(benchmark::kSecond)
                ->Iterations(2);
        benchmark::RegisterBenchmark(("cnn_epoch_6000/" + v.name).c_str(),
                                     [name = v.name](benchmark::State& s) {
                                         train_one_epoch(s, "cnn", spec_for(name), 32, 6000);
                                     })
            ->UseManualTime()
            ->Unit(benchmark::kSecond)
            ->Iterations(1);
        if (v.name != "instance_norm")
            benchmark::RegisterBenchmark(("lstm_epoch_2000/" + v.name).c_str(),
                                         [name = v.name](benchmark::State& s) {
                                             train_one_epoch(s, "lstm", spec_for(name), 32, 2000);
                                         })
                ->UseManualTime()
                ->Unit(benchmark::kSecond)
                ->Iterations(1);
    }
    return true;
}();

}  // namespace

BENCHMARK_MAIN();
