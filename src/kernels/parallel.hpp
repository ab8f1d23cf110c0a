#pragma once
// Parallel loops and regions that stay out of the OpenMP runtime when they run on one thread.
//
// A parallel region whose if clause is false still goes through libgomp, which sets up and
// tears down a team of one: about 1 us per region on a 2-vCPU Intel Xeon VM (2026-12), ten
// times the 2048-value fill it guarded, and a small layer's forward and backward pass several
// such regions. These helpers call the body directly instead. A region's body learns its share
// of the work from the TeamSlot it is given, not from omp_get_thread_num(): called directly
// from within an enclosing region (Batch-Layer Norm runs a call per thread), the OpenMP
// functions describe that enclosing team, not the team of one the body runs as.

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <utility>

namespace normlab::kernels {

// Thread `index` of a team of `size`.
struct TeamSlot {
    std::size_t index = 0;
    std::size_t size = 1;

    // This thread's contiguous share [begin, end) of `count` items, the first count % size
    // threads one item more (OpenMP's static schedule).
    std::pair<std::size_t, std::size_t> share(std::size_t count) const {
        const std::size_t base = count / size, extra = count % size;
        const std::size_t begin = index * base + std::min(index, extra);
        return {begin, begin + base + (index < extra ? 1 : 0)};
    }
};

// body(i) for i in [0, n): in static chunks between the threads when `parallel`, else in order
// on this thread.
template <class F>
void parallel_for(std::size_t n, bool parallel, F&& body) {
    if (!parallel) {
        for (std::size_t i = 0; i < n; ++i)
            body(i);
        return;
    }
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i)
        body(i);
}

// f(slot) on every thread of a new team when `parallel`, else f(TeamSlot{}) once on this thread.
template <class F>
void parallel_region(bool parallel, F&& f) {
    if (!parallel) {
        f(TeamSlot{});
        return;
    }
#pragma omp parallel
    f(TeamSlot{std::size_t(omp_get_thread_num()), std::size_t(omp_get_num_threads())});
}

}  // namespace normlab::kernels
