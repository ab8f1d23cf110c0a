// normlab's normalizers on the comparison shape suite: forward (train), forward (eval) and
// backward of every variant, with bytes processed and the roofline fraction (bench_common.hpp).
// Run through benchmarks/run.sh, which also runs the oneDNN and PyTorch peers and writes
// docs/benchmarks.md.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#include <xtensor/xrandom.hpp>

#include "bench_common.hpp"
#include "normlab/normlab.hpp"
#include "normlab/runtime.hpp"
#include "normlab_case.hpp"
#include "plain_loop.hpp"

namespace normlab::bench {
namespace {

// NORMLAB_BENCH_OTHER_PLAN: a second cache plan (a size such as 32M, or `measure`: the cache
// probe's) that every case alternates with the plan in effect (time_abba). 0 where it is unset.
std::size_t other_plan_bytes() {
    static const std::size_t bytes = [] {
        const char* text = std::getenv("NORMLAB_BENCH_OTHER_PLAN");
        return text == nullptr || *text == '\0' ? std::size_t{0} : cache_plan_setting(text);
    }();
    return bytes;
}

void run(benchmark::State& state, const std::string& spec, const ShapeCase& shape, Pass pass) {
    NormlabCase normlab_case(spec, shape);
    CallTimes calls, other_plan_calls;
    const auto on_plan = [&] { return normlab_case.call(pass); };
    const std::size_t other_plan = other_plan_bytes();
    if (other_plan == 0) {
        time_calls(state, calls, on_plan);
    } else {
        time_abba(state, calls, other_plan_calls, on_plan, [&] {
            set_last_level_cache_bytes(other_plan);
            const double seconds = on_plan();
            set_last_level_cache_bytes(0);
            return seconds;
        });
    }
    add_traffic_counters(state, minimal_bytes(shape, pass), calls);
    if (other_plan > 0) {
        // Over the calls on the plan in effect (call_median_us): below 1, the other is faster.
        state.counters["other_plan_median_us"] = other_plan_calls.median() * 1e6;
        state.counters["other_plan_ratio"] = other_plan_calls.median() / calls.median();
    }
}

// The chains' two plans: for a cache of 1 GiB, which keeps the conv shape's 25.7 MB outputs
// (normal stores), and for 32 MiB, which streams them past the cache. Which of the two this
// machine's own plan takes is in the context (chain_output_streamed, beside planned_cache_mib).
constexpr std::size_t kKeepingPlan = std::size_t{1} << 30;
constexpr std::size_t kStreamingPlan = std::size_t{32} << 20;

// The shape the chains run on: the suite's conv.
const ShapeCase& chain_shape() {
    const auto& suite = shape_suite();
    return *std::find_if(suite.begin(), suite.end(),
                         [](const ShapeCase& shape) { return shape.name == "conv"; });
}

// A chain of `layers` BatchNorm layers in inference, each reading the output of the one before,
// as in a network's forward pass, with the kernels planning for a cache of `plan_bytes`. What it
// measures: whether writing each output with streaming stores pays off once the next layer has
// to read that output back from memory instead of the cache. The median time per layer.
void run_chain(benchmark::State& state, const ShapeCase& shape, int layers,
               std::size_t plan_bytes) {
    xt::random::seed(1);
    const Tensor x = xt::random::randn<float>(shape.dims, 1.0f, 2.0f);
    std::vector<std::unique_ptr<Normalizer>> chain;
    for (int l = 0; l < layers; ++l)
        chain.push_back(trained_on("batch_norm", x));
    set_last_level_cache_bytes(plan_bytes);
    CallTimes calls;
    for (auto _ : state) {
        const auto t0 = std::chrono::steady_clock::now();
        Tensor y = chain[0]->forward(x, Mode::eval, Grad::none);
        for (int l = 1; l < layers; ++l)
            y = chain[std::size_t(l)]->forward(y, Mode::eval, Grad::none);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        benchmark::DoNotOptimize(y.data());
        state.SetIterationTime(seconds);
        calls.add(seconds / layers);
    }
    set_last_level_cache_bytes(0);
    state.counters["call_median_us"] = calls.median() * 1e6;
    state.counters["threads"] = omp_get_max_threads();
}

// Shapes beside the comparison suite, which benchmarks/run.sh leaves out of the report: the
// late stages of a ResNet at batch 128 and 256, 25.7 MB each like `conv`, whose channels' runs
// of 196 and 49 values are where sets over the batch go in memory order from memory too and
// where a streamed output's lines meet a run's ends (kernels' short_runs and
// rows::aligned_vectors). `NORMLAB_BENCH_OTHER_PLAN=32M normalizer_bench
// --benchmark_filter=short_runs` times them with outputs kept and streamed in turn.
const std::vector<ShapeCase>& short_run_shapes() {
    static const std::vector<ShapeCase> s = {
        {"short_runs_196", {128, 256, 14, 14}},
        {"short_runs_49", {256, 512, 7, 7}},
    };
    return s;
}

// Shapes outside the suite that benchmarks/run.sh times, for the kernels' handling of the batch:
// rows_258, (N, C) rows in blocks of 64 whose last block is short (the threads share the column
// sums' blocks by their rows, kernels::TeamSlot::share_by_weight); rows_32, fewer blocks than
// threads (a small batch of wide rows: LayerNorm's and RMSNorm's backward then share the columns
// too); rows_2 and rows_8, small batches whose per-channel work (BatchNorm's statistics,
// running estimates and parameter gradients) outweighs the values'; batch_1, a feature map at a
// batch of one (LayerNorm's one set shared between the threads). `normalizer_bench
// --benchmark_filter='normlab/(layer_norm|batch_norm)/(mlp|rows_258|rows_32|rows_2|rows_8|batch_1)/'`.
const std::vector<ShapeCase>& other_shapes() {
    static const std::vector<ShapeCase> s = {
        {"rows_258", {258, 1024}}, {"rows_32", {32, 4096}},      {"rows_2", {2, 1024}},
        {"rows_8", {8, 8192}},     {"batch_1", {1, 64, 56, 56}},
    };
    return s;
}

// The plain loop of each shape and pass (plain_loop.hpp), alone or after a plain read pass over
// its inputs (`read_first`), with the same counters as a layer's case, the minimal traffic of
// the pass: report.py sets each layer's time beside them.
void run_plain(benchmark::State& state, const ShapeCase& shape, Pass pass, bool read_first) {
    PlainLoopCase plain_case(shape);
    CallTimes calls;
    time_calls(state, calls, [&] { return plain_case.call(pass, read_first); });
    add_traffic_counters(state, minimal_bytes(shape, pass), calls);
}

void register_all() {
    register_triad_benchmarks();
    for (const auto& shape : shape_suite())
        for (Pass pass : {Pass::fwd_train, Pass::fwd_eval, Pass::bwd}) {
            register_timed(
                "plain/loop/" + shape.name + "/" + pass_name(pass),
                [shape, pass](benchmark::State& state) { run_plain(state, shape, pass, false); });
            if (pass != Pass::fwd_eval)
                register_timed("plain/two_passes/" + shape.name + "/" + pass_name(pass),
                               [shape, pass](benchmark::State& state) {
                                   run_plain(state, shape, pass, true);
                               });
        }
    std::vector<ShapeCase> shapes = shape_suite();
    shapes.insert(shapes.end(), short_run_shapes().begin(), short_run_shapes().end());
    shapes.insert(shapes.end(), other_shapes().begin(), other_shapes().end());
    for (const auto& variant : registered_variants()) {
        for (const auto& shape : shapes) {
            const std::string spec = spec_for(variant.name, shape);
            if (spec.empty()) continue;
            for (Pass pass : {Pass::fwd_train, Pass::fwd_eval, Pass::bwd}) {
                const std::string name =
                    "normlab/" + variant.name + "/" + shape.name + "/" + pass_name(pass);
                register_timed(name, [spec, shape, pass](benchmark::State& state) {
                    run(state, spec, shape, pass);
                });
            }
        }
    }
    const ShapeCase& shape = chain_shape();
    for (int layers : {1, 4})
        for (std::size_t plan : {kKeepingPlan, kStreamingPlan}) {
            const std::string name = "chain/batch_norm/" + shape.name +
                                     "/fwd_eval/layers:" + std::to_string(layers) +
                                     (plan == kKeepingPlan ? "/plan:kept" : "/plan:streamed");
            register_timed(name, [shape, layers, plan](benchmark::State& state) {
                run_chain(state, shape, layers, plan);
            });
        }
}

}  // namespace
}  // namespace normlab::bench

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    normlab::bench::lock_memory();
    normlab::reuse_freed_memory();
    benchmark::AddCustomContext("planned_cache_mib",
                                std::to_string(normlab::last_level_cache_bytes() >> 20));
    // Whether that size is the detected one or the user's (NORMLAB_LAST_LEVEL_CACHE).
    benchmark::AddCustomContext("planned_cache_from",
                                std::string(normlab::last_level_cache_source()));
    // The core cache the backward plans its sets for (normlab::core_cache_bytes).
    benchmark::AddCustomContext("core_cache_kib",
                                std::to_string(normlab::core_cache_bytes() >> 10));
    if (const std::size_t other = normlab::bench::other_plan_bytes(); other > 0)
        benchmark::AddCustomContext("other_plan_kib", std::to_string(other >> 10));
    // What this machine's plan does with the chains' outputs (the report's chain section).
    benchmark::AddCustomContext(
        "chain_output_streamed",
        normlab::streams_output(normlab::bench::chain_shape().elements() * sizeof(float)) ? "1"
                                                                                          : "0");
    normlab::bench::register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
