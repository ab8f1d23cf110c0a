#pragma once
// What every comparison benchmark shares: the shape suite, the minimal memory traffic of each
// pass, and the machine's measured memory bandwidth at a given working-set size (a STREAM-style
// triad run in the same process, same thread count), from which the roofline fraction follows.

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "normlab/bandwidth.hpp"
#include "normlab/runtime.hpp"

namespace normlab::bench {

// Locks the process's memory, now and as it grows, so that the machine's background reclaim
// cannot page out a freed tensor that the next call would then fault in again: on a machine
// whose kernel pages out cold memory (DAMON pageout), timings otherwise depend on how long ago
// a block was last used. Needs root or a high RLIMIT_MEMLOCK; records in the benchmark context
// whether it was done. NORMLAB_BENCH_UNLOCKED=1 skips it.
inline void lock_memory() {
    const char* skip = std::getenv("NORMLAB_BENCH_UNLOCKED");
    const bool locked =
        !(skip && std::string(skip) == "1") && mlockall(MCL_CURRENT | MCL_FUTURE) == 0;
    benchmark::AddCustomContext("memory_locked", locked ? "yes" : "no");
}

struct ShapeCase {
    std::string name;
    std::vector<std::size_t> dims;  // channel-first
    std::size_t elements() const {
        std::size_t e = 1;
        for (auto d : dims)
            e *= d;
        return e;
    }
    bool has_trailing_dims() const { return dims.size() > 2; }
};

inline const std::vector<ShapeCase>& shape_suite() {
    static const std::vector<ShapeCase> s = {
        {"mlp", {256, 1024}},
        {"conv", {32, 64, 56, 56}},
        {"conv_small_batch", {2, 64, 56, 56}},
        {"conv_deep", {8, 256, 14, 14}},
        {"seq", {64 * 28, 512}},
        {"transformer", {4096, 768}},
    };
    return s;
}

enum class Pass { fwd_train, fwd_eval, bwd };
inline const char* pass_name(Pass p) {
    return p == Pass::fwd_train ? "fwd_train" : p == Pass::fwd_eval ? "fwd_eval" : "bwd";
}

// The least a pass must move through memory: forward reads x and writes y; backward reads dy
// and x and writes dx. Statistics and parameters are negligible.
inline double minimal_bytes(const ShapeCase& shape, Pass pass) {
    const double tensor = double(shape.elements()) * sizeof(float);
    return pass == Pass::bwd ? 3 * tensor : 2 * tensor;
}

// One 64-byte line of floats, aligned to it.
struct alignas(64) Line {
    float v[16];
};

// Best-of-several triad bandwidth (bytes/s) with `bytes` moved per sweep, at the current
// OpenMP thread count; cached per size. `streamed`: a[i] is written with stores that bypass the
// caches, which save the read of each destination line a normal store costs (on the Intel Xeon
// VM of docs/benchmarks.md the faster form from 7 MB on, the slower within the per-core L2s). The
// faster of the two at a working set is the most this machine was seen to move there.
inline double triad_bandwidth(double bytes, bool streamed = false) {
    static std::map<std::pair<std::size_t, bool>, double> cache;
    // Each array a multiple of sixteen floats, so that every thread's share of a streamed sweep
    // starts and ends on a 64-byte line.
    const std::size_t n =
        std::max<std::size_t>(std::size_t(bytes / (3 * sizeof(float))), 1024) / 16 * 16;
    const auto key = std::pair{n * 64 + std::size_t(omp_get_max_threads()), streamed};
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    const std::size_t lines = n / 16;
    std::vector<Line> a(lines), b(lines), c(lines);
    for (std::size_t l = 0; l < lines; ++l)
        for (int j = 0; j < 16; ++j) {
            b[l].v[j] = 1.0f;
            c[l].v[j] = 2.0f;
        }
    auto sweep = [&] {
        triad(a.front().v, b.front().v, c.front().v, n, streamed);
        benchmark::DoNotOptimize(a.data());
        benchmark::ClobberMemory();
    };
    sweep();
    const int reps = std::clamp(int(2e9 / (3.0 * double(n) * sizeof(float))), 5, 200);
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        sweep();
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return cache[key] = 3.0 * double(n) * sizeof(float) / best;
}

// Far beyond any last-level cache: 1.5 GB per sweep.
constexpr double kBeyondCacheBytes = 1.5e9;

// Wall-clock times of the timed calls of one case. The report uses their median, as for
// PyTorch's calls: on a shared machine a few calls that are preempted or wait on a page fault
// (up to 7× the typical call here) would weigh as much in a mean as hundreds of undisturbed
// ones, and they fall on the implementations unevenly.
class CallTimes {
  public:
    void add(double seconds) { seconds_.push_back(seconds); }
    double median() {
        if (seconds_.empty()) return 0.0;
        const auto mid = seconds_.begin() + std::ptrdiff_t(seconds_.size() / 2);
        std::nth_element(seconds_.begin(), mid, seconds_.end());
        if (seconds_.size() % 2 == 1) return *mid;
        return (*mid + *std::max_element(seconds_.begin(), mid)) / 2;
    }

  private:
    std::vector<double> seconds_;
};

// Copies n floats with the OpenMP threads, each copying one contiguous share with memcpy, as the
// layer before a normalizer writes its output in a network: each thread's share is then in that
// thread's cache. Every implementation's training forward is handed its input written this way,
// untimed, before each call, and every backward follows an untimed training forward on such an
// input: timed on the same input call after call, an implementation whose threads split the
// tensor unlike the copy would find each thread's part already in its own cache, which in a
// network it is not. (A copy by the main thread alone would leave the other threads' parts in the
// wrong core's cache; memcpy switches to streaming stores for large shares, so a tensor larger
// than the caches is not left behind as dirty lines for the timed call to write back.)
inline void copy_by_threads(const float* from, float* to, std::size_t n) {
#pragma omp parallel
    {
        const auto threads = std::size_t(omp_get_num_threads());
        const auto t = std::size_t(omp_get_thread_num());
        const std::size_t begin = n * t / threads, end = n * (t + 1) / threads;
        std::memcpy(to + begin, from + begin, (end - begin) * sizeof(float));
    }
}

// Registers a case whose body times its calls itself (manual time), reported in microseconds,
// over at least 0.1 s of calls: every case of normalizer_bench, onednn_bench and torch_bench.
template <class Body>
void register_timed(const std::string& name, Body&& body) {
    benchmark::RegisterBenchmark(name.c_str(), std::forward<Body>(body))
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(0.1);
}

// Times call() again and again, each call returning its own seconds (its untimed preparation
// left out): Google Benchmark's manual time and `calls`.
template <class Call>
void time_calls(benchmark::State& state, CallTimes& calls, Call&& call) {
    for (auto _ : state) {
        const double seconds = call();
        state.SetIterationTime(seconds);
        calls.add(seconds);
    }
}

// time_calls over two alternatives in the order ABBA, a block of kAbbaBlock calls at a time (b
// takes blocks 1 and 2 of every four), so that the two are compared under the same drift of the
// machine and the same state of the heap: with the order ABAB, the heap's reuse pattern
// alternated with the alternative and biased training forwards by 1.3x on a VM where the same
// case ran 1.3-2x apart between processes. The first call after each switch is not counted: it
// meets the caches as the other alternative left them (its dirty lines still to be written back,
// its tensors where this one's were), and when every call followed the other implementation's,
// that cost fell on the leaner of the two (normlab's BatchNorm training forward on (1792, 512)
// took 1.5x its time alone, PyTorch's 1.1x).
// The blocks that Google Benchmark's loop leaves unfinished are finished after it, outside its
// time: a call longer than the minimum time (oneDNN's plain BatchNorm backward on (4096, 768),
// 0.1 s) ended the loop after a's first call, with no call of b to compare it with.
inline constexpr std::size_t kAbbaBlock = 4;

template <class A, class B>
void time_abba(benchmark::State& state, CallTimes& a_calls, CallTimes& b_calls, A&& a, B&& b) {
    std::size_t call = 0;
    const auto b_turn = [](std::size_t c) {
        const std::size_t block = c / kAbbaBlock % 4;
        return block == 1 || block == 2;
    };
    const auto next_call = [&] {
        const bool is_b = b_turn(call);
        const bool after_switch = call > 0 && is_b != b_turn(call - 1);
        ++call;
        const double seconds = is_b ? b() : a();
        if (!after_switch && call > 1) (is_b ? b_calls : a_calls).add(seconds);
        return seconds;
    };
    for (auto _ : state)
        state.SetIterationTime(next_call());
    while (call % (4 * kAbbaBlock) != 0)
        next_call();
}

// A peer's call and normlab's timed in turn (time_abba, the peer as a): the two medians,
// `<peer>_median_us` and `normlab_median_us`, and `paired_ratio`, the peer's over normlab's
// (above 1: normlab is faster), which report.py reads from onednn_bench and torch_bench.
template <class Peer, class Normlab>
void time_paired(benchmark::State& state, const std::string& peer, Peer&& peer_call,
                 Normlab&& normlab_call) {
    CallTimes peer_calls, normlab_calls;
    time_abba(state, peer_calls, normlab_calls, std::forward<Peer>(peer_call),
              std::forward<Normlab>(normlab_call));
    const double peer_median = peer_calls.median(), normlab = normlab_calls.median();
    state.counters[peer + "_median_us"] = peer_median * 1e6;
    state.counters["normlab_median_us"] = normlab * 1e6;
    state.counters["paired_ratio"] = normlab > 0 ? peer_median / normlab : 0.0;
    state.counters["threads"] = omp_get_max_threads();
}

// The median call time (`call_median_us`, the time the report uses), bytes processed, and the
// fraction of the triad bandwidth that the minimal traffic at the median time is, at this pass's
// working-set size ("roofline") and at a size far beyond the caches ("roofline_dram").
inline void add_traffic_counters(benchmark::State& state, double bytes, CallTimes& calls) {
    const double median = calls.median();
    state.SetBytesProcessed(std::int64_t(bytes * double(state.iterations())));
    state.counters["call_median_us"] = median * 1e6;
    if (median > 0) {
        state.counters["roofline"] = bytes / median / triad_bandwidth(bytes);
        state.counters["roofline_dram"] = bytes / median / triad_bandwidth(kBeyondCacheBytes);
    }
    state.counters["threads"] = omp_get_max_threads();
}

// Triad benchmarks, with normal and with streaming stores, at each pass's working set and
// beyond the caches, 1 and 2 threads.
inline void register_triad_benchmarks() {
    std::vector<std::pair<std::string, double>> sizes;
    for (const auto& s : shape_suite()) {
        sizes.emplace_back(s.name + "_fwd", minimal_bytes(s, Pass::fwd_train));
        sizes.emplace_back(s.name + "_bwd", minimal_bytes(s, Pass::bwd));
    }
    sizes.emplace_back("beyond_cache", kBeyondCacheBytes);
    for (const auto& [label, bytes] : sizes)
        for (bool streamed : {false, true})
            for (int threads : {1, 2}) {
                const std::string name = std::string(streamed ? "triad_streamed/" : "triad/") +
                                         label + "/threads:" + std::to_string(threads);
                benchmark::RegisterBenchmark(name.c_str(), [bytes = bytes, threads,
                                                            streamed](benchmark::State& state) {
                    const int previous = omp_get_max_threads();
                    omp_set_num_threads(threads);
                    const double bw = triad_bandwidth(bytes, streamed);
                    for (auto _ : state)
                        benchmark::DoNotOptimize(bw);
                    state.counters["bandwidth_GBps"] = bw / 1e9;
                    state.counters["bytes"] = bytes;
                    omp_set_num_threads(previous);
                })->Iterations(1);
            }
}

}  // namespace normlab::bench
