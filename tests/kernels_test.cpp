// The shared statistics kernel: results do not depend on the number of threads (each set is
// reduced by one thread in a fixed order), and the dense and strided paths agree.
#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

#include <gtest/gtest.h>
#include <xtensor/xview.hpp>

#include "gradient_check.hpp"
#include "guarded_output.hpp"
#include "kernels/rows.hpp"
#include "kernels/set_backward.hpp"
#include "kernels/vector_width.hpp"
#include "normlab/normlab.hpp"
#include "normlab/runtime.hpp"
#include "thread_count.hpp"

namespace normlab {
namespace {

// The kernels plan for the machine's last-level cache (normlab::last_level_cache_bytes): a tensor
// under a quarter of it stays in cache, outputs from half of it on are streamed. The shapes of
// these tests are chosen around the thresholds of a 32 MiB cache (8 and 16 MiB), so every test of
// this program runs with 32 MiB, and takes both sides of each threshold on any machine.
class PlanFor32MiBCache : public ::testing::Environment {
  public:
    void SetUp() override { set_last_level_cache_bytes(std::size_t{32} << 20); }
};
[[maybe_unused]] ::testing::Environment* const plan_for_32mib_cache =
    ::testing::AddGlobalTestEnvironment(new PlanFor32MiBCache);

struct CacheSize {
    explicit CacheSize(std::size_t bytes) : previous(last_level_cache_bytes()) {
        set_last_level_cache_bytes(bytes);
    }
    ~CacheSize() { set_last_level_cache_bytes(previous); }
    std::size_t previous;
};

struct CoreCacheSize {
    explicit CoreCacheSize(std::size_t bytes) : previous(core_cache_bytes()) {
        set_core_cache_bytes(bytes);
    }
    ~CoreCacheSize() { set_core_cache_bytes(previous); }
    std::size_t previous;
};

using testing::ThreadCount;

// A shape and the sets a kernel reduces it over.
struct LayoutCase {
    Shape shape;
    SetSpec sets;
};

// The [N][C][S] view of an (N, C, ...) shape, as the layers hand it to the kernels.
NcsView view_of(const Shape& shape) {
    return {shape[0], shape[1],
            std::accumulate(shape.begin() + 2, shape.end(), std::size_t{1}, std::multiplies<>())};
}

// Random x, dy and γ of a shape (from seed, seed + 1, seed + 2), standardized by the kernel: the
// sets' statistics, the stored x̂ and y (without β).
struct Standardized {
    NcsView v;
    Tensor x, dy, gamma, xhat, y;
    std::vector<float> mean, var, inv_std;

    Standardized(const Shape& shape, const SetSpec& sets, unsigned seed)
        : v(view_of(shape)),
          x(xt::cast<float>(testing::random_array(shape, seed, 1.0, 2.0))),
          dy(xt::cast<float>(testing::random_array(shape, seed + 1))),
          gamma(xt::cast<float>(testing::random_array({v.c}, seed + 2, 1.0, 0.5))),
          xhat(Tensor::from_shape(shape)),
          y(Tensor::from_shape(shape)),
          mean(sets.num_sets(v)),
          var(sets.num_sets(v)),
          inv_std(sets.num_sets(v)) {
        kernels::standardize(x.data(), v, sets, true, 1e-5, gamma.data(),
                             static_cast<const float*>(nullptr), mean.data(), var.data(),
                             inv_std.data(), xhat.data(), y.data());
    }
};

TEST(Kernels, ResultsAreIdenticalWithOneAndTwoThreads) {
    for (const std::string spec :
         {"batch_norm", "layer_norm", "group_norm(groups=8)", "rms_norm"}) {
        // (516, 64): nine blocks of column sums, the last of four rows, shared by their rows.
        for (const Shape& shape : {Shape{512, 64}, Shape{516, 64}, Shape{16, 64, 12, 12}}) {
            const Tensor x = xt::cast<float>(testing::random_array(shape, 1, 3.0, 2.0));
            const Tensor dy = xt::cast<float>(testing::random_array(shape, 2));
            Tensor y[2], dx[2];
            for (int threads : {1, 2}) {
                ThreadCount tc(threads);
                auto norm = make_normalizer(spec, 64);
                y[threads - 1] = norm->forward(x, Mode::train);
                dx[threads - 1] = norm->backward(dy);
            }
            EXPECT_EQ(y[0], y[1]) << spec << " " << format_shape(shape);
            EXPECT_EQ(dx[0], dx[1]) << spec << " " << format_shape(shape);
        }
    }
}

// y, dx and the parameters' gradients of one training step of `spec` on `threads` threads, with
// γ set to `gamma`: the input handed over (backward forms x̂ from it) or not (x̂ stored).
std::vector<Tensor> training_step(const std::string& spec, const Tensor& x, const Tensor& dy,
                                  const Tensor& gamma, int threads, bool handed_over) {
    ThreadCount tc(threads);
    auto norm = make_normalizer(spec, x.shape()[1]);
    for (const auto& p : norm->parameters())
        if (p.name == "weight") *p.value = gamma;
    const Tensor y =
        handed_over ? norm->forward(Tensor(x), Mode::train) : norm->forward(x, Mode::train);
    std::vector<Tensor> got{y, norm->backward(dy)};
    for (const auto& p : norm->parameters())
        got.push_back(*p.grad);
    return got;
}

// training_step of `spec` on `shape` for each (threads, handed over) in `runs`: every run's
// outputs are the first's, bit for bit.
void expect_the_same_steps(const std::string& spec, const Shape& shape,
                           const std::vector<std::pair<int, bool>>& runs) {
    const Tensor x = xt::cast<float>(testing::random_array(shape, 3, 1.0, 2.0));
    const Tensor dy = xt::cast<float>(testing::random_array(shape, 4));
    const Tensor gamma = xt::cast<float>(testing::random_array({shape[1]}, 5, 1.0, 0.5));
    const std::vector<Tensor> first =
        training_step(spec, x, dy, gamma, runs[0].first, runs[0].second);
    for (std::size_t run = 1; run < runs.size(); ++run) {
        const std::vector<Tensor> got =
            training_step(spec, x, dy, gamma, runs[run].first, runs[run].second);
        for (std::size_t k = 0; k < first.size(); ++k)
            EXPECT_EQ(got[k], first[k])
                << spec << " " << format_shape(shape) << ": output " << k << " of run " << run
                << " (0: y, 1: dx, then the parameters' gradients)";
    }
}

// LayerNorm and RMSNorm keep their input for backward, which forms x̂ from it. On fewer blocks of
// 64 rows than threads, that backward takes every row's coefficients first and then shares the
// rows' columns between the threads; on one thread it stays fused: dx, dγ and dβ are the same
// bits, and the same as from x̂ stored (an input not handed over). BatchNorm's column sums split
// the columns too, into ranges of equal width ((100, 1500): two of 752 and 748 columns).
TEST(Kernels, RowsOnFewBlocksAreTheSameOnOneAndTwoThreads) {
    for (const std::string spec : {"layer_norm", "rms_norm", "batch_norm"})
        for (const Shape& shape :
             {Shape{40, 1000}, Shape{8, 8192}, Shape{100, 1024}, Shape{100, 1500}})
            expect_the_same_steps(spec, shape, {{1, true}, {2, true}, {1, false}});
}

// Per-sample sets at a batch smaller than the team (LayerNorm, RMSNorm and GroupNorm(1) at a batch
// of one): the sets are summed on one thread each and their runs normalized, reduced and applied
// on every thread. y, dx, dγ and dβ are the bits of one thread, from a handed-over input and
// from x̂ stored, where the backward goes set by set ((1, 64, 24, 24)) and a group at a time
// ((1, 64, 56, 56)), and with outputs streamed (a last-level cache of 256 KiB planned for).
TEST(Kernels, FewerSetsThanThreadsAreTheSameOnOneAndTwoThreads) {
    for (const std::size_t planned : {std::size_t{0}, std::size_t{256} << 10})
        for (const std::string spec : {"layer_norm", "rms_norm", "group_norm(groups=1)"})
            for (const Shape& shape : {Shape{1, 64, 24, 24}, Shape{1, 64, 56, 56}}) {
                CacheSize cache(planned ? planned : last_level_cache_bytes());
                if (planned) {
                    ASSERT_TRUE(streams_output(view_of(shape).size() * sizeof(float)))
                        << format_shape(shape);
                }
                expect_the_same_steps(spec, shape, {{1, true}, {2, true}, {1, false}, {2, false}});
            }
}

// The per-set finishing kernels: inv_std as the formula gives it value by value, at every length
// around the vector widths; a non-finite value found at any place, in either array.
TEST(Kernels, InverseStdAndFiniteChecksMatchTheScalarFormulas) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<double> spread(0.0, 1e4);
    for (std::size_t n = 0; n <= 37; ++n) {
        std::vector<float> var(n), got(n);
        std::vector<double> var_d(n), got_d(n);
        for (std::size_t k = 0; k < n; ++k) {
            var_d[k] = k % 5 == 0 ? 0.0 : spread(rng) * std::pow(10.0, double(k % 7) - 6);
            var[k] = float(var_d[k]);
        }
        kernels::inverse_std(var.data(), n, 1e-5, got.data());
        kernels::inverse_std(var_d.data(), n, 1e-3, got_d.data());
        for (std::size_t k = 0; k < n; ++k) {
            EXPECT_EQ(got[k], float(1.0 / std::sqrt(double(var[k]) + 1e-5))) << n << " " << k;
            EXPECT_EQ(got_d[k], 1.0 / std::sqrt(var_d[k] + 1e-3)) << n << " " << k;
        }
    }
    const float big = std::numeric_limits<float>::max();
    const float denormal = std::numeric_limits<float>::denorm_min();
    for (std::size_t n : {1, 7, 8, 9, 33}) {
        std::vector<float> a(n), b(n);
        for (std::size_t k = 0; k < n; ++k) {
            a[k] = k % 3 == 0 ? big : k % 3 == 1 ? -0.0f : denormal;
            b[k] = -a[k];
        }
        EXPECT_TRUE(kernels::all_finite(a.data(), b.data(), n)) << n;
        EXPECT_TRUE(kernels::all_finite(a.data(), static_cast<const float*>(nullptr), n)) << n;
        EXPECT_EQ(kernels::first_non_finite(a.data(), b.data(), n), n);
        EXPECT_EQ(kernels::first_non_finite(a.data(), static_cast<const float*>(nullptr), n), n);
        for (float bad :
             {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
              -std::numeric_limits<float>::infinity()})
            for (std::size_t at : {std::size_t{0}, n / 2, n - 1}) {
                std::vector<float> a_bad = a, b_bad = b;
                a_bad[at] = bad;
                b_bad[at] = bad;
                EXPECT_FALSE(kernels::all_finite(a_bad.data(), b.data(), n)) << n << " " << at;
                EXPECT_FALSE(kernels::all_finite(a.data(), b_bad.data(), n)) << n << " " << at;
                EXPECT_FALSE(
                    kernels::all_finite(a_bad.data(), static_cast<const float*>(nullptr), n))
                    << n << " " << at;
                // The first bad value is the one named, in either array, also with a second
                // one after it.
                EXPECT_EQ(kernels::first_non_finite(a.data(), b_bad.data(), n), at) << n;
                EXPECT_EQ(
                    kernels::first_non_finite(a_bad.data(), static_cast<const float*>(nullptr), n),
                    at)
                    << n;
                a_bad[n - 1] = bad;
                EXPECT_EQ(kernels::first_non_finite(a_bad.data(), b.data(), n), at) << n;
            }
    }
    EXPECT_TRUE(kernels::all_finite(static_cast<const float*>(nullptr),
                                    static_cast<const float*>(nullptr), 0));
    EXPECT_EQ(kernels::first_non_finite(static_cast<const float*>(nullptr),
                                        static_cast<const float*>(nullptr), 0),
              0u);
}

// Items of unequal weight (blocks of rows, the last one short) are shared by weight: contiguous
// shares in order, covering every item once, each within the heaviest item of an equal part.
TEST(Kernels, WeightedSharesAreContiguousAndWithinAnItemOfAnEqualPart) {
    const auto shares = [](const std::vector<std::size_t>& weights, std::size_t size) {
        std::vector<std::size_t> before(weights.size() + 1, 0);
        std::partial_sum(weights.begin(), weights.end(), before.begin() + 1);
        std::vector<std::pair<std::size_t, std::size_t>> out;
        for (std::size_t t = 0; t < size; ++t)
            out.push_back(kernels::TeamSlot{t, size}.share_by_weight(
                weights.size(), [&](std::size_t i) { return before[i]; }));
        return out;
    };
    // Four blocks of 64 rows and one of 2: by count, 192 rows and 66; by weight, 128 and 130.
    using Share = std::pair<std::size_t, std::size_t>;
    EXPECT_EQ(shares({64, 64, 64, 64, 2}, 2), (std::vector<Share>{{0, 2}, {2, 5}}));
    EXPECT_EQ(shares({64, 64, 64, 64, 44}, 2), (std::vector<Share>{{0, 2}, {2, 5}}));
    EXPECT_EQ(shares({64, 64, 64, 64, 2}, 3), (std::vector<Share>{{0, 1}, {1, 3}, {3, 5}}));
    // Equal weights: equal shares where the count divides.
    EXPECT_EQ(shares({5, 5, 5, 5, 5, 5}, 3), (std::vector<Share>{{0, 2}, {2, 4}, {4, 6}}));
    // Nothing to share, or nothing of weight: the last thread takes every item.
    EXPECT_EQ(shares({}, 2), (std::vector<Share>{{0, 0}, {0, 0}}));
    EXPECT_EQ(shares({0, 0, 0}, 2), (std::vector<Share>{{0, 0}, {0, 3}}));

    std::mt19937 rng(7);
    for (int trial = 0; trial < 500; ++trial) {
        std::vector<std::size_t> weights(rng() % 40);
        for (std::size_t& w : weights)
            w = rng() % 4 == 0 ? 0 : rng() % 100;
        const std::size_t size = 1 + rng() % 8;
        const std::size_t total = std::accumulate(weights.begin(), weights.end(), std::size_t{0});
        const std::size_t heaviest =
            weights.empty() ? 0 : *std::max_element(weights.begin(), weights.end());
        const auto got = shares(weights, size);
        std::size_t next = 0;
        for (const auto& [begin, end] : got) {
            ASSERT_EQ(begin, next) << "trial " << trial;
            ASSERT_LE(begin, end) << "trial " << trial;
            const std::size_t weight =
                std::accumulate(weights.begin() + std::ptrdiff_t(begin),
                                weights.begin() + std::ptrdiff_t(end), std::size_t{0});
            // |weight - total/size| <= heaviest, in integers.
            EXPECT_LE(std::max(weight * size, total) - std::min(weight * size, total),
                      heaviest * size)
                << "trial " << trial << ": share [" << begin << ", " << end << ") of "
                << weights.size() << " items on " << size << " threads";
            next = end;
        }
        EXPECT_EQ(next, weights.size()) << "trial " << trial;
    }
}

TEST(Kernels, CacheSizeIsDetectedAndCanBeSet) {
    const std::size_t pinned = last_level_cache_bytes();
    set_last_level_cache_bytes(0);
    const std::size_t detected = last_level_cache_bytes();
    EXPECT_GE(detected, std::size_t{1} << 20) << "a last-level cache of under 1 MiB";
    {
        CacheSize cache(std::size_t{5} << 20);
        EXPECT_EQ(last_level_cache_bytes(), std::size_t{5} << 20);
    }
    set_last_level_cache_bytes(0);
    EXPECT_EQ(last_level_cache_bytes(), detected);
    set_last_level_cache_bytes(pinned);
}

TEST(Kernels, CoreCacheSizeIsDetectedAndCanBeSet) {
    const std::size_t detected = detected_core_cache_bytes();
    EXPECT_GE(detected, std::size_t{64} << 10) << "a core cache of under 64 KiB";
    EXPECT_EQ(core_cache_bytes(), detected);
    {
        CoreCacheSize core(std::size_t{3} << 20);
        EXPECT_EQ(core_cache_bytes(), std::size_t{3} << 20);
    }
    EXPECT_EQ(core_cache_bytes(), detected);
}

// The core cache is /sys's L2 over the CPUs that share it: the lists of shared_cpu_list.
TEST(Kernels, CpuListsAreCounted) {
    EXPECT_EQ(cpu_list_count("0"), 1u);
    EXPECT_EQ(cpu_list_count("0-1\n"), 2u);
    EXPECT_EQ(cpu_list_count("0,4"), 2u);
    EXPECT_EQ(cpu_list_count("0-3,8-11"), 8u);
    EXPECT_EQ(cpu_list_count("12"), 1u);
    EXPECT_EQ(cpu_list_count(""), 0u);
    EXPECT_EQ(cpu_list_count("3-1"), 0u);
    EXPECT_EQ(cpu_list_count("0-"), 0u);
    EXPECT_EQ(cpu_list_count("a"), 0u);
    EXPECT_EQ(cpu_list_count("0,,1"), 0u);
}

// The C library's and /sys's cache sizes disagree on AMD EPYC (the socket's L3 against the core
// complex's): the smaller is the one a core can use.
TEST(Kernels, UsableCacheIsTheSmallerOfTheTwoSizesTold) {
    constexpr std::size_t MiB = std::size_t{1} << 20;
    EXPECT_EQ(usable_cache_bytes(256 * MiB, 32 * MiB), 32 * MiB);
    EXPECT_EQ(usable_cache_bytes(32 * MiB, 256 * MiB), 32 * MiB);
    EXPECT_EQ(usable_cache_bytes(260 * MiB, 260 * MiB), 260 * MiB);
    EXPECT_EQ(usable_cache_bytes(0, 48 * MiB), 48 * MiB);
    EXPECT_EQ(usable_cache_bytes(48 * MiB, 0), 48 * MiB);
    EXPECT_EQ(usable_cache_bytes(0, 0), 32 * MiB);
}

TEST(Kernels, OutputsAreStreamedFromHalfThePlannedCache) {
    constexpr std::size_t MiB = std::size_t{1} << 20;
    set_last_level_cache_bytes(32 * MiB);
    EXPECT_TRUE(streams_output(16 * MiB));
    EXPECT_FALSE(streams_output(16 * MiB - 1));
    set_last_level_cache_bytes(260 * MiB);
    EXPECT_FALSE(streams_output(32 * 64 * 56 * 56 * sizeof(float)));  // 25.7 MB kept
    EXPECT_TRUE(streams_output(130 * MiB));
    set_last_level_cache_bytes(0);
}

// Every output of a fresh layer on x and dy: training forward, backward with x̂ stored, dγ and
// dβ, training forward with the input handed over and backward from it, and inference.
std::vector<Tensor> every_output(const std::string& spec, const Tensor& x, const Tensor& dy) {
    auto norm = make_normalizer(spec, x.shape()[1]);
    std::vector<Tensor> out;
    out.push_back(norm->forward(x, Mode::train));
    out.push_back(norm->backward(dy));
    for (const auto& p : norm->parameters())
        out.push_back(*p.grad);
    Tensor input = x;
    out.push_back(norm->forward(std::move(input), Mode::train));
    out.push_back(norm->backward(dy));
    out.push_back(norm->forward(x, Mode::eval, Grad::none));
    return out;
}

// Each later list of outputs equals the first, output by output; `what` names the case.
void expect_same_outputs(const std::vector<std::vector<Tensor>>& outputs, const std::string& what) {
    for (std::size_t plan = 1; plan < outputs.size(); ++plan) {
        ASSERT_EQ(outputs[plan].size(), outputs[0].size());
        for (std::size_t i = 0; i < outputs[0].size(); ++i)
            EXPECT_EQ(outputs[plan][i], outputs[0][i])
                << what << ": output " << i << ", plan " << plan;
    }
}

// Where the kernels take a tensor to be (whether it stays in cache, whether its outputs are
// streamed) changes the order of work, never the bits. Planned for a 32 MiB cache, 7.6 MiB stays
// in cache and is not streamed; for 16 MiB it is out of cache and not streamed; for 4 MiB out of
// cache and streamed: every output is the same. Training forward, backward with x̂ stored, dγ
// and dβ, training forward with the input handed over and backward from it, and inference.
TEST(Kernels, ResultsDoNotDependOnTheCacheSizePlannedFor) {
    struct Case {
        std::string spec;
        Shape shape;
    };
    const std::vector<Case> cases = {
        {"batch_norm", {1999, 1000}},              // 7.6 MiB, dense columns; partial row groups
        {"layer_norm", {1999, 1000}},              // rows
        {"group_norm(groups=100)", {1999, 1000}},  // short sets on rows
        {"batch_norm", {8, 64, 3901}},             // 7.6 MiB with trailing dimensions, odd runs
        {"batch_renorm", {8, 64, 3901}},
        {"layer_norm", {8, 64, 3901}},
        {"group_norm(groups=32)", {8, 64, 3901}},
        {"instance_norm(affine=true)", {8, 64, 3901}},
        {"rms_norm", {8, 64, 3901}},
        // Runs of 49 and 196 values (short_runs): sets over the batch in memory order from
        // memory too, their outputs streamed under the 4 MiB plan (2.5 MB and 3.2 MB).
        {"batch_norm", {200, 64, 49}},
        {"batch_renorm", {200, 64, 49}},
        {"batch_norm", {16, 256, 196}},
        {"instance_norm(affine=true)", {16, 256, 196}},
        // Sets of one run of 196 values: a sample's sets a chunk at a time in cache (dy and x
        // together in the backward: under the 32 MiB plan only).
        {"group_norm(groups=256)", {16, 256, 196}},
    };
    for (const auto& [spec, shape] : cases) {
        const Tensor x = xt::cast<float>(testing::random_array(shape, 31, 1.0, 2.0));
        const Tensor dy = xt::cast<float>(testing::random_array(shape, 32));
        std::vector<std::vector<Tensor>> outputs;
        for (std::size_t cache_bytes :
             {std::size_t{32} << 20, std::size_t{16} << 20, std::size_t{4} << 20}) {
            CacheSize cache(cache_bytes);
            outputs.push_back(every_output(spec, x, dy));
        }
        expect_same_outputs(outputs, spec + " " + format_shape(shape));
    }
}

// Sets over the batch are walked by channel from memory (the fused backward, a set's runs C·S
// values apart) only where the runs are long enough for the hardware to follow: from 1 KiB
// (256 floats, 128 doubles) on, below which the passes go in memory order.
TEST(Kernels, ShortRunsOverTheBatchAreNotWalkedByChannelFromMemory) {
    CacheSize cache(std::size_t{32} << 20);  // in cache up to 8 MiB
    const SetSpec over_batch{true, 1};
    const auto fused = [&](std::size_t n, std::size_t c, std::size_t s, auto value) {
        return kernels::can_fuse_backward<decltype(value)>(NcsView{n, c, s}, over_batch);
    };
    EXPECT_FALSE(fused(256, 512, 49, 0.0f));   // 25.7 MB, runs of 196 bytes
    EXPECT_FALSE(fused(128, 256, 196, 0.0f));  // 25.7 MB, 784 bytes
    EXPECT_FALSE(fused(128, 256, 255, 0.0f));  // 1020 bytes
    EXPECT_TRUE(fused(128, 256, 256, 0.0f));   // 1024 bytes
    EXPECT_TRUE(fused(32, 64, 3136, 0.0f));    // 25.7 MB, 12.5 KB
    EXPECT_FALSE(fused(128, 256, 127, 0.0));   // doubles: 1016 bytes
    EXPECT_TRUE(fused(128, 256, 128, 0.0));    // 1024 bytes
    EXPECT_FALSE(fused(2, 64, 3136, 0.0f));    // 1.6 MB: in cache, the two stages
    // Per-sample sets are contiguous whatever their runs.
    EXPECT_TRUE(kernels::can_fuse_backward<float>(NcsView{256, 512, 49}, SetSpec{false, 1}));
}

// Sets whose dy and input fit in a core's cache (core_cache_bytes) are reduced and applied set by
// set in the fused backward with trailing dimensions; other sets are applied a group at a time
// while the next group is reduced. Both must give the same bits: every layer with per-sample
// sets, on tensors in cache and out of it (the 32 MiB plan of this program: from 8 MiB on), and
// BatchNorm's sets over the batch out of cache (in cache it takes the two stages), with x̂ formed
// from the input kept by forward and stored, on 1 and 2 threads. A core cache of 1 KiB pairs
// every set here, one of 1 GiB takes every set one at a time, and 48 KiB takes InstanceNorm's
// sets of 15.6 KB (dy and input 31 KB) one at a time and pairs the larger ones.
TEST(Kernels, BackwardSetBySetEqualsPairedSetsBitForBit) {
    struct Case {
        std::string spec;
        Shape shape;
    };
    const std::vector<Case> cases = {
        {"layer_norm", {4, 8, 1024}},
        {"layer_norm", {9, 64, 3901}},             // 8.6 MiB: out of cache under a 32 MiB plan
        {"group_norm(groups=16)", {8, 64, 3901}},  // 7.6 MiB: in cache
        {"group_norm(groups=4)", {6, 12, 10, 10}},
        {"instance_norm(affine=true)", {9, 64, 3901}},
        {"instance_norm", {3, 5, 7, 9}},
        {"rms_norm", {8, 64, 3901}},
        {"batch_norm", {9, 64, 3901}},  // BatchNorm's fused backward runs out of cache only
        {"batch_renorm", {9, 64, 3901}},
    };
    for (const auto& [spec, shape] : cases) {
        const Tensor x = xt::cast<float>(testing::random_array(shape, 41, 1.0, 2.0));
        const Tensor dy = xt::cast<float>(testing::random_array(shape, 42));
        for (int threads : {1, 2}) {
            ThreadCount tc(threads);
            std::vector<std::vector<Tensor>> outputs;
            for (std::size_t core_bytes :
                 {std::size_t{1} << 10, std::size_t{48} << 10, std::size_t{1} << 30}) {
                CoreCacheSize core(core_bytes);
                outputs.push_back(every_output(spec, x, dy));
            }
            expect_same_outputs(outputs, spec + " " + format_shape(shape) + ", " +
                                             std::to_string(threads) + " threads, core cache");
        }
    }
}

// In cache, BatchNorm's forward and backward take their two stages over a sample's runs of many
// channels at a time (the sums of four runs side by side, prefetching the next four where runs
// are shorter than a page; then rows::runs_affine or rows::runs_apply), where the fused passes
// out of cache go run by run; inference takes runs_affine in cache and streams run by run out of
// it. A 1 MiB plan takes these tensors out of cache (and streams their outputs), a 32 MiB plan
// keeps them: every output must be the same bits. Runs of 196 (a tail of four after twelve
// vectors of sixteen), 49 and 25 (too short for the four-runs loop) values; 100 channels, so a
// share of a sample can end in runs one by one after the groups of four; x̂ formed from the
// input kept by forward, and stored. InstanceNorm's training forward in cache takes a sample's
// runs sixteen at a time the same way (a set is a run), where out of cache it normalizes one run
// while it sums the next; GroupNorm's sets of 64 and 25 channels go set by set in both.
TEST(Kernels, ShortRunsInCacheEqualTheFusedPassBitForBit) {
    for (const std::string spec :
         {"batch_norm", "batch_renorm", "instance_norm(affine=true)", "group_norm(groups=4)"}) {
        for (const Shape& shape :
             {Shape{8, 256, 14, 14}, Shape{24, 100, 7, 7}, Shape{40, 100, 5, 5}}) {
            const Tensor x = xt::cast<float>(testing::random_array(shape, 41, 1.0, 2.0));
            const Tensor dy = xt::cast<float>(testing::random_array(shape, 42));
            std::vector<std::vector<Tensor>> outputs;
            for (std::size_t cache_bytes : {std::size_t{32} << 20, std::size_t{1} << 20}) {
                CacheSize cache(cache_bytes);
                auto norm = make_normalizer(spec, shape[1]);
                // γ and β of every channel their own, so that a channel's run taking another's
                // shows.
                unsigned seed = 43;
                for (const auto& p : norm->parameters())
                    *p.value = xt::cast<float>(
                        testing::random_array(shape_of(*p.value), seed++, 1.0, 0.5));
                std::vector<Tensor> out;
                Tensor input = x;
                out.push_back(norm->forward(std::move(input), Mode::train));
                out.push_back(norm->backward(dy));
                for (const auto& p : norm->parameters())
                    out.push_back(*p.grad);
                out.push_back(norm->forward(x, Mode::train));
                out.push_back(norm->backward(dy));
                out.push_back(norm->forward(x, Mode::eval, Grad::none));
                outputs.push_back(std::move(out));
            }
            ASSERT_EQ(outputs[1].size(), outputs[0].size());
            for (std::size_t i = 0; i < outputs[0].size(); ++i)
                EXPECT_EQ(outputs[1][i], outputs[0][i])
                    << spec << " " << format_shape(shape) << ": output " << i;
        }
    }
}

// Streamed runs put their vectors of sixteen on 64-byte lines (one streaming store per line on
// AVX-512), the values before the first line and after the last eight at a time, the vectors at
// the ends reaching into the lines beside them. Runs of 1012 values start 16 bytes further into a
// line each, runs of 20 and 36 leave one line or none between a head and a tail of four to twelve
// values: a 4 MiB plan streams the y of these 2–3 MiB tensors where it is a lone output
// (inference; a training forward handed its input), an 8 MiB plan does not and takes the same
// order of work otherwise. Every output must be the same bits, at both vector widths. glibc fills
// memory as it is allocated (M_PERTURB), so a value the kernels skip cannot come out right from a
// block the run before left behind.
TEST(Kernels, StreamedRunsOnLinesEqualNormalStoresBitForBit) {
    struct Perturb {
        Perturb() { mallopt(M_PERTURB, 0x5a); }
        ~Perturb() { mallopt(M_PERTURB, 0); }
    } perturb;
    struct Case {
        std::string spec;
        Shape shape;
    };
    const std::vector<Case> cases = {
        {"batch_norm", {8, 96, 1012}}, {"instance_norm(affine=true)", {8, 96, 1012}},
        {"layer_norm", {8, 96, 1012}}, {"batch_norm", {8, 3300, 20}},
        {"layer_norm", {8, 3300, 20}}, {"batch_norm", {8, 2000, 36}},
        {"rms_norm", {8, 2000, 36}},
    };
    constexpr std::size_t MiB = std::size_t{1} << 20;
    const bool machine_width = kernels::wide_vectors();
    for (const auto& [spec, shape] : cases) {
        const Tensor x = xt::cast<float>(testing::random_array(shape, 33, 1.0, 2.0));
        const Tensor dy = xt::cast<float>(testing::random_array(shape, 34));
        const std::size_t bytes = x.size() * sizeof(float);
        const auto outputs_with = [&](std::size_t cache_bytes, bool wide) {
            CacheSize cache(cache_bytes);
            kernels::set_wide_vectors(wide);
            EXPECT_EQ(streams_output(bytes), cache_bytes == 4 * MiB) << format_shape(shape);
            auto norm = make_normalizer(spec, shape[1]);
            std::vector<Tensor> out;
            out.push_back(norm->forward(x, Mode::eval, Grad::none));
            // x̂ saved, then the input handed over: dx is written over either, not streamed
            // (StreamedOutputsAtEveryLinePositionEqualNormalStoresBitForBit streams dx).
            out.push_back(norm->forward(x, Mode::train));
            out.push_back(norm->backward(dy));
            Tensor input = x;
            out.push_back(norm->forward(std::move(input), Mode::train));
            out.push_back(norm->backward(dy));
            for (const auto& p : norm->parameters())
                out.push_back(*p.grad);
            kernels::set_wide_vectors(machine_width);
            return out;
        };
        const std::vector<Tensor> kept = outputs_with(8 * MiB, machine_width);
        for (bool wide : {false, true}) {
            const std::vector<Tensor> streamed = outputs_with(4 * MiB, wide);
            ASSERT_EQ(streamed.size(), kept.size());
            for (std::size_t i = 0; i < kept.size(); ++i)
                EXPECT_EQ(streamed[i], kept[i])
                    << spec << " " << format_shape(shape) << ": output " << i << ", wide " << wide;
        }
    }
}

// The same for outputs the kernels are handed rather than allocate: y of training (x̂ not stored)
// and inference, and dx of both backward orders (stages 3 and 4 apart, and fused), each written
// at every one of the sixteen float positions of a 64-byte line, the inputs at other positions
// (dx written over the spent x̂ or input is never streamed). Each output lies
// between guards of a pattern no kernel writes (a NaN payload): every value must be written, with
// the bits of normal stores, and nothing beside the output may change, though the vectors at a
// run's ends reach into the lines beside them.
TEST(Kernels, StreamedOutputsAtEveryLinePositionEqualNormalStoresBitForBit) {
    const std::vector<LayoutCase> cases = {
        {{8, 96, 1012}, {true, 1}},      // batch norm, runs of 1012
        {{8, 96, 1012}, {false, 1}},     // instance norm
        {{8, 3300, 20}, {false, 3300}},  // layer norm, runs of 20
        {{8, 2000, 36}, {true, 1}},      // batch norm, runs of 36
        {{8, 2000, 36}, {false, 16}},    // group norm
        // Runs of 49: dx streamed goes run by run, with normal stores a sample's sets a chunk
        // at a time (sixteen runs, a last chunk of four; four sets of four runs).
        {{112, 100, 49}, {false, 1}},
        {{112, 96, 49}, {false, 4}},
    };
    constexpr std::size_t MiB = std::size_t{1} << 20, kLine = 16;
    const bool machine_width = kernels::wide_vectors();
    for (const LayoutCase& c : cases) {
        const NcsView v = view_of(c.shape);
        const std::size_t n = v.size(), k = c.sets.num_sets(v);
        const Tensor x_data = xt::cast<float>(testing::random_array(c.shape, 61, 1.0, 2.0));
        const Tensor dy_data = xt::cast<float>(testing::random_array(c.shape, 62));
        const Tensor gamma = xt::cast<float>(testing::random_array({v.c}, 63, 1.0, 0.5));
        const Tensor beta = xt::cast<float>(testing::random_array({v.c}, 64));
        const bool recomputed = kernels::recomputes_xhat_in_registers(v, c.sets);
        std::vector<float> x_store(n + kLine), dy_store(n + kLine), xhat_store(n + kLine);
        // Each output between its guards, placed `at` floats past the first guard.
        const auto outputs = [&](std::size_t at, std::size_t in_at) {
            float* x = x_store.data() + in_at;
            float* dy = dy_store.data() + in_at;
            float* xhat = xhat_store.data() + in_at;
            std::copy(x_data.begin(), x_data.end(), x);
            std::copy(dy_data.begin(), dy_data.end(), dy);
            std::vector<float> mean(k), var(k), inv_std(k), y_with_xhat(n);
            kernels::standardize(x, v, c.sets, true, 1e-5, gamma.data(), beta.data(), mean.data(),
                                 var.data(), inv_std.data(), xhat, y_with_xhat.data());
            const kernels::XhatSource<float> src =
                recomputed ? kernels::XhatSource<float>(x, mean.data(), inv_std.data())
                           : kernels::XhatSource<float>(xhat);
            std::vector<testing::GuardedOutput> result;
            const auto written = [&](const auto& write) {
                testing::GuardedOutput out(at, n);
                write(out.values());
                result.push_back(std::move(out));
            };
            written([&](float* y) {
                std::vector<float> m(k), s2(k), is(k);
                kernels::standardize(x, v, c.sets, true, 1e-5, gamma.data(), beta.data(), m.data(),
                                     s2.data(), is.data(), static_cast<float*>(nullptr), y);
            });
            written([&](float* y) {
                kernels::normalize_affine(x, v, c.sets, mean.data(), inv_std.data(),
                                          static_cast<const float*>(nullptr), gamma.data(),
                                          beta.data(), static_cast<float*>(nullptr), y);
            });
            std::vector<double> sum_g(k), sum_gx(k), sum_dy(v.c), sum_dyx(v.c);
            kernels::backward_reduce(dy, src, v, c.sets, gamma.data(), sum_g.data(), sum_gx.data(),
                                     sum_dy.data(), sum_dyx.data());
            std::vector<float> coef_1(k), coef_xhat(k);
            for (std::size_t s = 0; s < k; ++s) {
                coef_1[s] = float(sum_g[s] / double(c.sets.set_size(v)));
                coef_xhat[s] = float(sum_gx[s] / double(c.sets.set_size(v)));
            }
            written([&](float* dx) {
                kernels::backward_apply(dy, src, v, c.sets, gamma.data(), inv_std.data(),
                                        coef_1.data(), coef_xhat.data(), dx);
            });
            if (kernels::can_fuse_backward<float>(v, c.sets)) {
                written([&](float* dx) {
                    kernels::backward_fused<float>(
                        dy, src, v, c.sets, gamma.data(), inv_std.data(),
                        [](std::size_t, double mean_g, double mean_g_xhat, float& c1, float& cx) {
                            c1 = float(mean_g);
                            cx = float(mean_g_xhat);
                        },
                        dx, sum_dy.data(), sum_dyx.data());
                });
            }
            return result;
        };
        const std::string where = format_shape(c.shape) +
                                  " across_batch=" + std::to_string(c.sets.across_batch) +
                                  " channels_per_set=" + std::to_string(c.sets.channels_per_set);
        std::vector<testing::GuardedOutput> kept;
        {
            CacheSize cache(8 * MiB);
            ASSERT_FALSE(streams_output(n * sizeof(float))) << where;
            kept = outputs(0, 0);
        }
        const char* names[] = {"y", "y_eval", "dx", "dx_fused"};
        for (bool wide : {false, true}) {
            CacheSize cache(4 * MiB);
            kernels::set_wide_vectors(wide);
            ASSERT_TRUE(streams_output(n * sizeof(float))) << where;
            for (std::size_t at = 0; at < kLine; ++at) {
                const std::vector<testing::GuardedOutput> streamed =
                    outputs(at, (at * 7 + 3) % kLine);
                ASSERT_EQ(streamed.size(), kept.size()) << where;
                for (std::size_t i = 0; i < kept.size(); ++i) {
                    const std::string what = std::string(names[i]) + ", " + where + " at float " +
                                             std::to_string(at) + ", wide " + std::to_string(wide);
                    EXPECT_TRUE(streamed[i].guards_intact()) << what;
                    EXPECT_TRUE(streamed[i].bits() == kept[i].bits()) << what;
                }
            }
        }
        kernels::set_wide_vectors(machine_width);
    }
}

// The kernels' float vector widths for sums (sixteen to a vector on AVX-512 machines, eight
// elsewhere) give the same bits: sets on rows, across the batch and per sample, in cache and out
// of it (where a run is normalized while the next is summed), runs with and without a tail, γ
// per element and per channel; forward, backward (dx, dγ, dβ) and inference. The dense (N, C)
// cases sum columns down groups of eight rows and a last group of three, in pairs of vectors of
// sixteen columns, a single vector and single columns.
TEST(Kernels, BothVectorWidthsGiveTheSameBits) {
    struct Case {
        std::string spec;
        Shape shape;
    };
    const std::vector<Case> cases = {
        {"layer_norm", {64, 1024}},
        {"layer_norm", {67, 1027}},
        {"rms_norm", {67, 1027}},
        {"group_norm(groups=8)", {67, 1000}},  // sets of 125 values on rows
        {"batch_norm", {67, 1027}},
        {"batch_norm", {8, 256, 14, 14}},
        {"batch_norm", {16, 64, 45}},  // runs with tails of three vectors of four and one value
        {"instance_norm(affine=true)", {4, 16, 999}},
        {"layer_norm", {8, 64, 4099}},  // out of cache: runs of one channel
        {"group_norm(groups=32)", {8, 64, 4099}},
        {"batch_renorm", {8, 64, 4099}},
    };
    const bool machine_width = kernels::wide_vectors();
    for (const auto& [spec, shape] : cases) {
        const Tensor x = xt::cast<float>(testing::random_array(shape, 41, 1.0, 2.0));
        const Tensor dy = xt::cast<float>(testing::random_array(shape, 42));
        Tensor y[2], y_eval[2], dx[2];
        std::vector<Tensor> grads[2];
        for (bool wide : {false, true}) {
            kernels::set_wide_vectors(wide);
            auto norm = make_normalizer(spec, shape[1]);
            y[wide] = norm->forward(x, Mode::train);
            dx[wide] = norm->backward(dy);
            for (const auto& p : norm->parameters())
                grads[wide].push_back(*p.grad);
            y_eval[wide] = norm->forward(x, Mode::eval, Grad::none);
        }
        kernels::set_wide_vectors(machine_width);
        EXPECT_EQ(y[0], y[1]) << spec << " " << format_shape(shape);
        EXPECT_EQ(dx[0], dx[1]) << spec << " " << format_shape(shape);
        // dγ and dβ: the column sums of dy and dy·x̂ on rows.
        EXPECT_EQ(grads[0], grads[1]) << spec << " " << format_shape(shape);
        EXPECT_EQ(y_eval[0], y_eval[1]) << spec << " " << format_shape(shape);
    }
}

TEST(Kernels, DenseInputEqualsTheSameDataWithATrailingUnitDimension) {
    // (N, C) takes the dense column path of the kernel, (N, C, 1) the row path.
    for (const std::string spec : {"batch_norm", "layer_norm", "group_norm(groups=4)"}) {
        const auto x = testing::random_array({9, 8}, 3, 1.0, 2.0);
        const auto dy = testing::random_array({9, 8}, 4);
        auto dense = make_normalizer<double>(spec, 8);
        auto rows = make_normalizer<double>(spec, 8);
        testing::randomize_parameters(*dense);
        testing::randomize_parameters(*rows);
        const testing::ArrayD x3 = xt::reshape_view(x, {9, 8, 1});
        const testing::ArrayD dy3 = xt::reshape_view(dy, {9, 8, 1});
        const testing::ArrayD y_rows = rows->forward(x3, Mode::train);
        EXPECT_TRUE(xt::allclose(dense->forward(x, Mode::train), xt::reshape_view(y_rows, {9, 8}),
                                 1e-14, 1e-14))
            << spec;
        const testing::ArrayD dx_rows = rows->backward(dy3);
        EXPECT_TRUE(
            xt::allclose(dense->backward(dy), xt::reshape_view(dx_rows, {9, 8}), 1e-13, 1e-13))
            << spec;
    }
}

// The float kernels combine up to 256 values of a run in float before widening to double, 16 lanes
// at a time, with scalar tails, and runs of 8 to 31 values eight lanes at a time; these shapes
// reach every one of those paths (runs and rows of 6, 12, 13, 16, 24, 40, 300 and 1000 values;
// dense inputs of 48 channels) and sets whose channels straddle them.
TEST(Kernels, FloatAgreesWithDoubleOnEveryVectorPath) {
    const std::vector<std::pair<std::string, std::vector<Shape>>> cases = {
        {"batch_norm", {{300, 48}, {5, 48, 40}, {3, 48, 300}}},
        {"batch_renorm", {{300, 48}, {3, 48, 300}}},
        {"layer_norm", {{37, 48}, {7, 48, 300}, {5, 1000}}},
        {"group_norm(groups=8)", {{37, 48}, {4, 48, 40}}},
        {"group_norm(groups=4)", {{37, 48}}},
        {"group_norm(groups=2)", {{37, 48}}},
        {"instance_norm", {{4, 48, 300}, {3, 48, 16}, {3, 48, 13}}},
        {"rms_norm", {{37, 48}, {4, 48, 40}}},
    };
    for (const auto& [spec, shapes] : cases) {
        for (const Shape& shape : shapes) {
            const std::size_t channels = shape[1];
            // A common offset well above the spread: the shifted sums must not lose it.
            const testing::ArrayD x = testing::random_array(shape, 11, 3.0, 2.0) + 40.0;
            const testing::ArrayD dy = testing::random_array(shape, 12);
            auto norm_d = make_normalizer<double>(spec, channels);
            auto norm_f = make_normalizer<float>(spec, channels);
            testing::randomize_parameters(*norm_d);
            auto pd = norm_d->parameters();
            auto pf = norm_f->parameters();
            for (std::size_t i = 0; i < pd.size(); ++i)
                *pf[i].value = xt::cast<float>(*pd[i].value);
            const testing::ArrayD yd = norm_d->forward(x, Mode::train);
            const Tensor yf = norm_f->forward(xt::cast<float>(x), Mode::train);
            const std::string where = spec + " " + format_shape(shape);
            EXPECT_TRUE(xt::allclose(xt::cast<double>(yf), yd, 2e-5, 2e-5)) << where;
            const testing::ArrayD dxd = norm_d->backward(dy);
            const Tensor dxf = norm_f->backward(xt::cast<float>(dy));
            EXPECT_TRUE(xt::allclose(xt::cast<double>(dxf), dxd, 1e-4, 2e-5)) << where;
            // The same float layer handed its input (x̂ recomputed in backward): the same bits.
            auto norm_h = make_normalizer<float>(spec, channels);
            auto ph = norm_h->parameters();
            for (std::size_t i = 0; i < pd.size(); ++i)
                *ph[i].value = xt::cast<float>(*pd[i].value);
            EXPECT_EQ(norm_h->forward(Tensor(xt::cast<float>(x)), Mode::train), yf) << where;
            EXPECT_EQ(norm_h->backward(xt::cast<float>(dy)), dxf) << where;
            pf = norm_f->parameters();
            pd = norm_d->parameters();
            for (std::size_t i = 0; i < pd.size(); ++i)
                EXPECT_TRUE(xt::allclose(xt::cast<double>(*pf[i].grad), *pd[i].grad, 1e-4, 1e-3))
                    << where << " " << pd[i].name;
            const auto bd = norm_d->buffers();
            const auto bf = norm_f->buffers();
            for (std::size_t i = 0; i < bd.size(); ++i)
                EXPECT_TRUE(xt::allclose(xt::cast<double>(*bf[i].value), *bd[i].value, 1e-5, 1e-5))
                    << where << " " << bd[i].name;
        }
    }
}

// Tensors of 16 MiB and more are written with streaming stores; per-sample layers give every
// sample the same result as when it comes alone in a tensor small enough for normal stores.
// Runs of an odd length start at every alignment, so the scalar heads and tails are reached too.
TEST(Kernels, StreamedOutputsEqualNormalStoresBitForBit) {
    const Shape shape{9, 2, 250001};  // 18 MB of float
    const Tensor x = xt::cast<float>(testing::random_array(shape, 21, 1.0, 2.0));
    const Tensor dy = xt::cast<float>(testing::random_array(shape, 22));
    for (const std::string spec : {"layer_norm", "instance_norm(affine=true)", "rms_norm"}) {
        auto whole = make_normalizer(spec, 2);
        const Tensor y_inference = whole->forward(x, Mode::eval, Grad::none);
        const Tensor y = whole->forward(x, Mode::train);
        const Tensor dx = whole->backward(dy);
        // Handed its input, the layer recomputes x̂ in backward, run by run.
        Tensor input = x;
        ASSERT_EQ(whole->forward(std::move(input), Mode::train), y) << spec;
        ASSERT_EQ(whole->backward(dy), dx) << spec;
        // Inference writes y alone (streamed); training writes x̂ and y (normal stores).
        ASSERT_EQ(y_inference, y) << spec;
        for (std::size_t n = 0; n < shape[0]; ++n) {
            auto single = make_normalizer(spec, 2);
            const Tensor xn = xt::view(x, xt::range(n, n + 1));
            const Tensor yn = single->forward(xn, Mode::train);
            const Tensor dxn = single->backward(xt::view(dy, xt::range(n, n + 1)));
            ASSERT_EQ(Tensor(xt::view(y, xt::range(n, n + 1))), yn) << spec << " sample " << n;
            ASSERT_EQ(Tensor(xt::view(dx, xt::range(n, n + 1))), dxn) << spec << " sample " << n;
        }
    }
}

// With trailing dimensions on tensors that do not stay in cache (8 MiB or more), each thread
// normalizes one set while it sums the next (rows::affine_summing_next,
// rows::apply_runs_summing_next), streaming y and dx on the first shape (16 MiB of float, runs a
// multiple of four long). On the second, runs are short, and batch norm's sets go a group of
// eight at a time, sample by sample (grouped_sets; 2308 channels: full and partial groups on 1
// and 2 threads); the backward of the per-sample sets of two channels or one (GroupNorm,
// InstanceNorm) goes a group of 256 sets at a time, a thread's last group partial. The third
// stays in cache: the forward goes set by set, and batch norm's backward takes the two stages,
// each thread its channels sample by sample. A set computed alone (one channel for batch norm, one
// sample for the others) takes the plain path: the bits must be the same.
TEST(Kernels, SetsSummedWhileTheirPredecessorIsWrittenEqualSetsAloneBitForBit) {
    // The backward reduces and applies set by set the sets whose dy and input fit in a core's
    // cache; a 1 KiB core cache keeps every set of these shapes paired.
    CoreCacheSize paired(std::size_t{1} << 10);
    for (const Shape& shape : {Shape{8, 4, 131072}, Shape{8, 2308, 11, 11}, Shape{8, 40, 11, 11}}) {
        const Tensor x = xt::cast<float>(testing::random_array(shape, 23, 1.0, 2.0));
        const Tensor dy = xt::cast<float>(testing::random_array(shape, 24));
        const std::string pairs = "group_norm(groups=" + std::to_string(shape[1] / 2) + ")";
        for (const std::string& spec : {std::string("batch_norm"), std::string("layer_norm"),
                                        std::string("instance_norm(affine=true)"), pairs}) {
            const bool by_channel = spec == "batch_norm";
            for (int threads : {1, 2}) {
                ThreadCount tc(threads);
                auto whole = make_normalizer(spec, shape[1]);
                Tensor input = x;
                const Tensor y_handed = whole->forward(std::move(input), Mode::train);
                const Tensor dx_handed = whole->backward(dy);
                const Tensor y = whole->forward(x, Mode::train);
                const Tensor dx = whole->backward(dy);
                ASSERT_EQ(y_handed, y) << spec;
                ASSERT_EQ(dx_handed, dx) << spec;
                const std::size_t parts = by_channel ? shape[1] : shape[0];
                for (std::size_t p = 0; p < parts; ++p) {
                    const auto part = [&](const Tensor& t) {
                        return by_channel ? Tensor(xt::view(t, xt::all(), xt::range(p, p + 1)))
                                          : Tensor(xt::view(t, xt::range(p, p + 1)));
                    };
                    auto single = make_normalizer(spec, by_channel ? 1 : shape[1]);
                    ASSERT_EQ(part(y), single->forward(part(x), Mode::train))
                        << spec << " part " << p << ", " << threads << " threads";
                    ASSERT_EQ(part(dx), single->backward(part(dy)))
                        << spec << " part " << p << ", " << threads << " threads";
                }
            }
        }
    }
}

// GroupNorm's short sets on rows (rows::short_set: 8, 16, 24 values, and multiples of 16 up to
// 64) are standardized and reduced a row at a time, four sets' totals together, with a remainder
// of sets one by one. Each set must be the same bits as the same values taken alone (one group,
// which takes the plain path), forward and backward, on 1 and 2 threads.
struct ShortSetsCase {
    std::size_t channels, groups;
};
// Sets of 24, 16 (four and two per row), 8, 32 (eight and two) and 64 values (four and one).
const std::vector<ShortSetsCase> kShortSetsCases = {
    {96, 4}, {96, 6}, {96, 12}, {320, 10}, {320, 5}};

// GroupNorm(groups) on `channels` with γ, β, and the same on group j's channels alone.
std::unique_ptr<Normalizer> group_norm_with(std::size_t groups, const Tensor& gamma,
                                            const Tensor& beta) {
    auto norm = make_normalizer("group_norm(groups=" + std::to_string(groups) + ")", gamma.size());
    auto params = norm->parameters();
    *params[0].value = gamma;
    *params[1].value = beta;
    return norm;
}

std::unique_ptr<Normalizer> one_group_of(const Tensor& gamma, const Tensor& beta, std::size_t j,
                                         std::size_t cps) {
    return group_norm_with(1, xt::view(gamma, xt::range(j * cps, (j + 1) * cps)),
                           xt::view(beta, xt::range(j * cps, (j + 1) * cps)));
}

TEST(Kernels, ShortSetsOnRowsEqualSetsAloneBitForBit) {
    for (const auto& [channels, groups] : kShortSetsCases) {
        const Shape shape{350, channels};
        Tensor x = xt::cast<float>(testing::random_array(shape, 25, 1.0, 2.0));
        x(3, 0) = 1e4f;  // a large offset in one set
        const Tensor gamma = xt::cast<float>(testing::random_array({channels}, 26, 1.0, 0.5));
        const Tensor beta = xt::cast<float>(testing::random_array({channels}, 27));
        const std::size_t cps = channels / groups;
        for (int threads : {1, 2}) {
            ThreadCount tc(threads);
            const Tensor y = group_norm_with(groups, gamma, beta)->forward(x, Mode::train);
            for (std::size_t n = 0; n < shape[0]; n += 7)
                for (std::size_t j = 0; j < groups; ++j) {
                    const auto rows = [&] { return xt::range(n, n + 1); };
                    const auto cols = [&] { return xt::range(j * cps, (j + 1) * cps); };
                    ASSERT_EQ(Tensor(xt::view(y, rows(), cols())),
                              one_group_of(gamma, beta, j, cps)
                                  ->forward(Tensor(xt::view(x, rows(), cols())), Mode::train))
                        << groups << " groups of " << cps << ", row " << n << ", set " << j << ", "
                        << threads << " threads";
                }
        }
    }
}

// Sets on rows of a multiple of sixteen values from 32 (LayerNorm's rows, GroupNorm's long sets
// on rows) are standardized a thread's share at a time: four sets' totals, square roots and
// divisions together, each set written while the set four places on is summed
// (rows::standardize_lane_sets). Each set's statistics, offset, x̂ and y must be the same bits as
// the set's values taken alone (one set, finished by itself and written without a partner),
// centred or not, with x̂ stored or not, on 1 and 2 threads, for shares that end in a partial
// group of four, with a set far from 0 (offset) and a constant set (offset 0). (Each shape but
// (3, 128) is large enough to be shared between threads: kernels::kParallelMin values.)
TEST(Kernels, SetsOnRowsStandardizedTogetherEqualEachSetAloneBitForBit) {
    struct Case {
        std::size_t rows, channels, cps;
    };
    for (const auto& [rows, channels, cps] :
         {Case{75, 512, 512}, Case{3, 128, 128}, Case{1100, 32, 32}, Case{119, 288, 96}}) {
        const NcsView v{rows, channels, 1};
        const SetSpec sets{false, cps};
        const std::size_t num_sets = sets.num_sets(v);
        Tensor x = xt::cast<float>(testing::random_array({rows, channels}, 28, 1.0, 2.0));
        for (std::size_t c = 0; c < cps; ++c) {
            x(1, c) += 1e4f;
            x(rows - 1, c) = 0.25f;
        }
        const Tensor gamma = xt::cast<float>(testing::random_array({channels}, 29, 1.0, 0.5));
        const Tensor beta = xt::cast<float>(testing::random_array({channels}, 30));
        for (const bool center : {true, false})
            for (const bool with_xhat : {true, false})
                for (const int threads : {1, 2}) {
                    ThreadCount tc(threads);
                    Tensor y = Tensor::from_shape({rows, channels});
                    Tensor xhat = Tensor::from_shape({rows, channels});
                    std::vector<float> mean(num_sets), var(num_sets), inv_std(num_sets),
                        offset(num_sets, -1.0f);
                    kernels::standardize(x.data(), v, sets, center, 1e-5, gamma.data(), beta.data(),
                                         mean.data(), var.data(), inv_std.data(),
                                         with_xhat ? xhat.data() : nullptr, y.data(),
                                         offset.data());
                    ThreadCount one(1);
                    for (std::size_t k = 0; k < num_sets; ++k) {
                        const std::size_t at = k * cps, c0 = at % channels;
                        float m1, v1, s1, o1 = -1.0f;
                        std::vector<float> y1(cps), h1(cps);
                        kernels::standardize(x.data() + at, NcsView{1, cps, 1}, sets, center, 1e-5,
                                             gamma.data() + c0, beta.data() + c0, &m1, &v1, &s1,
                                             h1.data(), y1.data(), &o1);
                        const std::string where =
                            std::to_string(rows) + " rows of " + std::to_string(channels) +
                            ", set " + std::to_string(k) + " of " + std::to_string(cps) +
                            (center ? "" : ", not centred") + (with_xhat ? ", x̂ stored" : "") +
                            ", " + std::to_string(threads) + " threads";
                        ASSERT_EQ(m1, mean[k]) << where;
                        ASSERT_EQ(v1, var[k]) << where;
                        ASSERT_EQ(s1, inv_std[k]) << where;
                        ASSERT_EQ(o1, offset[k]) << where;
                        for (std::size_t i = 0; i < cps; ++i) {
                            ASSERT_EQ(std::bit_cast<std::uint32_t>(y1[i]),
                                      std::bit_cast<std::uint32_t>(y.data()[at + i]))
                                << where << ", value " << i;
                            if (with_xhat) {
                                ASSERT_EQ(std::bit_cast<std::uint32_t>(h1[i]),
                                          std::bit_cast<std::uint32_t>(xhat.data()[at + i]))
                                    << where << ", x̂ value " << i;
                            }
                        }
                    }
                }
    }
}

TEST(Kernels, ShortSetsOnRowsBackwardEqualsSetsAloneBitForBit) {
    for (const auto& [channels, groups] : kShortSetsCases) {
        const Shape shape{350, channels};
        const Tensor x = xt::cast<float>(testing::random_array(shape, 28, 1.0, 2.0));
        const Tensor dy = xt::cast<float>(testing::random_array(shape, 29));
        const Tensor gamma = xt::cast<float>(testing::random_array({channels}, 30, 1.0, 0.5));
        const Tensor beta = xt::cast<float>(testing::random_array({channels}, 31));
        const std::size_t cps = channels / groups;
        for (int threads : {1, 2}) {
            ThreadCount tc(threads);
            auto whole = group_norm_with(groups, gamma, beta);
            whole->forward(x, Mode::train);
            const Tensor dx = whole->backward(dy);
            for (std::size_t n = 0; n < shape[0]; n += 7)
                for (std::size_t j = 0; j < groups; ++j) {
                    const auto rows = [&] { return xt::range(n, n + 1); };
                    const auto cols = [&] { return xt::range(j * cps, (j + 1) * cps); };
                    auto single = one_group_of(gamma, beta, j, cps);
                    single->forward(Tensor(xt::view(x, rows(), cols())), Mode::train);
                    ASSERT_EQ(Tensor(xt::view(dx, rows(), cols())),
                              single->backward(Tensor(xt::view(dy, rows(), cols()))))
                        << groups << " groups of " << cps << ", row " << n << ", set " << j << ", "
                        << threads << " threads";
                }
        }
    }
}

// Dense (N, C) tensors that do not stay in cache (8 MiB or more) are normalized and applied a
// row at a time, smaller ones four rows at a time. Every column is summed on its own (float
// lanes down the rows, sixteen columns side by side), so each block of sixteen columns of
// BatchNorm must be the same bits as those columns alone (131 KB, four rows at a time), forward
// and backward, on 1 and 2 threads.
TEST(Kernels, DenseRowsOutOfCacheEqualColumnsAloneBitForBit) {
    const Shape shape{2051, 1030};  // 8.4 MB of float; 2051 rows leave a partial group of rows
    const Tensor x = xt::cast<float>(testing::random_array(shape, 31, 1.0, 2.0));
    const Tensor dy = xt::cast<float>(testing::random_array(shape, 32));
    constexpr std::size_t kBlock = 16;
    for (int threads : {1, 2}) {
        ThreadCount tc(threads);
        auto whole = make_normalizer("batch_norm", shape[1]);
        Tensor input = x;
        const Tensor y = whole->forward(std::move(input), Mode::train);
        const Tensor dx = whole->backward(dy);
        const Tensor y_eval = whole->forward(x, Mode::eval, Grad::none);
        for (std::size_t c = 0; c + kBlock <= shape[1]; c += 13 * kBlock) {
            const auto block = [&](const Tensor& t) {
                return Tensor(xt::view(t, xt::all(), xt::range(c, c + kBlock)));
            };
            auto alone = make_normalizer("batch_norm", kBlock);
            ASSERT_EQ(block(y), alone->forward(block(x), Mode::train))
                << "columns from " << c << ", " << threads << " threads";
            ASSERT_EQ(block(dx), alone->backward(block(dy)))
                << "columns from " << c << ", " << threads << " threads";
            ASSERT_EQ(block(y_eval), alone->forward(block(x), Mode::eval, Grad::none))
                << "columns from " << c << ", " << threads << " threads";
        }
    }
}

// Inference (Grad::none) on a tensor with trailing dimensions that does not stay in cache walks
// memory in order, each thread a contiguous share, where a forward that keeps what backward needs
// goes by channel; outputs kept or streamed (the second shape is past half a 32 MiB cache). Every
// element is computed alone, so both, and each sample alone (in cache), give the same bits.
TEST(Kernels, InferenceOutOfCacheInMemoryOrderEqualsByChannelBitForBit) {
    for (const Shape& shape : {Shape{24, 16, 96, 96}, Shape{24, 16, 128, 128}}) {
        const Tensor x = xt::cast<float>(testing::random_array(shape, 41, 1.0, 2.0));
        for (const std::string spec : {"batch_norm", "batch_renorm"}) {
            for (int threads : {1, 2}) {
                ThreadCount tc(threads);
                auto norm = make_normalizer(spec, shape[1]);
                norm->forward(x, Mode::train, Grad::none);  // running statistics away from 0, 1
                const Tensor inference = norm->forward(x, Mode::eval, Grad::none);
                const Tensor kept = norm->forward(x, Mode::eval, Grad::keep);
                norm->clear_saved();
                ASSERT_EQ(inference, kept) << spec << ", " << threads << " threads";
                for (std::size_t n = 0; n < shape[0]; n += 7) {
                    const Tensor sample = xt::view(x, xt::range(n, n + 1));
                    ASSERT_EQ(Tensor(xt::view(inference, xt::range(n, n + 1))),
                              norm->forward(sample, Mode::eval, Grad::none))
                        << spec << ", sample " << n << ", " << threads << " threads";
                }
            }
        }
    }
}

// set_backward writes dx over the spent x̂ or input where dx_may_overwrite_xhat allows it; the
// result must be the same bits as into a new array, on every layout the stages distinguish
// (dense sets across the batch, one and several sets per row, trailing dimensions, and a tensor
// large enough for streamed stores), with x̂ stored and formed from the input, 1 and 2 threads.
TEST(Kernels, DxWrittenOverTheSpentInputEqualsDxIntoANewArrayBitForBit) {
    struct Case {
        Shape shape;
        SetSpec sets;
        bool reused_with_input, reused_with_xhat;
    };
    const std::vector<Case> cases = {
        {{300, 48}, {true, 1}, true, true},        // batch norm on (N, C)
        {{37, 1000}, {false, 1000}, true, false},  // layer norm on rows
        {{37, 48}, {false, 8}, false, false},      // group norm on rows: never reused
        {{6, 48, 40}, {true, 1}, true, true},      // batch norm, trailing dimensions
        {{6, 48, 40}, {false, 6}, true, true},     // group norm, trailing dimensions
        {{8, 4, 131072}, {false, 4}, true, true},  // layer norm, 16 MiB: streamed when new
        {{8, 4, 131072}, {true, 1}, true, true},   // batch norm, 16 MiB
    };
    for (const Case& c : cases) {
        const std::string where = format_shape(c.shape) +
                                  " across_batch=" + std::to_string(c.sets.across_batch) +
                                  " channels_per_set=" + std::to_string(c.sets.channels_per_set);
        const Standardized data(c.shape, c.sets, 31);
        const NcsView& v = data.v;
        const Tensor &x = data.x, &dy = data.dy, &gamma = data.gamma, &xhat = data.xhat;
        const std::vector<float>&mean = data.mean, &inv_std = data.inv_std;
        const auto coefficients = [](std::size_t, double mean_g, double mean_g_xhat, float& c1,
                                     float& cx) {
            c1 = float(mean_g);
            cx = float(mean_g_xhat);
        };
        for (int threads : {1, 2}) {
            ThreadCount tc(threads);
            for (const bool stored : {false, true}) {
                if (!stored && !kernels::recomputes_xhat_in_registers(v, c.sets)) continue;
                const kernels::XhatSource<float> src =
                    stored ? kernels::XhatSource<float>(xhat.data())
                           : kernels::XhatSource<float>(x.data(), mean.data(), inv_std.data());
                std::vector<double> s1, s2, t1, t2;
                const Tensor dx_new = kernels::set_backward(dy, src, v, c.sets, gamma.data(),
                                                            inv_std, true, coefficients, s1, s2);
                // The spent storage is a copy, so that x and x̂ stay for the next round.
                Tensor spent = stored ? xhat : x;
                const float* spent_data = spent.data();
                const kernels::XhatSource<float> spent_src =
                    stored ? kernels::XhatSource<float>(spent.data())
                           : kernels::XhatSource<float>(spent.data(), mean.data(), inv_std.data());
                const Tensor dx_over =
                    kernels::set_backward(dy, spent_src, v, c.sets, gamma.data(), inv_std, true,
                                          coefficients, t1, t2, std::move(spent));
                const std::string what = where + (stored ? " x̂ stored, " : " from input, ") +
                                         std::to_string(threads) + " threads";
                EXPECT_EQ(dx_over.data() == spent_data,
                          stored ? c.reused_with_xhat : c.reused_with_input)
                    << what;
                ASSERT_EQ(dx_over, dx_new) << what;
                EXPECT_EQ(t1, s1) << what;
                EXPECT_EQ(t2, s2) << what;
            }
        }
    }
}

// Stage 3 alone (Batch-Layer Norm's branches call it with x̂ formed from the kept input): the
// per-set and per-channel sums from the input equal those from the stored x̂, bit for bit, on
// each layout that recomputes x̂ in registers, including rows with one set per row, whose set
// sums are taken row by row beside the column sums.
TEST(Kernels, BackwardReduceFromTheInputEqualsStoredXhatBitForBit) {
    const std::vector<LayoutCase> cases = {
        {{300, 48}, {true, 1}},      {{300, 37}, {true, 1}},   {{37, 1000}, {false, 1000}},
        {{64, 40}, {false, 40}},     {{6, 48, 40}, {true, 1}}, {{6, 48, 40}, {false, 48}},
        {{8, 4, 131072}, {true, 1}},
    };
    for (const LayoutCase& c : cases) {
        const Standardized d(c.shape, c.sets, 41);
        const NcsView& v = d.v;
        ASSERT_TRUE(kernels::recomputes_xhat_in_registers(v, c.sets)) << format_shape(c.shape);
        const std::size_t k = c.sets.num_sets(v);
        for (const float* g : {static_cast<const float*>(nullptr), d.gamma.data()}) {
            for (int threads : {1, 2}) {
                ThreadCount tc(threads);
                const std::string what =
                    format_shape(c.shape) + " across_batch=" + std::to_string(c.sets.across_batch) +
                    (g ? " with" : " without") + " gamma, " + std::to_string(threads) + " threads";
                std::vector<double> stored_g(k), stored_gx(k), stored_dy(v.c), stored_dyx(v.c);
                std::vector<double> input_g(k), input_gx(k), input_dy(v.c), input_dyx(v.c);
                kernels::backward_reduce(d.dy.data(), kernels::XhatSource<float>(d.xhat.data()), v,
                                         c.sets, g, stored_g.data(), stored_gx.data(),
                                         stored_dy.data(), stored_dyx.data());
                kernels::backward_reduce(
                    d.dy.data(),
                    kernels::XhatSource<float>(d.x.data(), d.mean.data(), d.inv_std.data()), v,
                    c.sets, g, input_g.data(), input_gx.data(), input_dy.data(), input_dyx.data());
                EXPECT_EQ(input_g, stored_g) << what;
                EXPECT_EQ(input_gx, stored_gx) << what;
                EXPECT_EQ(input_dy, stored_dy) << what;
                EXPECT_EQ(input_dyx, stored_dyx) << what;
            }
        }
    }
}

// weighted_column_sums forms g = w·dy in registers, w per row or per column of a dense view: the
// same sums, bit for bit, as channel_sums over an array that holds g (Batch-Layer Norm's backward
// wrote that array before), with several blocks of rows, with column ranges split between the
// threads, on one and two threads. Views it cannot take are refused.
TEST(Kernels, WeightedColumnSumsEqualColumnSumsOfTheWeightedArrayBitForBit) {
    const SetSpec sets{true, 1};
    for (const Shape& shape : {Shape{300, 48}, Shape{37, 1000}, Shape{2, 20000}, Shape{64, 3136}}) {
        const Standardized d(shape, sets, 43);
        const NcsView& v = d.v;
        const Tensor row_weight = xt::cast<float>(testing::random_array({v.n}, 44, 1.0, 0.5));
        const Tensor column_weight = xt::cast<float>(testing::random_array({v.c}, 45, 1.0, 0.5));
        const kernels::XhatSource<float> xhat(d.x.data(), d.mean.data(), d.inv_std.data());
        for (const bool per_row : {true, false}) {
            Tensor g = Tensor::from_shape(shape);
            for (std::size_t n = 0; n < v.n; ++n)
                for (std::size_t c = 0; c < v.c; ++c)
                    g.data()[n * v.c + c] =
                        d.dy.data()[n * v.c + c] * (per_row ? row_weight(n) : column_weight(c));
            for (int threads : {1, 2}) {
                ThreadCount tc(threads);
                const std::string what = format_shape(shape) +
                                         (per_row ? " per row, " : " per column, ") +
                                         std::to_string(threads) + " threads";
                std::vector<double> array_g(v.c), array_gx(v.c), weighted_g(v.c), weighted_gx(v.c);
                kernels::channel_sums(g.data(), xhat, v, array_g.data(), array_gx.data(), &sets);
                kernels::weighted_column_sums(d.dy.data(), xhat, v, sets,
                                              per_row ? row_weight.data() : nullptr,
                                              per_row ? nullptr : column_weight.data(),
                                              weighted_g.data(), weighted_gx.data());
                EXPECT_EQ(weighted_g, array_g) << what;
                EXPECT_EQ(weighted_gx, array_gx) << what;
            }
        }
    }
    const Standardized runs({4, 3, 5}, sets, 46);
    std::vector<double> s1(3), s2(3);
    const kernels::XhatSource<float> from_input(runs.x.data(), runs.mean.data(),
                                                runs.inv_std.data());
    EXPECT_THROW(
        kernels::weighted_column_sums(runs.dy.data(), from_input, runs.v, sets, runs.gamma.data(),
                                      static_cast<const float*>(nullptr), s1.data(), s2.data()),
        std::logic_error);
    const Standardized dense({8, 3}, sets, 47);
    EXPECT_THROW(
        kernels::weighted_column_sums(
            dense.dy.data(),
            kernels::XhatSource<float>(dense.x.data(), dense.mean.data(), dense.inv_std.data()),
            dense.v, sets, dense.gamma.data(), dense.gamma.data(), s1.data(), s2.data()),
        std::logic_error);
}

// The dense kernels walk columns in vectors from the first column on a 64-byte line (the columns
// before it one at a time), so where the arrays lie moves that split. Every column's sums and
// every output must come out the same bits wherever that is: the same data at each of the
// sixteen float positions within a line.
TEST(Kernels, ResultsDoNotDependOnWhereTheArraysLie) {
    const std::vector<LayoutCase> cases = {
        {{300, 1024}, {true, 1}},     // batch norm on (N, C)
        {{67, 1027}, {true, 1}},      // columns past the last sixteen too
        {{37, 48}, {true, 1}},        // narrower than a line and a vector
        {{37, 1000}, {false, 1000}},  // layer norm on rows
        {{6, 48, 40}, {true, 1}},     // batch norm, trailing dimensions
        {{6, 48, 40}, {false, 6}},    // group norm, trailing dimensions
    };
    constexpr std::size_t kPositions = 16;
    for (const LayoutCase& c : cases) {
        const NcsView v = view_of(c.shape);
        const std::string where =
            format_shape(c.shape) + " across_batch=" + std::to_string(c.sets.across_batch);
        const Tensor x_data = xt::cast<float>(testing::random_array(c.shape, 51, 1.0, 2.0));
        const Tensor dy_data = xt::cast<float>(testing::random_array(c.shape, 52));
        const Tensor gamma = xt::cast<float>(testing::random_array({v.c}, 53, 1.0, 0.5));
        const Tensor beta = xt::cast<float>(testing::random_array({v.c}, 54));
        const std::size_t n = v.size(), k = c.sets.num_sets(v);
        struct Results {
            std::vector<float> mean, var, inv_std, y, y_eval, dx;
            std::vector<double> sum_g, sum_g_xhat, sum_dy, sum_dy_xhat;
            std::vector<double> from_input_dy, from_input_dy_xhat;
        };
        std::vector<Results> results;
        std::vector<float> x_store(n + kPositions), dy_store(n + kPositions),
            y_store(n + kPositions), xhat_store(n + kPositions);
        const bool recomputed = kernels::recomputes_xhat_in_registers(v, c.sets);
        for (std::size_t at = 0; at < kPositions; ++at) {
            float* x = x_store.data() + at;
            float* dy = dy_store.data() + at;
            float* y = y_store.data() + at;
            float* xhat = xhat_store.data() + at;
            std::copy(x_data.begin(), x_data.end(), x);
            std::copy(dy_data.begin(), dy_data.end(), dy);
            Results r;
            r.mean.resize(k);
            r.var.resize(k);
            r.inv_std.resize(k);
            r.sum_g.resize(k);
            r.sum_g_xhat.resize(k);
            r.sum_dy.resize(v.c);
            r.sum_dy_xhat.resize(v.c);
            kernels::standardize(x, v, c.sets, true, 1e-5, gamma.data(), beta.data(), r.mean.data(),
                                 r.var.data(), r.inv_std.data(), static_cast<float*>(nullptr), y);
            r.y.assign(y, y + n);
            kernels::normalize_affine(x, v, c.sets, r.mean.data(), r.inv_std.data(),
                                      static_cast<const float*>(nullptr), gamma.data(), beta.data(),
                                      static_cast<float*>(nullptr), y);
            r.y_eval.assign(y, y + n);
            const kernels::XhatSource<float> src(xhat);
            if (recomputed) {
                // The column sums of dγ and dβ with x̂ formed from the input, as the layers that
                // keep their input take them.
                r.from_input_dy.resize(v.c);
                r.from_input_dy_xhat.resize(v.c);
                kernels::channel_sums(
                    dy, kernels::XhatSource<float>(x, r.mean.data(), r.inv_std.data()), v,
                    r.from_input_dy.data(), r.from_input_dy_xhat.data(), &c.sets);
            }
            kernels::backward_reduce(dy, src, v, c.sets, gamma.data(), r.sum_g.data(),
                                     r.sum_g_xhat.data(), r.sum_dy.data(), r.sum_dy_xhat.data());
            std::vector<float> c1(k), cx(k);
            for (std::size_t s = 0; s < k; ++s) {
                c1[s] = float(r.sum_g[s] / double(c.sets.set_size(v)));
                cx[s] = float(r.sum_g_xhat[s] / double(c.sets.set_size(v)));
            }
            kernels::backward_apply(dy, src, v, c.sets, gamma.data(), r.inv_std.data(), c1.data(),
                                    cx.data(), y);
            r.dx.assign(y, y + n);
            results.push_back(std::move(r));
        }
        for (std::size_t at = 1; at < kPositions; ++at) {
            const std::string what = where + " at float " + std::to_string(at) + " of a line";
            const Results &first = results[0], &other = results[at];
            const std::pair<const char*, std::vector<float> Results::*> outputs[] = {
                {"mean", &Results::mean},       {"var", &Results::var},
                {"inv_std", &Results::inv_std}, {"y", &Results::y},
                {"y_eval", &Results::y_eval},   {"dx", &Results::dx}};
            for (const auto& [name, field] : outputs)
                EXPECT_EQ(other.*field, first.*field) << name << ", " << what;
            const std::pair<const char*, std::vector<double> Results::*> sums[] = {
                {"sum_g", &Results::sum_g},
                {"sum_g_xhat", &Results::sum_g_xhat},
                {"sum_dy", &Results::sum_dy},
                {"sum_dy_xhat", &Results::sum_dy_xhat},
                {"from_input_dy", &Results::from_input_dy},
                {"from_input_dy_xhat", &Results::from_input_dy_xhat}};
            for (const auto& [name, field] : sums)
                EXPECT_EQ(other.*field, first.*field) << name << ", " << what;
        }
    }
}

// Arrays of n floats laid out against 4 KiB pages: an input holding `values`, 64 bytes into
// its page, and outputs placed at a chosen offset (in floats, either way) from that page offset,
// a page past the start of their own store.
struct PagedArrays {
    static constexpr std::size_t kPage = 4096, kFloatsPerPage = kPage / sizeof(float);
    explicit PagedArrays(std::size_t n)
        : store_floats(((n + kFloatsPerPage - 1) / kFloatsPerPage + 3) * kFloatsPerPage),
          output_store(store_floats) {}
    std::size_t store_floats;
    std::vector<float> output_store;
    std::vector<std::vector<float>> input_stores;

    static float* page_start(std::vector<float>& store) {
        const auto addr = reinterpret_cast<std::uintptr_t>(store.data());
        return store.data() + ((kPage - addr % kPage) % kPage) / sizeof(float);
    }
    float* input(const Tensor& values) {
        float* in = page_start(input_stores.emplace_back(store_floats)) + 16;
        std::copy(values.begin(), values.end(), in);
        return in;
    }
    float* output_at(std::ptrdiff_t offset_floats) {
        return page_start(output_store) + 16 + kFloatsPerPage + offset_floats;
    }
};

// The dense kernels on rows in cache take their columns from the last to the first where an
// output lies just above an input modulo 4 KiB (rows::columns_backward), and load a group's rows
// before storing any. Every value is computed alone, so outputs at every 4-byte step from 64
// bytes below to 64 bytes above the input (modulo 4 KiB), on shapes with a partial group of rows
// and columns before the first line and past the last vector, come out as far from it.
TEST(Kernels, OutputsNearTheInputModuloAPageEqualOutputsFarFromItBitForBit) {
    constexpr std::size_t kFloatsPerPage = PagedArrays::kFloatsPerPage;
    for (const Shape& shape : {Shape{67, 1027}, Shape{300, 1024}, Shape{37, 48}, Shape{9, 512}}) {
        const NcsView v = view_of(shape);
        const SetSpec sets{true, 1};
        const std::size_t n = v.size();
        const Tensor gamma = xt::cast<float>(testing::random_array({v.c}, 63, 1.0, 0.5));
        const Tensor beta = xt::cast<float>(testing::random_array({v.c}, 64));
        // x and dy 64 bytes into their pages, each output at a chosen offset from them.
        PagedArrays arrays(n);
        const float* x = arrays.input(xt::cast<float>(testing::random_array(shape, 61, 1.0, 2.0)));
        const float* dy = arrays.input(xt::cast<float>(testing::random_array(shape, 62)));
        std::vector<float> mean(v.c), var(v.c), inv_std(v.c), c1(v.c), cx(v.c);
        for (std::size_t c = 0; c < v.c; ++c) {
            c1[c] = 0.25f * float(c % 7);
            cx[c] = 0.5f - 0.125f * float(c % 5);
        }
        const auto run = [&](std::ptrdiff_t offset_floats) {
            float* out = arrays.output_at(offset_floats);
            std::vector<float> results;
            const auto keep = [&] { results.insert(results.end(), out, out + n); };
            kernels::standardize(x, v, sets, true, 1e-5, gamma.data(), beta.data(), mean.data(),
                                 var.data(), inv_std.data(), static_cast<float*>(nullptr), out);
            keep();
            kernels::normalize_affine(x, v, sets, mean.data(), inv_std.data(),
                                      static_cast<const float*>(nullptr), gamma.data(), beta.data(),
                                      static_cast<float*>(nullptr), out, true);
            keep();
            kernels::backward_apply(dy, kernels::XhatSource<float>(x, mean.data(), inv_std.data()),
                                    v, sets, gamma.data(), inv_std.data(), c1.data(), cx.data(),
                                    out);
            keep();
            // x standing in for a stored x̂.
            kernels::backward_apply(dy, kernels::XhatSource<float>(x), v, sets, gamma.data(),
                                    inv_std.data(), c1.data(), cx.data(), out);
            keep();
            return results;
        };
        const std::vector<float> far = run(std::ptrdiff_t(kFloatsPerPage / 2));
        std::size_t walked_left = 0;
        for (std::ptrdiff_t d = -16; d <= 16; ++d) {
            walked_left += kernels::rows::columns_backward({arrays.output_at(d)}, {x}) ? 1 : 0;
            EXPECT_EQ(run(d), far) << format_shape(shape) << ", output " << d * 4
                                   << " bytes from the input modulo 4 KiB";
        }
        EXPECT_EQ(walked_left, 15u) << "outputs 4 to 60 bytes above the input walk to the left";
    }
}

// A streamed run lying 1-255 bytes above its input modulo 4 KiB is written from its end to its
// start (rows::streams_backward). Every value is computed alone, so BatchNorm's inference with
// y at every 4-byte step from 64 bytes below to 320 bytes above x (modulo 4 KiB; aligned and
// not, runs with a head before the first 16-byte boundary and a tail past the last vector), at
// both vector widths, comes out as far from it.
TEST(Kernels, StreamedRunsNearTheInputModuloAPageEqualRunsFarFromItBitForBit) {
    constexpr std::size_t kFloatsPerPage = PagedArrays::kFloatsPerPage;
    // Outputs of 60 KB and more are streamed.
    CacheSize small(std::size_t{64} << 10);
    const bool machine_width = kernels::wide_vectors();
    for (const Shape& shape : {Shape{3, 5, 1003}, Shape{2, 4, 64, 33}}) {
        const NcsView v = view_of(shape);
        const SetSpec sets{true, 1};
        const std::size_t n = v.size();
        PagedArrays arrays(n);
        const float* x = arrays.input(xt::cast<float>(testing::random_array(shape, 65, 1.0, 2.0)));
        std::vector<float> mean(v.c), inv_std(v.c), gamma(v.c), beta(v.c);
        for (std::size_t c = 0; c < v.c; ++c) {
            mean[c] = 0.75f + 0.125f * float(c);
            inv_std[c] = 1.5f - 0.0625f * float(c);
            gamma[c] = 0.5f + 0.25f * float(c % 3);
            beta[c] = 0.125f * float(c % 5) - 0.25f;
        }
        const auto run = [&](std::ptrdiff_t offset_floats) {
            float* out = arrays.output_at(offset_floats);
            kernels::normalize_affine(x, v, sets, mean.data(), inv_std.data(),
                                      static_cast<const float*>(nullptr), gamma.data(), beta.data(),
                                      static_cast<float*>(nullptr), out, true);
            return std::vector<float>(out, out + n);
        };
        for (const bool wide : {false, true}) {
            kernels::set_wide_vectors(wide);
            const std::vector<float> far = run(std::ptrdiff_t(kFloatsPerPage / 2));
            std::size_t walked_back = 0;
            for (std::ptrdiff_t d = -16; d <= 80; ++d) {
                walked_back += kernels::rows::streams_backward(arrays.output_at(d), x) ? 1 : 0;
                ASSERT_EQ(run(d), far)
                    << format_shape(shape) << ", output " << d * 4
                    << " bytes from the input modulo 4 KiB" << (wide ? ", wide vectors" : "");
            }
            EXPECT_EQ(walked_back, 63u) << "outputs 4 to 252 bytes above the input walk back";
        }
        kernels::set_wide_vectors(machine_width);
    }
}

}  // namespace
}  // namespace normlab
