#pragma once
// The plainest loop that moves a pass's minimal traffic (bench_common.hpp's minimal_bytes),
// timed as normlab's layers are timed (NormlabCase::call): what the machine gives a pass that
// reads its inputs once and writes its output once, under the same protocol of fresh inputs,
// fresh outputs and median call times. A layer's pass also takes statistics, so its time over
// this loop's is what its numerics and its order of work cost; the loop's own fraction of the
// roofline bounds what the roofline target can ask of any pass here.
//
// The same loop after a plain read pass over its inputs (a sum) is the plainest pass that has to
// read its input twice: BatchNorm's training forward and backward need a channel's statistics
// over the whole batch before they can write any of its outputs, so where a channel's values do
// not fit in a core's cache (on (N, C) rows a channel is a column down the whole tensor) they
// read their input twice, and their time over these two passes' is what their numerics cost
// beyond that second reading.

#include <omp.h>

#include <chrono>
#include <cstddef>

#include <xtensor/xrandom.hpp>

#include "bench_common.hpp"
#include "normlab_case.hpp"

namespace normlab::bench {

// y = 2·x + 1, each OpenMP thread one contiguous share (as copy_by_threads writes its input).
__attribute__((target_clones("avx512f", "avx2", "default"))) inline void plain_forward(
    const float* x, float* y, std::size_t n) {
#pragma omp parallel for simd schedule(static)
    for (std::size_t i = 0; i < n; ++i)
        y[i] = 2.0f * x[i] + 1.0f;
}

// dx = dy + 2·x, shared the same way.
__attribute__((target_clones("avx512f", "avx2", "default"))) inline void plain_backward(
    const float* dy, const float* x, float* dx, std::size_t n) {
#pragma omp parallel for simd schedule(static)
    for (std::size_t i = 0; i < n; ++i)
        dx[i] = dy[i] + 2.0f * x[i];
}

// The read pass before the loop: each OpenMP thread reads about the share it then writes (the
// loop's static schedule) from its end back to its start, a block at a time, so that the loop
// starts on the values read last, as normlab's statistics over the batch leave them (moments.cpp's
// column_sums_by_blocks). Sixty-four float partial sums, so that the adds do not wait on each
// other. With `dy`, the sum of dy·x (the backward's reading of both).
__attribute__((target_clones("avx512f", "avx2", "default"))) inline float plain_read(
    const float* dy, const float* x, std::size_t n) {
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
        constexpr std::size_t kBlock = 4096, kLanes = 64;
        const auto threads = std::size_t(omp_get_num_threads());
        const auto t = std::size_t(omp_get_thread_num());
        const std::size_t chunk = (n + threads - 1) / threads;
        const std::size_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
        float partial[kLanes] = {};
        for (std::size_t block_end = end; block_end > begin;) {
            const std::size_t block_begin = block_end - std::min(kBlock, block_end - begin);
            std::size_t i = block_begin;
            if (dy)
                for (; i + kLanes <= block_end; i += kLanes)
                    for (std::size_t j = 0; j < kLanes; ++j)
                        partial[j] += dy[i + j] * x[i + j];
            else
                for (; i + kLanes <= block_end; i += kLanes)
                    for (std::size_t j = 0; j < kLanes; ++j)
                        partial[j] += x[i + j];
            for (; i < block_end; ++i)
                partial[0] += dy ? dy[i] * x[i] : x[i];
            block_end = block_begin;
        }
        for (float p : partial)
            total += p;
    }
    return total;
}

// The plain loop on an input (normal, mean 1, std 2) and a gradient (standard normal) of `shape`,
// distributed as NormlabCase's (the values do not change the loop's time).
class PlainLoopCase {
  public:
    explicit PlainLoopCase(const ShapeCase& shape)
        : x_(xt::random::randn<float>(shape.dims, 1.0f, 2.0f)),
          dy_(xt::random::randn<float>(shape.dims)) {}

    // The seconds of one call of `pass`: a training forward on a copy of x written by the
    // threads (untimed), inference on x itself call after call, a backward on dy and such a
    // copy of x; each output allocated in the timed call, as a layer allocates its own.
    // With `read_first` (training forward and backward), the loop follows plain_read over its
    // inputs in the same call.
    double call(Pass pass, bool read_first = false) {
        using clock = std::chrono::steady_clock;
        const Tensor input = pass == Pass::fwd_eval ? Tensor() : copied_by_threads(x_);
        const auto t0 = clock::now();
        Tensor out = Tensor::from_shape(x_.shape());
        if (read_first && pass != Pass::fwd_eval) {
            float total =
                plain_read(pass == Pass::bwd ? dy_.data() : nullptr, input.data(), input.size());
            benchmark::DoNotOptimize(total);
        }
        if (pass == Pass::bwd)
            plain_backward(dy_.data(), input.data(), out.data(), out.size());
        else
            plain_forward(pass == Pass::fwd_eval ? x_.data() : input.data(), out.data(),
                          out.size());
        const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
        benchmark::DoNotOptimize(out.data());
        return seconds;
    }

  private:
    Tensor x_;
    Tensor dy_;
};

}  // namespace normlab::bench
