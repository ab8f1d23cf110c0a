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

    // This thread's contiguous share [begin, end) of `count` items of unequal weight:
    // weight_before(i) is the total weight of items [0, i), non-decreasing from
    // weight_before(0) = 0. Each cut between two threads' shares goes where the running total
    // comes nearest to an equal part of the whole (weighted_cut), so a share weighs within the
    // heaviest item of an equal part; by count (share), a team of two given four blocks of 64
    // rows and one of 2 would take 192 rows and 66, by weight 128 and 130.
    template <class Weight>
    std::pair<std::size_t, std::size_t> share_by_weight(std::size_t count,
                                                        Weight&& weight_before) const;
};

// Where the shares of threads t - 1 and t of a team of `size` meet among `count` weighted items
// (TeamSlot::share_by_weight): the index i whose weight_before(i) is nearest t/size of the total
// (the lower of two equally near), 0 for t = 0 and `count` for t = size.
template <class Weight>
std::size_t weighted_cut(std::size_t count, std::size_t size, std::size_t t,
                         Weight&& weight_before) {
    if (t == 0) return 0;
    if (t >= size) return count;
    // Compared as size·weight against t·total, in integers: no rounding of the target.
    const std::size_t target = t * weight_before(count);
    std::size_t lo = 0, hi = count;  // the first i with size·weight_before(i) >= target
    while (lo < hi) {
        const std::size_t mid = lo + (hi - lo) / 2;
        if (size * weight_before(mid) < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return 0;
    const std::size_t below = target - size * weight_before(lo - 1);
    const std::size_t above = size * weight_before(lo) - target;
    return below <= above ? lo - 1 : lo;
}

template <class Weight>
std::pair<std::size_t, std::size_t> TeamSlot::share_by_weight(std::size_t count,
                                                              Weight&& weight_before) const {
    return {weighted_cut(count, size, index, weight_before),
            weighted_cut(count, size, index + 1, weight_before)};
}

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
