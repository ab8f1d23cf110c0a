#pragma once
// Memory bandwidth as the kernels meet it: the STREAM triad with normal and with streaming
// stores, and from the two, the size of cache that the kernels should plan for on this machine
// (normlab::last_level_cache_bytes), measured rather than taken from what the CPU reports.

#include <cstddef>
#include <vector>

namespace normlab {

// a = b + 3·c over n floats, shared among the OpenMP threads in contiguous shares that start on
// a 64-byte line of a where a is 64-byte aligned. `streamed`: a's whole lines are written with
// streaming stores (one 64-byte store per line on AVX-512, as the kernels stream their outputs),
// which do not read a line before writing it and leave it out of the cache; the values of a
// partial line at either end take normal stores.
void triad(float* a, const float* b, const float* c, std::size_t n, bool streamed);

// One working set of the cache probe: two arrays of half of it each, and the median bandwidth
// (bytes read and written per second) of sweeps that go back and forth between them, each
// writing one array from the other (a triad with b = c), as each layer of a network reads the
// output of the layer before: with normal stores, and with streaming stores.
struct CacheProbePoint {
    std::size_t working_set_bytes = 0;
    double kept_bytes_per_second = 0, streamed_bytes_per_second = 0;
};

struct CacheProbe {
    std::vector<CacheProbePoint> points;
    std::size_t plan_bytes = 0;  // crossover_bytes(points, largest_bytes)
};

// Where streaming stores overtake normal ones: the working set at which the ratio streamed/kept
// crosses 1 between the last point where normal stores are faster and the first from which
// streaming stores stay faster (interpolated on a log scale), rounded down to a KiB; the first
// point's size when streaming is faster throughout; `largest_bytes` when normal stores are
// faster at the last point or there are no points. A cache plan of that size streams outputs
// from half of it on: those of passes whose input and output together reach it.
std::size_t crossover_bytes(const std::vector<CacheProbePoint>& points, std::size_t largest_bytes);

// Measures the points from 2 MiB up to `largest_bytes`, each 1.41 times the last, with the
// OpenMP threads the kernels would use here, both forms alternated (ABBA) so that a drift of the
// machine reaches both alike; stops once streaming stores were faster at three sizes in a row.
// Takes about a second where the crossover lies near 64 MiB, and for that time memory of
// `largest_bytes`.
CacheProbe probe_cache(std::size_t largest_bytes);

}  // namespace normlab
