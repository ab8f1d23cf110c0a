// Whole-model training speed on Fashion-MNIST: one epoch of the BN paper's MLP (3 × 100 sigmoid
// units, batch 60) per normalizer, one pass of the small CNN over a 6000-example slice (batch
// 32), and one pass of the row-by-row LSTM over a 2000-example slice (batch 32).
// The reported time is the training steps only (forward, backward, optimizer step); the
// examples_per_second counter is what docs/models.md and docs/benchmarks.md quote.
// `paired_overhead/<workload>/<variant>` trains the network with the normalizer and without it
// (`identity`) in turn in one process, for each normalizer's overhead.
//   ./build-bench/benchmarks/training_bench --benchmark_filter=mlp
#include <benchmark/benchmark.h>

#include <exception>
#include <stdexcept>
#include <string>

#include "bench_common.hpp"

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

// The overhead of a normalizer on a whole network: the network trained with it and without it
// (`identity`), the same seed and data, an epoch of a slice of `examples` at a time, in turn in
// the order ABBA (without, with, with, without), so that both meet the same state of the
// machine; each iteration is one such quadruple, after one untimed epoch of each. On the 2-vCPU
// VM of docs/benchmarks.md a whole process ran either ~0.72 s or ~1.0 s for the MLP's epoch,
// whichever normalizer it trained. With every normalizer's epoch run in one process after the
// other, seven rounds put the later ones at +29-41% over identity (the medians), where in a
// process each, three times, 16 of the 21 epochs took 0.71-0.77 s (identity's three among
// them) and the other five, of four normalizers, 0.80-1.01 s. Counters:
// `overhead`, the median over the quadruples of the two epochs with the normalizer over the two
// without, minus one; the median epoch with (`seconds`) and without it
// (`identity_seconds`). The manual time is the epochs with the normalizer.
void paired_overhead(benchmark::State& state, const std::string& workload, const std::string& spec,
                     std::size_t batch, std::size_t examples) {
    const auto& full = fashion_mnist();
    const normlab::data::Dataset train = full.train.slice(0, examples);
    // Each epoch ends with an untimed evaluation, here of a single batch.
    const normlab::data::Dataset test = full.test.slice(0, batch);
    const auto config = [&](const std::string& normalizer) {
        normlab::train::TrainConfig c;
        c.workload = workload;
        c.normalizer = normalizer;
        c.batch_size = batch;
        c.lr = 0.1;
        c.evaluate_train_mode = false;
        return c;
    };
    try {
        normlab::train::Trainer without(config("identity"), train, test);
        normlab::train::Trainer with(config(spec), train, test);
        normlab::train::TrainResult without_result, with_result;
        // The trainer's own time of its training steps in one epoch (evaluation left out).
        const auto epoch = [&](normlab::train::Trainer& trainer,
                               normlab::train::TrainResult& result) {
            const auto trained_seconds = [&] {
                return result.steps ? double(result.steps * batch) / result.examples_per_second
                                    : 0.0;
            };
            const double before = trained_seconds();
            if (!trainer.run_epoch(result))
                throw std::runtime_error(trainer.config().normalizer + ": " + result.status + " " +
                                         result.message);
            return trained_seconds() - before;
        };
        epoch(without, without_result);
        epoch(with, with_result);
        normlab::bench::CallTimes without_epochs, with_epochs, ratios;
        for (auto _ : state) {
            const double a1 = epoch(without, without_result);
            const double b1 = epoch(with, with_result), b2 = epoch(with, with_result);
            const double a2 = epoch(without, without_result);
            state.SetIterationTime(b1 + b2);
            ratios.add((b1 + b2) / (a1 + a2));
            for (const double a : {a1, a2})
                without_epochs.add(a);
            for (const double b : {b1, b2})
                with_epochs.add(b);
        }
        state.counters["overhead"] = ratios.median() - 1;
        state.counters["seconds"] = with_epochs.median();
        state.counters["identity_seconds"] = without_epochs.median();
        state.counters["examples_per_epoch"] = double(train.size() / batch * batch);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
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
    // Slices of about 40-100 ms an epoch on 2 threads; eight quadruples.
    struct Workload {
        const char* name;
        std::size_t batch, examples;
        bool spatial;  // activations with spatial positions, which instance_norm needs
    };
    for (const Workload w : {Workload{"mlp", 60, 3000, false}, Workload{"cnn", 32, 160, true},
                             Workload{"lstm", 32, 160, false}})
        for (const auto& v : normlab::registered_variants()) {
            if (v.name == "identity" || (v.name == "instance_norm" && !w.spatial)) continue;
            benchmark::RegisterBenchmark(
                ("paired_overhead/" + std::string(w.name) + "/" + v.name).c_str(),
                [w, name = v.name](benchmark::State& s) {
                    paired_overhead(s, w.name, spec_for(name), w.batch, w.examples);
                })
                ->UseManualTime()
                ->Unit(benchmark::kSecond)
                ->Iterations(8);
        }
    return true;
}();

}  // namespace

BENCHMARK_MAIN();
