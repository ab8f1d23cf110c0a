// The triad behind the benchmarks' bandwidth and the cache probe, and the probe's reading of
// its measurements (normlab/bandwidth.hpp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "guarded_output.hpp"
#include "normlab/bandwidth.hpp"
#include "thread_count.hpp"

namespace normlab {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

using testing::ThreadCount;

// Every value of a is b + 3·c, in both forms, wherever a starts relative to a 64-byte line and
// however many whole lines and loose values the threads' shares hold; nothing beside a changes.
TEST(Bandwidth, TriadWritesEveryValueAndNothingElse) {
    for (const std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{15}, std::size_t{16},
                                std::size_t{17}, std::size_t{100}, std::size_t{4099}}) {
        std::vector<float> b(n), c(n);
        for (std::size_t i = 0; i < n; ++i) {
            b[i] = 0.25f * float(i % 97) - 3.0f;
            c[i] = 1.0f / float(1 + i % 13);
        }
        for (int threads : {1, 2, 3})
            for (bool streamed : {false, true})
                for (std::size_t at = 0; at < 16; ++at) {
                    ThreadCount tc(threads);
                    testing::GuardedOutput out(at, n);
                    const float* a = out.values();
                    triad(out.values(), b.data(), c.data(), n, streamed);
                    const std::string what = "n " + std::to_string(n) + ", " +
                                             std::to_string(threads) + " threads, streamed " +
                                             std::to_string(streamed) + ", at float " +
                                             std::to_string(at);
                    for (std::size_t i = 0; i < n; ++i) {
                        const float expected = b[i] + 3.0f * c[i];
                        ASSERT_EQ(std::memcmp(&a[i], &expected, sizeof(float)), 0)
                            << "value " << i << ": " << a[i] << " for " << expected << ", " << what;
                    }
                    EXPECT_TRUE(out.guards_intact()) << what;
                }
    }
}

// Points with the ratio streamed/kept as given, at 8, 16, 32 and 64 MiB.
std::vector<CacheProbePoint> points_with(const std::vector<double>& ratios) {
    std::vector<CacheProbePoint> points;
    std::size_t bytes = 8 * MiB;
    for (double r : ratios) {
        points.push_back({bytes, 20e9, 20e9 * r});
        bytes *= 2;
    }
    return points;
}

TEST(Bandwidth, CrossoverLiesWhereStreamingStoresStayFaster) {
    const std::size_t largest = 128 * MiB;
    // Between 16 and 32 MiB, halfway on a log scale: 16 MiB·√2, rounded down to a KiB.
    const std::size_t halfway = std::size_t(16.0 * double(MiB) * std::sqrt(2.0)) / 1024 * 1024;
    EXPECT_EQ(crossover_bytes(points_with({0.5, 0.8, 1.2, 1.3}), largest), halfway);
    // A quarter of the way from 16 MiB: 16 MiB·2^0.25.
    EXPECT_EQ(crossover_bytes(points_with({0.5, 0.9, 1.3, 1.3}), largest),
              std::size_t(16.0 * double(MiB) * std::pow(2.0, 0.25)) / 1024 * 1024);
    // A streamed win before a loss does not count: the crossover is the last one.
    EXPECT_EQ(crossover_bytes(points_with({1.1, 0.8, 1.2, 1.3}), largest), halfway);
    // Faster throughout: the first size; never (or not at the end): the largest.
    EXPECT_EQ(crossover_bytes(points_with({1.1, 1.2}), largest), 8 * MiB);
    EXPECT_EQ(crossover_bytes(points_with({0.5, 0.7, 0.9}), largest), largest);
    EXPECT_EQ(crossover_bytes(points_with({0.5, 1.2, 0.9}), largest), largest);
    EXPECT_EQ(crossover_bytes({}, largest), largest);
}

// Measured up to 8 MiB: points from 2 MiB on, each about 1.41 times the last and none past the
// largest, bandwidths that are numbers, and the plan that crossover_bytes reads from them.
TEST(Bandwidth, ProbeMeasuresFromTwoMiBUpToTheLargestSize) {
    const CacheProbe probe = probe_cache(8 * MiB);
    ASSERT_GE(probe.points.size(), 2u);
    EXPECT_NEAR(double(probe.points[0].working_set_bytes), double(2 * MiB), 128.0);
    for (std::size_t i = 0; i < probe.points.size(); ++i) {
        const CacheProbePoint& p = probe.points[i];
        EXPECT_LE(p.working_set_bytes, 8 * MiB);
        EXPECT_TRUE(std::isfinite(p.kept_bytes_per_second) && p.kept_bytes_per_second > 1e6);
        EXPECT_TRUE(std::isfinite(p.streamed_bytes_per_second) &&
                    p.streamed_bytes_per_second > 1e6);
        if (i > 0) {
            EXPECT_NEAR(double(p.working_set_bytes) / double(probe.points[i - 1].working_set_bytes),
                        std::sqrt(2.0), 0.01);
        }
    }
    EXPECT_EQ(probe.plan_bytes, crossover_bytes(probe.points, 8 * MiB));
    EXPECT_GE(probe.plan_bytes, 2 * MiB);
    EXPECT_LE(probe.plan_bytes, 8 * MiB);
}

}  // namespace
}  // namespace normlab
