#pragma once
// The plainest loop that moves a pass's minimal traffic (bench_common.hpp's minimal_bytes),
// timed as normlab's layers are timed (NormlabCase::call): what the machine gives a pass that
// reads its inputs once and writes its output once, under the same protocol of fresh inputs,
// fresh outputs and median call times. A layer's pass also takes statistics, so its time over
// this loop's is what its numerics and its order of work cost; the loop's own fraction of the
// roofline bounds what the roofline target can ask of any pass here.

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
    double call(Pass pass) {
        using clock = std::chrono::steady_clock;
        const Tensor input = pass == Pass::fwd_eval ? Tensor() : copied_by_threads(x_);
        const auto t0 = clock::now();
        Tensor out = Tensor::from_shape(x_.shape());
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
