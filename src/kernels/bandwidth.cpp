#include "normlab/bandwidth.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>

#include "kernels/rows.hpp"
#include "kernels/vector_width.hpp"

namespace normlab {
namespace {

constexpr std::size_t kLineFloats = 16;

// The values of a share before a's first line and after its last: at most fifteen at each end.
void triad_values(float* a, const float* b, const float* c, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        a[i] = b[i] + 3.0f * c[i];
}

// Whole lines of a from a line on, n a multiple of sixteen. The two forms differ in the store
// instruction alone, so that a build without optimization or with sanitizers, which slows a
// plain loop many times over, still compares the stores and nothing else.
__attribute__((target("avx512f"))) void triad_lines_avx512(float* a, const float* b, const float* c,
                                                           std::size_t n, bool streamed) {
    const __m512 three = _mm512_set1_ps(3.0f);
    for (std::size_t i = 0; i < n; i += kLineFloats) {
        const __m512 line =
            _mm512_add_ps(_mm512_loadu_ps(b + i), _mm512_mul_ps(three, _mm512_loadu_ps(c + i)));
        if (streamed)
            _mm512_stream_ps(a + i, line);
        else
            _mm512_store_ps(a + i, line);
    }
}

void triad_lines_sse(float* a, const float* b, const float* c, std::size_t n, bool streamed) {
    const __m128 three = _mm_set1_ps(3.0f);
    for (std::size_t i = 0; i < n; i += 4) {
        const __m128 quarter =
            _mm_add_ps(_mm_loadu_ps(b + i), _mm_mul_ps(three, _mm_loadu_ps(c + i)));
        if (streamed)
            _mm_stream_ps(a + i, quarter);
        else
            _mm_store_ps(a + i, quarter);
    }
}

void triad_share(float* a, const float* b, const float* c, std::size_t n, bool streamed) {
    const std::size_t head = kernels::rows::values_before_line(a, n);
    const std::size_t lines = (n - head) / kLineFloats * kLineFloats;
    triad_values(a, b, c, head);
    if (kernels::host_has_avx512)
        triad_lines_avx512(a + head, b + head, c + head, lines, streamed);
    else
        triad_lines_sse(a + head, b + head, c + head, lines, streamed);
    if (streamed) kernels::rows::fence_streamed_stores();
    triad_values(a + head + lines, b + head + lines, c + head + lines, n - head - lines);
}

struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};
using LineAlignedFloats = std::unique_ptr<float[], AlignedFree>;

LineAlignedFloats line_aligned_floats(std::size_t n) {
    const std::size_t bytes = std::max<std::size_t>((n * sizeof(float) + 63) / 64 * 64, 64);
    auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (p == nullptr) throw std::bad_alloc();
    return LineAlignedFloats(p);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t h = v.size() / 2;
    return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

}  // namespace

void triad(float* a, const float* b, const float* c, std::size_t n, bool streamed) {
#pragma omp parallel
    {
        const auto threads = std::size_t(omp_get_num_threads());
        const auto t = std::size_t(omp_get_thread_num());
        // Shares in whole lines from a's first line, so that no line is written by two threads.
        const std::size_t head = kernels::rows::values_before_line(a, n);
        const std::size_t lines = (n - head) / kLineFloats;
        const std::size_t begin = t == 0 ? 0 : head + lines * t / threads * kLineFloats;
        const std::size_t end =
            t + 1 == threads ? n : head + lines * (t + 1) / threads * kLineFloats;
        triad_share(a + begin, b + begin, c + begin, end - begin, streamed);
    }
}

std::size_t crossover_bytes(const std::vector<CacheProbePoint>& points, std::size_t largest_bytes) {
    const auto ratio = [&](std::size_t i) {
        return points[i].streamed_bytes_per_second / points[i].kept_bytes_per_second;
    };
    // The first point from which streaming stores stay faster.
    std::size_t first = points.size();
    while (first > 0 && ratio(first - 1) > 1.0)
        --first;
    if (first == points.size()) return largest_bytes;
    if (first == 0) return points[0].working_set_bytes / 1024 * 1024;
    const double r0 = ratio(first - 1), r1 = ratio(first);
    const double l0 = std::log(double(points[first - 1].working_set_bytes));
    const double l1 = std::log(double(points[first].working_set_bytes));
    const double at = std::exp(l0 + (1.0 - r0) / (r1 - r0) * (l1 - l0));
    return std::size_t(at) / 1024 * 1024;
}

CacheProbe probe_cache(std::size_t largest_bytes) {
    constexpr std::size_t kSmallest = std::size_t{2} << 20;
    const std::size_t largest_n =
        std::max(largest_bytes, kSmallest) / (2 * sizeof(float)) / kLineFloats * kLineFloats;
    LineAlignedFloats arrays[2] = {line_aligned_floats(largest_n), line_aligned_floats(largest_n)};
    // Zeros stay zeros: no sweep meets an infinity or a subnormal.
    for (auto& array : arrays)
        std::fill_n(array.get(), largest_n, 0.0f);
    CacheProbe probe;
    for (double bytes = double(kSmallest); bytes <= double(largest_bytes) * 1.0001;
         bytes *= std::sqrt(2.0)) {
        const std::size_t n = std::min(
            std::size_t(bytes / (2 * sizeof(float))) / kLineFloats * kLineFloats, largest_n);
        // Two sweeps, each writing one array from the other (a triad with b = c), as a layer
        // reads the output of the layer before. The first pair after a change of form only
        // brings the arrays to where that form leaves them; the second is timed.
        const auto pair_seconds = [&](bool streamed) {
            double seconds = 0;
            for (int timed = 0; timed < 2; ++timed) {
                const auto t0 = std::chrono::steady_clock::now();
                triad(arrays[1].get(), arrays[0].get(), arrays[0].get(), n, streamed);
                triad(arrays[0].get(), arrays[1].get(), arrays[1].get(), n, streamed);
                seconds =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            }
            return seconds;
        };
        std::vector<double> kept, streamed;
        for (int block = 0; block < 3; ++block)
            for (bool form : {false, true, true, false})
                (form ? streamed : kept).push_back(pair_seconds(form));
        // Each sweep reads one array and writes the other.
        const double moved = 2.0 * 2.0 * double(n) * sizeof(float);
        probe.points.push_back(
            {2 * n * sizeof(float), moved / median(kept), moved / median(streamed)});
        const std::size_t p = probe.points.size();
        const auto streamed_faster = [&](std::size_t i) {
            return probe.points[i].streamed_bytes_per_second >
                   probe.points[i].kept_bytes_per_second;
        };
        // A win of streaming stores at one or two sizes can be noise (on the 105 MiB VM one run of
        // nine stopped at 7 MiB after two, where the others found 16-20 MiB).
        if (p >= 3 && streamed_faster(p - 1) && streamed_faster(p - 2) && streamed_faster(p - 3))
            break;
    }
    probe.plan_bytes = crossover_bytes(probe.points, largest_bytes);
    return probe;
}

}  // namespace normlab
