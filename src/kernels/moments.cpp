#include "kernels/moments.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>
#include <vector>

#include <omp.h>

#include "kernels/parallel.hpp"
#include "kernels/rows.hpp"
#include "normlab/runtime.hpp"

namespace normlab::kernels {
namespace {

// Per-call temporaries that grow with N·C, kept per calling thread and reused: freshly allocated,
// each would be mapped and page-faulted in again on every call. Each use has its own slot.
enum Slot {
    kPart1,
    kPart2,
    kRun1,
    kRun2,
    kRow1,
    kRow2,
    kTotal1,
    kTotal2,
    kTask1,
    kTask2,
    kShift,
    kSlots
};

// Zeroed by the threads, in parallel from kParallelMin values on (the per-run sums of a large
// tensor run to megabytes). The dense column partials are not zeroed here: each task zeroes its
// own block right before adding to it (column_sums_by_blocks).
void zero_fill(double* p, std::size_t n) {
    if (n < kParallelMin) {
        std::fill_n(p, n, 0.0);
        return;
    }
#pragma omp parallel for simd schedule(static)
    for (std::size_t i = 0; i < n; ++i)
        p[i] = 0.0;
}

// zeroed = false for a use that writes every value before reading it.
double* scratch(Slot slot, std::size_t n, bool zeroed = true) {
    thread_local std::vector<double> buffers[kSlots];
    auto& b = buffers[slot];
    if (b.size() < n) b.resize(n);
    double* p = b.data();
    if (zeroed) zero_fill(p, n);
    return p;
}

// What an array of the element type kept from call to call holds (typed_scratch).
enum class TypedSlot { kColumnShifts, kRunBetas, kSetOffsets };

// The calling thread's array of n values for `slot`, kept from call to call: a new one per call
// was allocated and faulted in again (800 KB of shifts on Batch-Layer Norm's batch branch on
// (2, 64, 56, 56)).
template <class T, TypedSlot slot>
T* typed_scratch(std::size_t n) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

// finish_moments of sets [begin, end), set k from s1[k], s2[k] and shift[k], each added to 0 as
// a set's sum over its columns starts from 0; with `residual`, each set's mean_residual too.
// (The shifts are of the element type, or in double holding one.)
template <class T, class Shift>
NORMLAB_ISA_CLONES void finish_columns(bool center, double inv_m, const Shift* shift,
                                       const double* s1, const double* s2, std::size_t begin,
                                       std::size_t end, T* mean, T* var, double* residual) {
    if (center) {
#pragma omp simd
        for (std::size_t k = begin; k < end; ++k)
            finish_moments(true, inv_m, double(shift[k]), 0.0 + s1[k], 0.0 + s2[k], mean[k],
                           var[k]);
        if (residual)
#pragma omp simd
            for (std::size_t k = begin; k < end; ++k)
                residual[k] = mean_residual(true, inv_m, double(shift[k]), 0.0 + s1[k], mean[k]);
    } else {
#pragma omp simd
        for (std::size_t k = begin; k < end; ++k)
            finish_moments(false, inv_m, 0.0, 0.0 + s1[k], 0.0 + s2[k], mean[k], var[k]);
        if (residual) std::fill(residual + begin, residual + end, 0.0);
    }
}

// out[k] = Σ over the set's one column of gamma·sums (gamma null = 1), for sets [begin, end):
// added to 0 as a set's sum over its columns starts from 0.
template <class T>
NORMLAB_ISA_CLONES void weigh_columns(const T* gamma, const double* sums, double* out,
                                      std::size_t begin, std::size_t end) {
    if (gamma) {
#pragma omp simd
        for (std::size_t k = begin; k < end; ++k)
            out[k] = 0.0 + double(gamma[k]) * sums[k];
    } else {
#pragma omp simd
        for (std::size_t k = begin; k < end; ++k)
            out[k] = 0.0 + sums[k];
    }
}

// Tensors from half the last-level cache on are written with streaming stores where a kernel
// writes whole runs of one channel (rows::affine_streamed, rows::apply_streamed): an input, its
// output and x̂ no longer fit in it together, so the output would be evicted before anyone reads
// it and the stores would only cost reads of the lines they replace. With a larger cache the
// output stays there for the layer that reads it next. (On an Intel Xeon VM with a 260 MiB L3,
// streamed from a fixed 16 MiB, BatchNorm's training forward on (32, 64, 56, 56) took 2.4-2.7 ms
// instead of 1.3-1.8; that was measured while the kernels still fenced after every run, which
// made streaming slower than it is now: see rows::stream_floats. Streamed, the layer's own time
// would now be about the same or shorter there, but its output would come from memory.)
template <class T>
bool streams(const NcsView& v) {
    return streams_output(v.size() * sizeof(T));
}

// Tensors under this size stay in the last-level cache from one call to the next: at a quarter of
// a 32 MiB cache, a pass's other tensors of the same size (y; or dy and dx) still fit beside
// them. Where the best order of work differs, kernels choose it by this: for data in cache, or
// for data coming from memory. A quarter of a smaller cache, but not more with a larger one: the
// in-cache orders were tuned on tensors of L2 to a few L3 sizes, and on an Intel Xeon VM with a
// 260 MiB L3, BatchNorm's backward on (32, 64, 56, 56) (25.7 MB) taken as in cache was 1.3-1.6x
// slower: its two stages read dy and x twice from an L3 of ~25 GB/s per core, where the fused
// pass reads them once.
constexpr std::size_t kCachedBytes = std::size_t{8} << 20;

bool stays_cached_bytes(std::size_t bytes) {
    return bytes < std::min(kCachedBytes, last_level_cache_bytes() / 4);
}

template <class T>
bool stays_cached(const NcsView& v) {
    return stays_cached_bytes(v.size() * sizeof(T));
}

// Runs of fewer bytes than this are walked in memory order by the passes over sets across the
// batch, from memory too, where longer runs go by channel (standardize, can_fuse_backward,
// splits_by_channel): by channel, a set's runs lie C·S values apart, and short runs from memory
// wait on each new run's lines, which no prefetcher follows. BatchNorm training forward from
// memory, 2 threads, Intel Xeon VM, memory order over channel order (interleaved calls, medians):
// runs of 49 values (196 bytes; (256, 512, 7, 7)) 0.34-0.38, one thread 0.33; 196 values
// ((128, 256, 14, 14)) 0.86-0.91, one thread 0.80; 256 values 0.98-1.17; 400 values 1.13-1.16;
// 784 values 1.10-1.20; 3136 values ((32, 64, 56, 56)) 1.14-1.32.
constexpr std::size_t kChannelOrderRunBytes = 1024;

template <class T>
bool short_runs(const NcsView& v) {
    return v.s * sizeof(T) < kChannelOrderRunBytes;
}

// How many rows after rows [n0, n1) a kernel walking them should prefetch: the next group's, up
// to `group` rows and not past row `end`, on tensors that do not stay cached; otherwise none.
// The backward kernels that walk a group of rows column by column (the fused rows backward, and
// BatchNorm's column sums on (N, C); its apply there, row by row from memory, prefetches each
// next row itself: rows::apply_columns_from_input) waited on memory for each new group's rows
// there; in cache the prefetches only take load slots (LayerNorm (1792, 512) backward was 7%
// slower).
template <class T>
std::size_t rows_ahead(const NcsView& v, std::size_t n1, std::size_t group, std::size_t end) {
    if (stays_cached<T>(v)) return 0;
    return std::min(group, end - n1);
}

// Whether the backward stages should stream dx: not when dx is written over the x̂ or input it
// is computed from (set_backward's spent storage), whose lines the same pass has just brought
// into the cache — a streaming store to a cached line first has to evict it.
template <class T>
bool streams_dx(const NcsView& v, const XhatSource<T>& src, const T* dx) {
    return streams<T>(v) && dx != src.xhat && dx != src.x;
}

// One channel's run of S values: x̂ and y, or dx, with the run's scalar coefficients.
template <class T>
void affine_run(bool stream, const T* x, std::size_t n, T m, T sc, T off, T g, T b, T* xhat, T* y) {
    // Only a lone output is streamed: interleaving two streamed outputs (x̂ and y) was up to
    // four times slower than normal stores on the development machine, depending on what the
    // process had allocated before.
    if (stream && !xhat)
        rows::affine_streamed(x, n, m, sc, off, g, b, y);
    else
        rows::affine(x, n, m, sc, off, &g, &b, 0, xhat, y);
}

// apply_run with x̂ from set k of an XhatSource, recomputed in registers when it is the input.
template <class T>
void apply_run_from(bool stream, const T* dy, const XhatSource<T>& src, std::size_t offset,
                    std::size_t n, std::size_t k, T cg, T g, T c1, T cx, T* dx);

template <class T>
void apply_run(bool stream, const T* dy, const T* xhat, std::size_t n, T cg, T g, T c1, T cx,
               T* dx) {
    if (stream)
        rows::apply_streamed(dy, xhat, n, cg, g, c1, cx, dx);
    else
        rows::apply(dy, xhat, n, cg, &g, 0, c1, cx, dx);
}

template <class T>
void apply_run_from(bool stream, const T* dy, const XhatSource<T>& src, std::size_t offset,
                    std::size_t n, std::size_t k, T cg, T g, T c1, T cx, T* dx) {
    if (src.xhat) {
        apply_run(stream, dy + offset, src.xhat + offset, n, cg, g, c1, cx, dx + offset);
    } else if (stream) {
        rows::apply_streamed_from_input(dy + offset, src.x + offset, src.shift[k], src.scale[k], n,
                                        cg, g, c1, cx, dx + offset);
    } else {
        rows::apply_from_input(dy + offset, src.x + offset, src.shift[k], src.scale[k], n, cg, &g,
                               0, c1, cx, dx + offset);
    }
}

// Σdy and Σdy·x̂ of one run of set k (grad_sums without gamma).
template <class T>
void run_grad_sums_from(const T* dy, const XhatSource<T>& src, std::size_t offset, std::size_t n,
                        std::size_t k, double& s1, double& s2) {
    if (src.xhat)
        rows::grad_sums(dy + offset, src.xhat + offset, static_cast<const T*>(nullptr), n, s1, s2);
    else
        rows::grad_sums_from_input(dy + offset, src.x + offset, src.shift[k], src.scale[k],
                                   static_cast<const T*>(nullptr), n, s1, s2);
}

bool dense_across_batch(const NcsView& v, const SetSpec& sets) {
    return sets.across_batch && v.s == 1;
}

// Whether each run of S > 1 values belongs to the set of its channel, one channel per set over
// the batch (BatchNorm): a sample's runs then go to the rows::runs_* kernels with the per-set
// arrays offset to the piece's first channel.
bool runs_are_sets_over_the_batch(const NcsView& v, const SetSpec& sets) {
    return sets.across_batch && sets.channels_per_set == 1 && v.s > 1;
}

// Whether the stage passes over sets across the batch with trailing dimensions give each thread
// the channels the forward gave it (grouped_sets takes a contiguous share of the sets), walking
// them sample by sample, instead of a contiguous share of memory: for tensors that do not stay in
// cache, whose forward goes by channel. The backward writes dx over the input the forward read.
// Split by memory after a forward by channel, BatchNorm's backward on 2 threads was at times
// slower than on one (AMD Zen 5, medians: (2, 64, 56, 56) 86 -> 38 us, (8, 256, 14, 14) 102 ->
// 51-76, (32, 256, 14, 14) 382 -> 252-292; x̂ stored and dx in a new array were never slow),
// presumably because half of the lines each thread wrote were still held by the other core (not
// measured: that machine had no cache-event counters). In cache the forward on several threads
// goes in memory order (standardize), and so do the stages after it. Not where the channels
// would split unevenly (fewer than eight per thread, and not a multiple of the threads).
template <class T>
bool splits_by_channel(const NcsView& v, const SetSpec& sets) {
    if (!sets.across_batch || v.s == 1 || stays_cached<T>(v) || short_runs<T>(v)) return false;
    const std::size_t spp = sets.sets_per_sample(v);
    const auto threads = std::size_t(omp_get_max_threads());
    return spp % threads == 0 || spp >= 8 * threads;
}

// Calls f(k, c0, offset) for every contiguous run of channels_per_set·S values that belong to
// one set: k is the set, c0 its first channel, offset the run's first element. Each thread
// fences its streamed stores once, after its share (rows::fence_streamed_stores).
template <class T, class F>
void for_each_block(const NcsView& v, const SetSpec& sets, F&& f) {
    const std::size_t spp = sets.sets_per_sample(v);
    const std::size_t blocks = v.n * spp;
    const std::size_t block_len = sets.channels_per_set * v.s;
    const bool by_channel = splits_by_channel<T>(v, sets);
    parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
        if (by_channel) {
            const auto [k0, k1] = team.share(spp);
            for (std::size_t n = 0; n < v.n; ++n)
                for (std::size_t k = k0; k < k1; ++k)
                    f(k, k * sets.channels_per_set, (n * spp + k) * block_len);
        } else {
            const auto [b0, b1] = team.share(blocks);
            for (std::size_t b = b0; b < b1; ++b) {
                const std::size_t kk = b % spp;
                f(sets.across_batch ? kk : b, kk * sets.channels_per_set, b * block_len);
            }
        }
        rows::fence_streamed_stores();
    });
}

// Sets that for_each_run_piece never splits by channel (per-sample sets, one channel each): runs
// in memory order, for passes whose split does not follow a SetSpec.
const SetSpec kMemoryOrder{};

// Calls f(r0, count) for runs [r0, r0 + count) of one sample, covering every run of S values of
// the [N][C][S] view once, each thread its share as for_each_block gives it: by channel (the
// share's channels, sample after sample) where splits_by_channel, else a contiguous share of
// memory cut at the samples' ends. Consecutive runs go to the rows::runs_* kernels together.
template <class T, class F>
void for_each_run_piece(const NcsView& v, const SetSpec& sets, F&& f) {
    const bool by_channel = splits_by_channel<T>(v, sets);
    parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
        if (by_channel) {
            const std::size_t cps = sets.channels_per_set;
            const auto [k0, k1] = team.share(sets.sets_per_sample(v));
            for (std::size_t n = 0; n < v.n; ++n)
                if (k1 > k0) f(n * v.c + k0 * cps, (k1 - k0) * cps);
        } else {
            const auto [r0, r1] = team.share(v.n * v.c);
            for (std::size_t r = r0; r < r1;) {
                const std::size_t stop = std::min(r1, (r / v.c + 1) * v.c);
                f(r, stop - r);
                r = stop;
            }
        }
    });
}

// A per-set coefficient for each of the runs [r0, r0 + count) of one sample: the per-set array
// itself where one set is one channel (offset to the piece), else the sets' values laid out per
// run in `storage`.
template <class T>
const T* per_run(const T* per_set, const NcsView& v, const SetSpec& sets, std::size_t r0,
                 std::size_t count, std::vector<T>& storage) {
    const std::size_t n = r0 / v.c, c0 = r0 % v.c;
    if (sets.channels_per_set == 1) return per_set + sets.set_of(n, c0, v);
    storage.resize(count);
    for (std::size_t j = 0; j < count; ++j)
        storage[j] = per_set[sets.set_of(n, c0 + j, v)];
    return storage.data();
}

// Σdy and Σdy·x̂ of the runs [r0, r0 + count) of one sample into s1[j], s2[j]: run_grad_sums_from
// run by run, the same bits.
template <class T>
void runs_grad_sums_from(const T* dy, const XhatSource<T>& src, const NcsView& v,
                         const SetSpec& sets, std::size_t r0, std::size_t count, double* s1,
                         double* s2) {
    const std::size_t at = r0 * v.s;
    std::vector<T> m_storage, sc_storage;
    const T* m = src.x ? per_run(src.shift, v, sets, r0, count, m_storage) : nullptr;
    const T* sc = src.x ? per_run(src.scale, v, sets, r0, count, sc_storage) : nullptr;
    rows::runs_grad_sums(dy + at, src.xhat ? src.xhat + at : nullptr, src.x ? src.x + at : nullptr,
                         m, sc, v.s, count, s1, s2);
}

// out[c] += w[c]·sums[n·C + c] (w null: 1) for n = 0, 1, … in order: the per-run sums of an
// [N][C] grid added up per channel in sample order, the channels of a sample in one loop over
// arrays that do not overlap, which vectorizes.
template <class T>
void add_rows(const double* __restrict sums, const NcsView& v, const T* __restrict w,
              double* __restrict out) {
    for (std::size_t n = 0; n < v.n; ++n) {
        const double* __restrict row = sums + n * v.c;
        if (w)
            for (std::size_t c = 0; c < v.c; ++c)
                out[c] += double(w[c]) * row[c];
        else
            for (std::size_t c = 0; c < v.c; ++c)
                out[c] += row[c];
    }
}

// Calls f(offset, rows, row_by_row) for the rows of a dense (N, C) input. In cache, for
// consecutive groups of a few rows, which the rows::*_columns kernels walk down the columns,
// loading each column's coefficients once per group. Tensors that do not stay in cache go a row
// at a time, each thread its contiguous share of rows in one call (row_by_row): a group's rows
// are written eight columns at a time, row after row, and from memory those interleaved streams
// (four rows read, four written) ran far below one row's (BatchNorm on (4096, 768), AMD Zen 5,
// 2 threads: inference 300-414 -> 189-197 us, training forward 656-737 -> 416-456), while in
// cache the coefficients loaded once per four rows are what counts (inference on (256, 1024)
// 15 -> 20 us and (1792, 512) 43-48 -> 58 a row at a time). A call per row cost about 20 ns a
// row there (AMD EPYC VM, 2 threads, (4096, 768), builds alternated: inference 481-517 ->
// 437-453 us, training forward 684-728 -> 667-705, backward 1053-1161 -> 952-998). The
// normalization (rows::affine_columns) takes a share's rows as four streams a quarter of the
// share apart (rows::down_columns): four rows far from each other, not a group's neighbours;
// measured on the AMD EPYC VM, not on Zen 5.
constexpr std::size_t kDenseRows = rows::kColumnGroupRows;

template <class T, class F>
void for_each_dense_rows(const NcsView& v, F&& f) {
    if (!stays_cached<T>(v)) {
        parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
            const auto [n0, n1] = team.share(v.n);
            if (n1 > n0) f(n0 * v.c, n1 - n0, true);
        });
        return;
    }
    const std::size_t groups = (v.n + kDenseRows - 1) / kDenseRows;
    parallel_for(groups, v.size() >= kParallelMin, [&](std::size_t grp) {
        const std::size_t n0 = grp * kDenseRows;
        f(n0 * v.c, std::min(kDenseRows, v.n - n0), false);
    });
}

// Per-set coefficients as the dense (N, C) kernels take them, per column: the sets' own array
// with one channel per set (BatchNorm), otherwise each set's value repeated over its channels
// in storage.
template <class T>
const T* per_column(const T* per_set, const NcsView& v, const SetSpec& sets,
                    std::vector<T>& storage) {
    const std::size_t cps = sets.channels_per_set;
    if (cps == 1) return per_set;
    storage.resize(v.c);
    for (std::size_t k = 0; k < sets.num_sets(v); ++k)
        std::fill_n(storage.begin() + std::ptrdiff_t(k * cps), cps, per_set[k]);
    return storage.data();
}

// Column sums of a dense (N, C) input, walked in memory order: rows are split into fixed blocks
// of kRowBlock (independent of the thread count), each block sums its rows into its own C
// partial sums a group of rows at a time (at most kFloatSteps, combined in float first), and
// the partials are added in block order.
constexpr std::size_t kRowBlock = 64;

// The end of the block of kRowBlock rows that row n is in.
std::size_t block_end(const NcsView& v, std::size_t n) {
    return std::min(v.n, (n / kRowBlock + 1) * kRowBlock);
}

template <class F>
void for_each_row_group(std::size_t begin, std::size_t end, std::size_t rows_per_group, F&& f) {
    for (std::size_t n = begin; n < end; n += rows_per_group)
        f(n, std::min(rows_per_group, end - n));
}

// Rows per group of the gradient column sums, which walk a group column block by column block
// and read dy and x̂ (or x) of every row of it at each block (the fused rows backward also writes
// dx there). Each block widens its float partial sums into double once per group, so longer
// groups spread that over more rows: eight instead of four made LayerNorm backward (256, 768)
// 10% faster and (1792, 512) 7%. With rows of a multiple of 4 KiB (C = 1024 floats), though, all
// of them fall into one set of an 8-way L1 cache, and eight rows of two arrays would evict each
// other at every block (up to 1.4× slower backward, depending only on where dy and x happen to
// lie relative to each other); those take four.
constexpr std::size_t kGradRowGroup = 8;

template <class T>
std::size_t grad_row_group(const NcsView& v) {
    return (v.c * sizeof(T)) % 4096 == 0 ? kGradRowGroup / 2 : kGradRowGroup;
}

// Adds the blocks' partial column sums in block order into out1 / out2 (either may be null),
// block by block over contiguous columns (the loop vectorizes and reads the partials in memory
// order), threads over column ranges.
void add_partials(const double* part1, const double* part2, std::size_t blocks, std::size_t c,
                  double* out1, double* out2) {
    constexpr std::size_t kColumns = 512;
    const std::size_t chunks = (c + kColumns - 1) / kColumns;
    parallel_for(chunks, blocks * c >= kParallelMin, [&](std::size_t chunk) {
        const std::size_t begin = chunk * kColumns, end = std::min(c, begin + kColumns);
        double a[kColumns] = {}, q[kColumns] = {};
        for (std::size_t b = 0; b < blocks; ++b) {
            const double* p1 = part1 + b * c;
#pragma omp simd
            for (std::size_t i = begin; i < end; ++i)
                a[i - begin] += p1[i];
            if (!part2) continue;
            const double* p2 = part2 + b * c;
#pragma omp simd
            for (std::size_t i = begin; i < end; ++i)
                q[i - begin] += p2[i];
        }
        for (std::size_t i = begin; i < end; ++i) {
            if (out1) out1[i] = a[i - begin];
            if (out2) out2[i] = q[i - begin];
        }
    });
}

// Stored x̂ of rows n0 .. of an (N, C) input. A recomputed x̂ is formed in registers, which
// needs a layout recomputes_xhat_in_registers accepts; the layers only hand such inputs over.
template <class T>
const T* stored_xhat_rows(const XhatSource<T>& src, const NcsView& v, std::size_t n0) {
    if (!src.xhat)
        throw std::logic_error(
            "normlab kernels: x̂ recomputed from the input is supported only "
            "where recomputes_xhat_in_registers() holds");
    return src.xhat + n0 * v.c;
}

// Whether x̂ of an (N, C) input recomputed from the input can be formed in registers: one set
// per row (per-sample sets) or one channel per set (BatchNorm across the batch).
template <class T>
bool direct_rows(const XhatSource<T>& src, const NcsView& v, const SetSpec* sets) {
    return src.x != nullptr && sets != nullptr && recomputes_xhat_in_registers(v, *sets);
}

// The bodies of kernels::inverse_std and kernels::all_finite (moments.hpp), in every ISA clone.
template <class T>
NORMLAB_ISA_CLONES void inverse_std_clones(const T* var, std::size_t n, double eps, T* inv_std) {
#pragma omp simd
    for (std::size_t k = 0; k < n; ++k)
        inv_std[k] = T(1.0 / std::sqrt(double(var[k]) + eps));
}

template <class T>
NORMLAB_ISA_CLONES bool all_finite_clones(const T* a, const T* b, std::size_t n) {
    T total = 0;
    if (b) {
#pragma omp simd reduction(+ : total)
        for (std::size_t k = 0; k < n; ++k)
            total += a[k] * T(0) + b[k] * T(0);
    } else {
#pragma omp simd reduction(+ : total)
        for (std::size_t k = 0; k < n; ++k)
            total += a[k] * T(0);
    }
    return total == T(0);
}

// The moments of sets of one value each, for sets [begin, end), in every ISA clone: each mean is
// the value plus 0 (as the shifted sums give it: −0 becomes +0), each variance exactly 0.
template <class T>
NORMLAB_ISA_CLONES void single_values(const T* x, std::size_t begin, std::size_t end, T* mean,
                                      T* var) {
#pragma omp simd
    for (std::size_t k = begin; k < end; ++k) {
        mean[k] = x[k] + T(0);
        var[k] = T(0);
    }
}

// The fewest rows whose columns are shifted by column_shifts (collect_moments).
constexpr std::size_t kColumnShiftRows = 32;

// set_shift of each column c in [begin, end) of `rows` rows (rows >= kShiftValues) of
// `columns` values (a column is a set of BatchNorm on (N, C) rows): the mean of its first
// kShiftValues values, in set_shift's order (row r with row r + 4, then those pairs), columns
// side by side so that the adds vectorize.
template <class T>
NORMLAB_ISA_CLONES void column_shifts(const T* x, std::size_t columns, std::size_t begin,
                                      std::size_t end, T* shift) {
    static_assert(kShiftValues == 8, "the pairs below are of eight rows");
    const auto row = [&](std::size_t r) { return x + r * columns; };
    const T eighth = T(1) / T(kShiftValues);
#pragma omp simd
    for (std::size_t c = begin; c < end; ++c) {
        const T p0 = row(0)[c] * eighth + row(4)[c] * eighth;
        const T p1 = row(1)[c] * eighth + row(5)[c] * eighth;
        const T p2 = row(2)[c] * eighth + row(6)[c] * eighth;
        const T p3 = row(3)[c] * eighth + row(7)[c] * eighth;
        shift[c] = (p0 + p1) + (p2 + p3);
    }
}

// Columns per range when a block's columns are split between threads: a multiple of the sixteen
// lanes, so every column takes the vector or the scalar path it takes in one range; so each
// column's sums are the same for any range. As many ranges as a multiple of the threads, of
// about equal width: at most kColumnRange wide (each row's piece of a range is then a contiguous
// 8 KB, which the prefetchers follow better than 2 KB: Batch-Layer Norm on (32, 64, 56, 56),
// whose batch branch sums 200k columns of 32 rows, took 6.8 instead of 8.8 ms forward and 14.4
// instead of 16.8 ms backward, medians of nine interleaved runs, AMD EPYC VM, 2 threads), and
// two or more per thread where they are kMinColumnRange wide or more then. (Halving ranges of
// 2048 down to 512 until every thread had two cut 1500 columns into 512, 512 and 476 for two
// threads; with equal ranges, BatchNorm on (100, 1500) took 64 -> 54 us forward and 90 -> 68
// backward, the two alternated call by call.)
constexpr std::size_t kColumnRange = 2048;
constexpr std::size_t kMinColumnRange = 512;

std::size_t column_range(std::size_t columns, std::size_t threads) {
    const auto ceil_div = [](std::size_t a, std::size_t b) { return (a + b - 1) / b; };
    std::size_t ranges = threads * ceil_div(ceil_div(columns, kColumnRange), threads);
    if (ranges < 2 * threads && columns >= 2 * threads * kMinColumnRange) ranges = 2 * threads;
    return std::max<std::size_t>(1, ceil_div(columns, ranges * rows::kLanes)) * rows::kLanes;
}

// Whether v is large enough for the threads and has fewer than `per_thread` of `items` for each.
bool few_per_thread(const NcsView& v, std::size_t items, std::size_t per_thread) {
    return v.size() >= kParallelMin && items < per_thread * std::size_t(omp_get_max_threads());
}

// Whether a tensor with trailing dimensions has fewer sets than threads (per-sample sets at a
// batch smaller than the team): a set's runs are then shared between them.
bool few_sets(const NcsView& v, std::size_t num_sets) {
    return v.s > 1 && few_per_thread(v, num_sets, 1);
}

// The blocks of kRowBlock rows of a dense (N, C) input.
std::size_t row_blocks(const NcsView& v) {
    return (v.n + kRowBlock - 1) / kRowBlock;
}

// Whether v has fewer blocks of kRowBlock rows than `per_thread` blocks for each thread.
// column_sums_by_blocks, given split_columns, splits the columns into ranges from
// per_thread = 2 on.
bool few_row_blocks(const NcsView& v, std::size_t per_thread) {
    return few_per_thread(v, row_blocks(v), per_thread);
}

// The column sums of a dense (N, C) input, block by block: rows are split into fixed blocks of
// kRowBlock, each block into groups of rows_per_group rows; group(n0, count, c0, c1, part1, part2)
// adds the sums of columns [c0, c1) of rows n0 .. n0 + count into its block's partials (pointers
// at column c0; part2 null without `second`), and the partials are added in block
// order into s1, s2 (each written whole; s2 all zeros without `second`). The threads share the
// blocks by their rows (TeamSlot::share_by_weight), as the last block may be short: by count,
// (258, 1024) gave one thread three blocks, 192 rows, and the other 66, and LayerNorm's and
// BatchNorm's backward took 1.6-1.8x as long as on (256, 1024) (AMD EPYC VM, 2 threads). With
// split_columns and fewer blocks than twice the threads (a small batch of many features), the
// columns are also split into ranges (column_range), so that every thread has work; each
// column's sums are the same either way. A single block's partials are the sums themselves:
// they go into s1, s2 directly (the same values: adding a partial to zero changes no bit),
// which spares a small batch of many columns (Batch-Layer Norm's batch branch: 200k columns on
// (2, 64, 56, 56)) two arrays of doubles the size of s1, s2 zeroed, written and read again.
// With done given and a single block, each task's sums go instead into its thread's scratch, in
// L1, and done(c0, c1, t1, t2) takes them right after the task (t1[i], t2[i] the sums of column
// c0 + i; t2 null without `second`), so that they are finished while still in that cache: s1, s2
// are then not written. Returns whether done took every column's sums; if not, they are in s1,
// s2 (several blocks of rows).
template <class Group, class Done = std::nullptr_t>
bool column_sums_by_blocks(const NcsView& v, std::size_t rows_per_group, bool second,
                           bool split_columns, double* s1, double* s2, Group&& group,
                           Done&& done = nullptr) {
    constexpr bool has_done = !std::is_same_v<std::decay_t<Done>, std::nullptr_t>;
    const std::size_t blocks = row_blocks(v);
    const auto threads = std::size_t(omp_get_max_threads());
    const auto rows_before = [&](std::size_t b) { return std::min(v.n, b * kRowBlock); };
    const bool split = split_columns && few_row_blocks(v, 2);
    const std::size_t range = split ? column_range(v.c, threads) : v.c;
    const std::size_t ranges = split ? (v.c + range - 1) / range : 1;
    // The values of tasks [0, task): task = block · ranges + range, shared between the threads
    // by this weight rather than by count, as the last block may be short.
    const auto values_before = [&](std::size_t task) {
        const std::size_t b = task / ranges, r = task % ranges;
        return rows_before(b) * v.c +
               (rows_before(b + 1) - rows_before(b)) * std::min(v.c, r * range);
    };
    const bool into_sums = blocks == 1 && s1 && (!second || s2);
    const bool to_done = has_done && into_sums;
    if (into_sums && !to_done && !second && s2) zero_fill(s2, v.c);
    // Each task zeroes its own partials right before it adds to them (on its thread, into its
    // cache) instead of all of them zeroed up front.
    double* part1 = into_sums ? s1 : scratch(kPart1, blocks * v.c, false);
    double* part2 = second ? (into_sums ? s2 : scratch(kPart2, blocks * v.c, false)) : nullptr;
    parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
        // Each thread walks its share from the last block to the first. The pass that follows
        // (the normalization, or dx) walks the same share forward, so it starts on the rows
        // read last, still in this core's cache; and this pass starts on the rows the layer
        // before wrote last. The partials, and so the sums, are the same in any order.
        const auto [first, end] = team.share_by_weight(blocks * ranges, values_before);
        double* task1 = to_done ? scratch(kTask1, range, false) : nullptr;
        double* task2 = to_done && second ? scratch(kTask2, range, false) : nullptr;
        for (std::size_t task = end; task-- > first;) {
            const std::size_t b = task / ranges, c0 = (task % ranges) * range;
            const std::size_t c1 = std::min(v.c, c0 + range);
            double* p1 = to_done ? task1 : part1 + b * v.c + c0;
            double* p2 = !part2 ? nullptr : to_done ? task2 : part2 + b * v.c + c0;
            std::fill(p1, p1 + (c1 - c0), 0.0);
            if (p2) std::fill(p2, p2 + (c1 - c0), 0.0);
            for_each_row_group(
                b * kRowBlock, block_end(v, b * kRowBlock), rows_per_group,
                [&](std::size_t n0, std::size_t count) { group(n0, count, c0, c1, p1, p2); });
            if constexpr (has_done)
                if (to_done) done(c0, c1, static_cast<const double*>(p1), p2);
        }
    });
    if (!into_sums) add_partials(part1, part2, blocks, v.c, s1, s2);
    return to_done;
}

// Σdy and Σdy·x̂ per column of a dense (N, C) input. per_row(n, x̂ of row n or null) runs first
// on every row of a group (once, with the group's first range of columns); it must not write
// what the column sums read (other ranges run at the same time). x̂ is formed from the input in
// registers where direct_rows allows; per_row is then given null and forms its row's x̂ from
// the input itself, as it is given null when there is no x̂ at all. With a weight per row or per
// column (x̂ formed in registers only) the sums are of g = w·dy instead of dy.
template <class T, class PerRow>
void dense_column_sums(const T* dy, const XhatSource<T>& xhat, const NcsView& v,
                       const SetSpec* sets, double* s1, double* s2, PerRow&& per_row,
                       const T* row_weight = nullptr, const T* column_weight = nullptr) {
    constexpr bool has_per_row = !std::is_same_v<std::decay_t<PerRow>, std::nullptr_t>;
    const bool direct = direct_rows(xhat, v, sets);
    if ((row_weight || column_weight) && !direct)
        throw std::logic_error("dense_column_sums: weights need x̂ formed from the input");
    column_sums_by_blocks(
        v, grad_row_group<T>(v), xhat.present(), true, s1, s2,
        [&](std::size_t n0, std::size_t count, std::size_t c0, std::size_t c1, double* part1,
            double* part2) {
            const std::size_t at = n0 * v.c + c0, width = c1 - c0;
            // The group's stored x̂ (null when formed from the input, or when there is none).
            const T* h = !direct && xhat.present() ? stored_xhat_rows(xhat, v, n0) : nullptr;
            if constexpr (has_per_row)
                if (c0 == 0)
                    for (std::size_t n = n0; n < n0 + count; ++n)
                        per_row(n, h ? h + (n - n0) * v.c : nullptr);
            if (direct) {
                const bool by_row = !sets->across_batch;
                const auto sums = [&](auto weighted) {
                    rows::column_grad_sums_from_input<T, decltype(weighted)::value>(
                        dy + at, xhat.x + at, count, v.c, width, by_row ? xhat.shift + n0 : nullptr,
                        by_row ? xhat.scale + n0 : nullptr, by_row ? nullptr : xhat.shift + c0,
                        by_row ? nullptr : xhat.scale + c0, part1, part2,
                        rows_ahead<T>(v, n0 + count, grad_row_group<T>(v), block_end(v, n0)),
                        row_weight ? row_weight + n0 : nullptr,
                        column_weight ? column_weight + c0 : nullptr);
                };
                rows::with_flag(row_weight || column_weight, sums);
                return;
            }
            rows::column_grad_sums(dy + at, h ? h + c0 : nullptr, count, v.c, width, part1, part2);
        });
}

// Sets spread over the batch (one run per sample and channel of a set) are written a group of
// consecutive sets at a time, sample by sample: each sample's runs of the group lie one after the
// other in memory. Set by set, the pass jumped from sample to sample after every run; with C·S
// a multiple of 4 KiB (BatchNorm on (8, 256, 14, 14)) the runs of all samples fall into the same
// L1 sets (BatchNorm's backward on (8, 256, 14, 14) is 6% faster in groups of eight; the
// same runs alone, walked in memory order, ~25%). A group's data must still be in cache when it is
// written, one pass after it was summed: groups take up to kGroupBytes of the input (and as much of
// dy). Runs of kLongRunBytes or more are long enough for the hardware prefetchers as they are, and
// their sets go one at a time (BatchNorm backward on (2, 64, 56, 56), runs of 12 KB, was 5–10%
// slower in pairs).
constexpr std::size_t kMaxSetsPerPass = 8;
constexpr std::size_t kGroupBytes = std::size_t{64} << 10;
constexpr std::size_t kLongRunBytes = std::size_t{4} << 10;

template <class T>
std::size_t sets_per_pass(const NcsView& v, const SetSpec& sets) {
    if (v.s * sizeof(T) >= kLongRunBytes) return 1;
    const std::size_t set_bytes = sets.set_size(v) * sizeof(T);
    return std::clamp<std::size_t>(kGroupBytes / set_bytes, 1, kMaxSetsPerPass);
}

// Per-sample sets (contiguous blocks) of a tensor that does not stay in cache are applied a
// group at a time in the backward while the next group is summed; a group takes kLookaheadBytes
// of the input or more, so the pass sums half a megabyte or more ahead of where it writes dx.
// Paired set with set, GroupNorm's and InstanceNorm's sets of 3–200 KB were 1.3–1.75× slower
// than LayerNorm's on the same data (docs/design.md). In cache a group of one set is as fast.
constexpr std::size_t kLookaheadBytes = std::size_t{512} << 10;
constexpr std::size_t kMaxLookaheadSets = 256;

// Sets whose dy and input (or x̂) fit in a core's cache together (core_cache_bytes) are reduced
// and then applied one at a time by the fused backward with trailing dimensions, the apply reading
// the set again from that cache, instead of pairing a group's apply with the next group's sums.
// On a 2-vCPU Intel Xeon VM (2 MiB L2 per core; 2 threads, each in turn with the paired pass in
// one process), set by set was 1.13-1.41x faster for LayerNorm, GroupNorm(32), InstanceNorm and
// RMSNorm on (32, 64, 56, 56) (LayerNorm's sets are 0.8 MB: 1.6 MB with dy), 1.08-1.19x on
// (8, 256, 14, 14), within 4% on (2, 64, 56, 56) but InstanceNorm's 1.07-1.19x; BatchNorm and
// Batch Renormalization on (32, 64, 56, 56) (sets of 32 runs, 0.8 MB) 1.05-1.22x. The forward
// keeps its pairing: set by set, BatchNorm's training forward on (32, 64, 56, 56) took 1.03-1.26x
// as long, the per-sample layers' training forward and inference up to 1.19x. Larger sets keep it
// too; it was faster from memory on AMD Zen 5 (1 MiB L2) than pairing set with set
// (per_sample_sets_per_pass), where set by set was not measured.
template <class T>
bool backward_set_by_set(const NcsView& v, const SetSpec& sets) {
    return 2 * sets.set_size(v) * sizeof(T) <= core_cache_bytes();
}

// Short sets with trailing dimensions (InstanceNorm's channels, GroupNorm's groups of a few
// short runs) can be taken a few consecutive runs at a time where they go set by set: the runs'
// sums side by side in one call (rows::runs_shifted_sums, rows::runs_grad_sums), then their
// normalization or dx in another (rows::runs_affine, rows::runs_apply), the same values as run by
// run. A call per run and a set's serial end (its lanes added into one total, a square root or
// the coefficients, before any of it is written) took InstanceNorm on (8, 256, 14, 14) (runs of
// 196 values) twice as long as GroupNorm(32) on the same data in the training forward, 1.3x in
// the backward; a chunk's sets end together.
// A chunk holds whole sets, up to kChunkBytes of each tensor (or one larger set), so that its
// second reading comes from the L1.
constexpr std::size_t kChunkBytes = std::size_t{16} << 10;
constexpr std::size_t kMaxChunkRuns = 16;
constexpr std::size_t kTinyRunBytes = 256;

template <class T>
std::size_t runs_per_chunk(const NcsView& v) {
    return std::clamp<std::size_t>(kChunkBytes / (v.s * sizeof(T)), 1, kMaxChunkRuns);
}

// Where chunks pay: for runs of up to kTinyRunBytes, whose per-run work is mostly overhead, and
// for sets of one run whose `inputs` tensors (x; or dy and x) stay in cache together. Elsewhere
// the sums of runs side by side read the L3 or memory more slowly than run by run. AMD EPYC VM
// (Zen 3, 32 MiB L3), 2 threads, chunks against the other order alternated call by call:
// InstanceNorm's backward on (8, 256, 14, 14) 0.78-0.82, (16, 256, 14, 14) 0.85-0.87, but
// (24, 256, 14, 14) 1.20 and (32, 256, 14, 14) 1.11-1.29 (dy and x no longer within a quarter
// of the L3), its training forward 0.70 and 0.76-0.78 on the first and last; from memory, runs
// of 49 values ((256, 512, 7, 7), 25.7 MB) InstanceNorm's training forward 0.59-0.73 and
// backward 0.66, GroupNorm(32)'s backward 0.88, LayerNorm's 0.92-0.94, runs of 64 values
// InstanceNorm's forward 0.70-0.89, but runs of 100 values 0.83-1.19 and of 196 1.03-1.58 (the
// paired pass out of cache), and GroupNorm(32)'s and LayerNorm's backward with sets of many runs
// of 196 values 1.23-1.43, also in cache ((32, 256, 14, 14)).
template <class T>
bool takes_chunks(const NcsView& v, const SetSpec& sets, std::size_t inputs) {
    if (runs_per_chunk<T>(v) == 1) return false;
    return v.s * sizeof(T) <= kTinyRunBytes ||
           (sets.channels_per_set == 1 && stays_cached_bytes(inputs * v.size() * sizeof(T)));
}

// Calls f(k0, k1) for the calling thread's share of the per-sample sets, in chunks of up to
// `sets_per_chunk` whole sets, each chunk within one sample.
template <class F>
void for_each_set_chunk(const TeamSlot& team, std::size_t num_sets, std::size_t sets_per_sample,
                        std::size_t sets_per_chunk, F&& f) {
    const auto [k0, k1] = team.share(num_sets);
    for (std::size_t k = k0; k < k1;) {
        const std::size_t stop =
            std::min({k1, k + sets_per_chunk, (k / sets_per_sample + 1) * sets_per_sample});
        f(k, stop);
        k = stop;
    }
}

template <class T>
std::size_t per_sample_sets_per_pass(const NcsView& v, const SetSpec& sets) {
    if (stays_cached<T>(v)) return 1;
    const std::size_t set_bytes = sets.set_size(v) * sizeof(T);
    return std::clamp<std::size_t>(kLookaheadBytes / set_bytes, 1, kMaxLookaheadSets);
}

// The calling thread's share of `count` sets (static_share) in groups of `group` (at most
// kMaxLookaheadSets), each group's sums taken in the pass that writes the group before it, each
// set's sums in an Acc: sum(k, acc) takes the sums of set k alone into acc (the share's first
// group); finish(g0, g1, accs) takes the sums of sets g0 .. g1 (accs[0] onwards) before their
// group is written; write(n, k, has_next, next) writes sample n's runs of set k and, when
// has_next, takes the sums of the same runs of set k + group (the next group) into next, sample
// 0's starting them and the others' added to them. The pass goes over the samples (0 .. samples),
// and within each over the group's sets, so every set's runs are still summed and written in sample
// order. Sets that are contiguous blocks take samples 1: each group's pass sums the group after it,
// so that reads from memory and writes overlap; rows take a group of a few sets, whose finishes
// (each a serial chain of a total, a square root and a division) overlap each other.
template <class Acc, class Sum, class Finish, class Write>
void grouped_sets_of(std::size_t count, std::size_t group, bool parallel, Sum&& sum,
                     Finish&& finish, Write&& write, std::size_t samples) {
    parallel_region(parallel, [&](const TeamSlot& team) {
        const auto [k0, k1] = team.share(count);
        Acc accs[kMaxLookaheadSets];
        for (std::size_t k = k0; k < std::min(k1, k0 + group); ++k)
            sum(k, accs[k - k0]);
        for (std::size_t g0 = k0; g0 < k1; g0 += group) {
            const std::size_t g1 = std::min(k1, g0 + group);
            finish(g0, g1, static_cast<const Acc*>(accs));
            for (std::size_t n = 0; n < samples; ++n)
                for (std::size_t k = g0; k < g1; ++k)
                    write(n, k, k + group < k1, accs[k - g0]);
        }
        rows::fence_streamed_stores();
    });
}

// A set's two sums in grouped_sets.
struct SetSums {
    double s1, s2;
};

// grouped_sets_of with a set's sums as two doubles, s1 and s2, that start from 0 and are finished
// set by set: sum(k, s1, s2) adds the sums of set k; finish(k, t1, t2) takes them; write(n, k,
// has_next, next1, next2) adds those of sample n's runs of set k + group.
template <class Sum, class Finish, class Write>
void grouped_sets(std::size_t count, std::size_t group, bool parallel, Sum&& sum, Finish&& finish,
                  Write&& write, std::size_t samples) {
    grouped_sets_of<SetSums>(
        count, group, parallel,
        [&](std::size_t k, SetSums& s) {
            s = SetSums{};
            sum(k, s.s1, s.s2);
        },
        [&](std::size_t g0, std::size_t g1, const SetSums* s) {
            for (std::size_t k = g0; k < g1; ++k)
                finish(k, s[k - g0].s1, s[k - g0].s2);
        },
        [&](std::size_t n, std::size_t k, bool has_next, SetSums& next) {
            if (n == 0) next = SetSums{};
            write(n, k, has_next, next.s1, next.s2);
        },
        samples);
}

// Normalizes set k of a per-sample SetSpec: one contiguous run of channels_per_set·S values,
// with the γ and β of its channels from g[0] and b[0], and on rows (S = 1) x̂ offset by `off` in y
// (offset_for_mean).
template <class T>
void normalize_set(const T* x, const NcsView& v, const SetSpec& sets, std::size_t k, T m, T sc,
                   T off, const T* g, const T* b, T* xhat, T* y) {
    const std::size_t cps = sets.channels_per_set;
    const std::size_t start = k * cps * v.s;
    T* h = xhat ? xhat + start : nullptr;
    if (v.s == 1) {
        rows::affine(x + start, cps, m, sc, off, g, b, 1, h, y + start);
        return;
    }
    const bool stream = streams<T>(v);
    for (std::size_t j = 0; j < cps; ++j)
        affine_run(stream, x + start + j * v.s, v.s, m, sc, T(0), g[j], b[j],
                   h ? h + j * v.s : nullptr, y + start + j * v.s);
}

// The body of kernels::betas_for_means (moments.hpp), in every ISA clone: one vectorized loop
// over the channels with a channel per set (BatchNorm), else one over each set's channels (the
// per-sample sets of a feature map, whose γ and β are per run).
template <class T>
NORMLAB_ISA_CLONES void betas_for_means_clones(std::size_t num_sets, std::size_t cps,
                                               const double* residual, const T* inv_std,
                                               const T* gamma, const T* beta, T* out) {
    const auto fill = [&](auto gamma_at, auto beta_at) __attribute__((always_inline)) {
        if (cps == 1) {
#pragma omp simd
            for (std::size_t c = 0; c < num_sets; ++c)
                out[c] = beta_for_mean(beta_at(c), residual[c], inv_std[c], gamma_at(c));
            return;
        }
        for (std::size_t k = 0; k < num_sets; ++k) {
            const double set_residual = residual[k];
            const T scale = inv_std[k];
#pragma omp simd
            for (std::size_t c = k * cps; c < (k + 1) * cps; ++c)
                out[c] = beta_for_mean(beta_at(c), set_residual, scale, gamma_at(c));
        }
    };
    const auto gamma_of = [&](std::size_t c) { return gamma[c]; };
    const auto beta_of = [&](std::size_t c) { return beta[c]; };
    const auto one = [](std::size_t) { return T(1); };
    const auto zero = [](std::size_t) { return T(0); };
    if (gamma && beta)
        fill(gamma_of, beta_of);
    else if (gamma)
        fill(gamma_of, zero);
    else if (beta)
        fill(one, beta_of);
    else
        fill(one, zero);
}

}  // namespace

template <class T>
void channel_sums(const T* dy, XhatArg<T> xhat, const NcsView& v, double* chan_sum_dy,
                  double* chan_sum_dy_xhat, const SetSpec* sets) {
    if (v.s == 1) {
        dense_column_sums(dy, xhat, v, sets, chan_sum_dy, chan_sum_dy_xhat, nullptr);
        return;
    }
    // Rows in memory order, then each channel's rows added in sample order (the runs of one
    // sample are a block of C partials to add_partials).
    const std::size_t runs = v.n * v.c;
    double* row1 = scratch(kRow1, runs);
    double* row2 = scratch(kRow2, runs);
    // (Without sets x̂ is stored, and runs_grad_sums_from does not look at the SetSpec.)
    for_each_run_piece<T>(v, kMemoryOrder, [&](std::size_t r0, std::size_t count) {
        runs_grad_sums_from(dy, xhat, v, sets ? *sets : kMemoryOrder, r0, count, row1 + r0,
                            row2 + r0);
    });
    add_partials(row1, row2, v.n, v.c, chan_sum_dy, chan_sum_dy_xhat);
}

template <class T>
void weighted_column_sums(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                          const T* row_weight, const T* column_weight, double* s1, double* s2) {
    if (v.s != 1 || !xhat.x || !recomputes_xhat_in_registers(v, sets) ||
        (row_weight && column_weight))
        throw std::logic_error(
            "weighted_column_sums: a dense (N, C) view with x̂ formed from the input, and one "
            "weight");
    dense_column_sums(dy, xhat, v, &sets, s1, s2, nullptr, row_weight, column_weight);
}

template <class T>
void collect_moments(const T* x, const NcsView& v, const SetSpec& sets, bool center, T* mean,
                     T* var, double* residual) {
    const std::size_t num_sets = sets.num_sets(v);
    const std::size_t cps = sets.channels_per_set;
    const double inv_m = 1.0 / double(sets.set_size(v));
    const auto finish = [&](std::size_t k, double shift, double s1, double s2) {
        finish_moments(center, inv_m, shift, s1, s2, mean[k], var[k]);
        if (residual) residual[k] = mean_residual(center, inv_m, shift, s1, mean[k]);
    };

    if (dense_across_batch(v, sets) && v.n == 1 && center && cps == 1) {
        // One row (Batch-Layer Norm's batch branch at a batch of one): sets of one value, whose
        // moments need no sums (the same values as the sums below give, at a fraction of the
        // time over 200k sets).
        for_each_set_range(num_sets, [&](std::size_t begin, std::size_t end) {
            single_values(x, begin, end, mean, var);
        });
        if (residual) std::fill_n(residual, num_sets, 0.0);  // each mean is its one value
        return;
    }
    if (dense_across_batch(v, sets)) {
        // Dense (N, C): blocks of rows in memory order, each into its own column partials.
        // Each set's shift repeated over the set's channels: set_shift of its channels in row
        // 0; with a channel per set (a column), the mean of its first rows where the batch has
        // kColumnShiftRows rows or more, else its value in row 0 (row 0 itself, no copy).
        // column_shifts reads the first rows once more, a pass over the whole input at a batch
        // of two: Batch-Layer Norm's batch branch on (2, 64, 56, 56), 200k columns of two rows,
        // took 1.1-1.2x its time forward with it (AMD EPYC VM, 2 threads). With its first value
        // as shift, a set of N values loses at most a factor N (no value lies more than
        // √(N − 1)·σ from the mean): 2 at a batch of two.
        const T* shift = x;
        if (center && cps == 1 && v.n >= kColumnShiftRows) {
            T* const shifts = typed_scratch<T, TypedSlot::kColumnShifts>(v.c);
            for_each_set_range(num_sets, [&](std::size_t begin, std::size_t end) {
                column_shifts(x, v.c, begin, end, shifts);
            });
            shift = shifts;
        } else if (!center || cps > 1) {
            T* const shifts = typed_scratch<T, TypedSlot::kColumnShifts>(v.c);
            for (std::size_t k = 0; k < num_sets; ++k)
                std::fill_n(shifts + k * cps, cps, center ? set_shift(x + k * cps, cps) : T(0));
            shift = shifts;
        }
        double* s1 = scratch(kTotal1, v.c, false);
        double* s2 = scratch(kTotal2, v.c, false);
        const auto group = [&](std::size_t n0, std::size_t count, std::size_t c0, std::size_t c1,
                               double* part1, double* part2) {
            rows::column_shifted_sums(x + n0 * v.c + c0, count, v.c, c1 - c0, shift + c0, part1,
                                      part2);
        };
        if (cps == 1) {
            // A batch of one block of rows (the few samples of Batch-Layer Norm's batch branch,
            // a column per channel and position) finishes each range of columns while its sums
            // are still in this core's L1, instead of in a second pass over arrays of doubles the
            // size of a row.
            const bool finished = column_sums_by_blocks(
                v, rows::kFloatSteps, true, true, s1, s2, group,
                [&](std::size_t c0, std::size_t c1, const double* t1, const double* t2) {
                    finish_columns(center, inv_m, shift + c0, t1, t2, 0, c1 - c0, mean + c0,
                                   var + c0, residual ? residual + c0 : nullptr);
                });
            if (!finished)
                for_each_set_range(num_sets, [&](std::size_t begin, std::size_t end) {
                    finish_columns(center, inv_m, shift, s1, s2, begin, end, mean, var, residual);
                });
            return;
        }
        column_sums_by_blocks(v, rows::kFloatSteps, true, true, s1, s2, group);
        parallel_for(num_sets, num_sets >= kParallelSets, [&](std::size_t k) {
            double t1 = 0, t2 = 0;
            for (std::size_t c = k * cps; c < (k + 1) * cps; ++c) {
                t1 += s1[c];
                t2 += s2[c];
            }
            finish(k, double(shift[k * cps]), t1, t2);
        });
        return;
    }

    const std::size_t block_len = cps * v.s;
    if (sets.across_batch) {
        // Sets spread over every sample: sum each run of S values in memory order (threads
        // stream through contiguous memory), each shifted by its set's set_shift, then add the
        // runs of a set in a fixed order.
        const std::size_t runs = v.n * v.c;
        double* run1 = scratch(kRun1, runs);
        double* run2 = scratch(kRun2, runs);
        // Each channel's shift is its set's (set k's at shift[k·cps]).
        double* const shift = scratch(kShift, v.c, false);
        for (std::size_t c = 0; c < v.c; ++c)
            shift[c] = !center        ? 0.0
                       : c % cps == 0 ? double(set_shift(x + (c / cps) * block_len, block_len))
                                      : shift[c - 1];
        for_each_run_piece<T>(v, kMemoryOrder, [&](std::size_t r0, std::size_t count) {
            rows::runs_shifted_sums(x + r0 * v.s, v.s, count, shift + r0 % v.c, run1 + r0,
                                    run2 + r0);
        });
        if (cps == 1) {
            // Set k is channel k: its runs added in sample order as below, by add_rows.
            double* s1 = scratch(kTotal1, v.c);
            double* s2 = scratch(kTotal2, v.c);
            add_rows<T>(run1, v, nullptr, s1);
            add_rows<T>(run2, v, nullptr, s2);
            for (std::size_t k = 0; k < num_sets; ++k)
                finish(k, shift[k], s1[k], s2[k]);
            return;
        }
        for (std::size_t k = 0; k < num_sets; ++k) {
            double s1 = 0, s2 = 0;
            for (std::size_t n = 0; n < v.n; ++n)
                for (std::size_t c = k * cps; c < (k + 1) * cps; ++c) {
                    s1 += run1[n * v.c + c];
                    s2 += run2[n * v.c + c];
                }
            finish(k, shift[k * cps], s1, s2);
        }
        return;
    }
    parallel_for(num_sets, v.size() >= kParallelMin, [&](std::size_t k) {
        const T* first = x + k * block_len;
        const double shift = center ? double(set_shift(first, block_len)) : 0.0;
        double s1 = 0, s2 = 0;
        rows::shifted_sums(first, block_len, shift, s1, s2);
        finish(k, shift, s1, s2);
    });
}

template <class T>
void normalize_affine(const T* x, const NcsView& v, const SetSpec& sets, const T* shift,
                      const T* scale, const T* offset, const T* gamma, const T* beta, T* xhat, T* y,
                      bool inference) {
    const bool stream = streams<T>(v);
    std::vector<T> ones, zeros_c, zeros_k;
    const T* g = or_constant(gamma, ones, v.c, T(1));
    const T* bt = or_constant(beta, zeros_c, v.c, T(0));

    if (dense_across_batch(v, sets)) {
        std::vector<T> m, sc, o;
        const T* m_col = per_column(shift, v, sets, m);
        const T* sc_col = per_column(scale, v, sets, sc);
        const T* off_col = offset ? per_column(offset, v, sets, o) : nullptr;
        for_each_dense_rows<T>(v, [&](std::size_t row, std::size_t count, bool row_by_row) {
            rows::affine_columns(x + row, count, v.c, v.c, m_col, sc_col, off_col, g, bt,
                                 xhat ? xhat + row : nullptr, y + row, row_by_row);
        });
        return;
    }
    if (runs_are_sets_over_the_batch(v, sets) && (!stream || inference)) {
        // BatchNorm's normalization, outputs not streamed: a sample's runs of the thread's share
        // in one call (rows::runs_affine), as in backward_apply. A call per run took 1.15-1.2x
        // as long in inference on (8, 256, 14, 14) (runs of 196 values; training forward 1.01-
        // 1.03x, where it is one of two passes), 1.02-1.03x on (2, 64, 56, 56) (2-vCPU Intel
        // Xeon VM, the two alternated call by call in one process).
        // Inference takes each thread's contiguous share of memory, where the layer before left
        // it, also where a training pass would go by channel (splits_by_channel, so that the
        // backward's threads meet the channels they had): BatchNorm inference on
        // (32, 64, 56, 56), outputs streamed, took 0.55-0.58 of the time by channel (AMD EPYC
        // VM, 2 threads, the two alternated call by call in one process).
        for_each_run_piece<T>(
            v, inference ? kMemoryOrder : sets, [&](std::size_t r0, std::size_t count) {
                const std::size_t c0 = r0 % v.c, at = r0 * v.s;
                if (!stream) {
                    rows::runs_affine(x + at, v.s, count, shift + c0, scale + c0,
                                      offset ? offset + c0 : nullptr, g + c0, bt + c0,
                                      xhat ? xhat + at : nullptr, y + at);
                    return;
                }
                for (std::size_t j = 0; j < count; ++j) {
                    const std::size_t c = c0 + j, base = at + j * v.s;
                    affine_run(true, x + base, v.s, shift[c], scale[c], offset ? offset[c] : T(0),
                               g[c], bt[c], xhat ? xhat + base : nullptr, y + base);
                }
                rows::fence_streamed_stores();
            });
        return;
    }
    const T* off = or_constant(offset, zeros_k, sets.num_sets(v), T(0));
    for_each_block<T>(v, sets, [&](std::size_t k, std::size_t c0, std::size_t start) {
        if (v.s == 1) {
            rows::affine(x + start, sets.channels_per_set, shift[k], scale[k], off[k], g + c0,
                         bt + c0, 1, xhat ? xhat + start : nullptr, y + start);
            return;
        }
        for (std::size_t j = 0; j < sets.channels_per_set; ++j) {
            const std::size_t base = start + j * v.s;
            affine_run(stream, x + base, v.s, shift[k], scale[k], off[k], g[c0 + j], bt[c0 + j],
                       xhat ? xhat + base : nullptr, y + base);
        }
    });
}

template <class T>
void standardize(const T* x, const NcsView& v, const SetSpec& sets, bool center, double eps,
                 const T* gamma, const T* beta, T* mean, T* var, T* inv_std, T* xhat, T* y,
                 T* mean_offset) {
    const bool stream = streams<T>(v);
    // Sets spread over the batch in two passes in memory order, statistics and then the
    // normalization: on dense (N, C) inputs, whose sets span every row; and on tensors with
    // trailing dimensions that stay in cache, when several threads share the work: each thread
    // then reads the share of memory it is given, which is where the layer before (its threads
    // writing contiguous shares) left it in this core's cache, while the fused pass below goes
    // by channel through every sample and took half of its reads from the other core's cache.
    // BatchNorm training forward, Intel Xeon VM, 2 threads, medians of interleaved runs:
    // (2, 64, 56, 56) 87-95 -> 73-77 us, (8, 256, 14, 14) 110-120 -> 100-117. On one thread the
    // fused pass stays: two passes over 1.6 MB were slower there (158-188 -> 190-205 us). From
    // memory, short runs go in memory order too (short_runs).
    const bool cached = stays_cached<T>(v);
    const bool in_memory_order =
        sets.across_batch && (v.s == 1 || (!cached && short_runs<T>(v)) ||
                              (cached && v.size() >= kParallelMin && omp_get_max_threads() > 1));
    if (in_memory_order) {
        // Sets over the batch: β of each channel takes its set's mean residual (beta_for_mean).
        const std::size_t num_sets = sets.num_sets(v);
        std::vector<double> residual(num_sets);
        collect_moments(x, v, sets, center, mean, var, residual.data());
        inverse_std(var, num_sets, eps, inv_std);
        std::vector<T> betas(v.c);
        betas_for_means(num_sets, sets.channels_per_set, residual.data(), inv_std, gamma, beta,
                        betas.data());
        normalize_affine(x, v, sets, mean, inv_std, static_cast<const T*>(nullptr), gamma,
                         static_cast<const T*>(betas.data()), xhat, y);
        return;
    }
    if (sets.across_batch) {
        // Each set's runs (one per sample and channel of the set) are summed in sample order and
        // normalized right after, while the set is still in this core's cache: x comes from
        // memory once instead of twice.
        std::vector<T> ones;
        const T* g = or_constant(gamma, ones, v.c, T(1));
        const std::size_t cps = sets.channels_per_set;
        const double inv_m = 1.0 / double(sets.set_size(v));
        const std::size_t num_sets = sets.num_sets(v);
        // β of each channel with its set's mean residual, set where the set is finished.
        std::vector<T> betas(v.c);
        T* const b = betas.data();
        // The sums of a thread's next group of sets are taken in the same pass that normalizes
        // the current group (rows::affine_summing_next, set k with set k + group), so reads from
        // memory and writes overlap. Each set's shift is taken where its sums start and kept
        // (shifts[k]) for the rest of its sums and its finish.
        double* const shifts = scratch(kShift, num_sets, false);
        const auto shift_of = [&](std::size_t k) {
            return shifts[k] = center ? double(set_shift(x + k * cps * v.s, cps * v.s)) : 0.0;
        };
        const bool stream_y = stream && !xhat && rows::aligned16(y) && v.s % 4 == 0;
        const std::size_t group = sets_per_pass<T>(v, sets);
        grouped_sets(
            num_sets, group, v.size() >= kParallelMin,
            [&](std::size_t k, double& s1, double& s2) {
                const double shift = shift_of(k);
                for (std::size_t n = 0; n < v.n; ++n)
                    for (std::size_t c = k * cps; c < (k + 1) * cps; ++c)
                        rows::shifted_sums(x + (n * v.c + c) * v.s, v.s, shift, s1, s2);
            },
            [&](std::size_t k, double t1, double t2) {
                finish_standardized(center, inv_m, eps, shifts[k], t1, t2, mean[k], var[k],
                                    inv_std[k]);
                const double residual = mean_residual(center, inv_m, shifts[k], t1, mean[k]);
                const std::size_t c0 = k * cps;
                betas_for_means(1, cps, &residual, inv_std + k, gamma ? gamma + c0 : nullptr,
                                beta ? beta + c0 : nullptr, b + c0);
            },
            [&](std::size_t n, std::size_t k, bool has_next, double& s1, double& s2) {
                // The next set's sums start with sample 0.
                const double next_shift =
                    !has_next ? 0.0 : (n == 0 ? shift_of(k + group) : shifts[k + group]);
                for (std::size_t c = k * cps; c < (k + 1) * cps; ++c) {
                    const std::size_t base = (n * v.c + c) * v.s;
                    T* h = xhat ? xhat + base : nullptr;
                    if (has_next)
                        rows::affine_summing_next(x + base, v.s, mean[k], inv_std[k], T(0), g + c,
                                                  b + c, 0, h, y + base, stream_y,
                                                  x + base + group * cps * v.s, next_shift, s1, s2);
                    else
                        affine_run(stream, x + base, v.s, mean[k], inv_std[k], T(0), g[c], b[c], h,
                                   y + base);
                }
            },
            v.n);
        return;
    }
    std::vector<T> ones, zeros;
    const T* g = or_constant(gamma, ones, v.c, T(1));
    const T* b = or_constant(beta, zeros, v.c, T(0));
    const std::size_t num_sets = sets.num_sets(v);
    const std::size_t block_len = sets.channels_per_set * v.s;
    const double inv_m = 1.0 / double(sets.set_size(v));
    // Each set (one contiguous run) is normalized right after its statistics, while it is
    // still in cache. With trailing dimensions, a thread's next set is summed in the same pass
    // (rows::affine_channels_summing_next), so reads from memory overlap the writes.
    // Each set's shift is taken where its sums are taken and kept (shifts[k]) for its finish.
    double* const shifts = scratch(kShift, num_sets, false);
    const auto shift_of = [&](std::size_t k) {
        return shifts[k] = center ? double(set_shift(x + k * block_len, block_len)) : 0.0;
    };
    const bool stream_y = stream && !xhat;
    const std::size_t cps = sets.channels_per_set, spp = sets.sets_per_sample(v);
    // With trailing dimensions γ and β are one value per run (a sample's channel), so each run's
    // β takes its set's mean residual (beta_for_mean) at a value per run, as over the batch. On
    // rows they vary within the set, and y takes it as an offset of x̂ (offset_for_mean), an
    // addition per value and an offset per set to form before the set is written. Training
    // forward with and without the offsets alternated call by call in one process (AMD EPYC VM,
    // 2 threads): LayerNorm 1.03-1.04x the time on (256, 1024), where the addition alone took
    // 1.01-1.02x (1.00-1.02x on (1792, 512), 0.99-1.01x on (4096, 768)); GroupNorm(32), whose
    // sets of 16 to 32 values take an offset each, 1.06-1.07x on (256, 1024), 1.10-1.11x on
    // (1792, 512), 0.99-1.06x on (4096, 768).
    const bool fold_mean = center && v.s > 1, offsets_mean = takes_mean_offsets(v, sets, center);
    T* const run_betas = fold_mean ? typed_scratch<T, TypedSlot::kRunBetas>(v.n * v.c) : nullptr;
    T* const set_offsets = !offsets_mean ? nullptr
                           : mean_offset ? mean_offset
                                         : typed_scratch<T, TypedSlot::kSetOffsets>(num_sets);
    const auto sum = [&](std::size_t k, double& s1, double& s2) {
        rows::shifted_sums(x + k * block_len, block_len, shift_of(k), s1, s2);
    };
    const auto finish = [&](std::size_t k, double s1, double s2) {
        finish_standardized(center, inv_m, eps, shifts[k], s1, s2, mean[k], var[k], inv_std[k],
                            set_offsets ? set_offsets + k : nullptr);
        if (!fold_mean) return;
        const double residual = mean_residual(center, inv_m, shifts[k], s1, mean[k]);
        const std::size_t c0 = (k % spp) * cps;
        betas_for_means(1, cps, &residual, inv_std + k, gamma ? gamma + c0 : nullptr,
                        beta ? beta + c0 : nullptr, run_betas + k * cps);
    };
    // The offset of set k's x̂ in y (rows).
    const auto set_offset = [&](std::size_t k) { return offsets_mean ? set_offsets[k] : T(0); };
    // The γ and β of set k's channels, from its first.
    const auto set_gamma = [&](std::size_t k) { return g + (k % spp) * cps; };
    const auto set_beta = [&](std::size_t k) {
        return fold_mean ? static_cast<const T*>(run_betas + k * cps) : b + (k % spp) * cps;
    };
    if constexpr (std::is_same_v<T, float>) {
        if (v.s == 1 && rows::short_set(block_len) && num_sets > v.n) {
            // Rows of several short sets (GroupNorm): a row at a time, four sets' totals
            // together (rows::standardize_short_sets).
            parallel_for(v.n, v.size() >= kParallelMin, [&](std::size_t n) {
                const std::size_t at = n * v.c, k0 = n * spp;
                rows::standardize_short_sets(x + at, spp, block_len, center, inv_m, eps, g, b,
                                             mean + k0, var + k0, inv_std + k0,
                                             offsets_mean ? set_offsets + k0 : nullptr,
                                             xhat ? xhat + at : nullptr, y + at);
            });
            return;
        }
    }
    if (v.s == 1) {
        // Rows: a few sets are finished together, then normalized while the next few are summed
        // (rows::affine_summing_next, set j of a group with set j of the next). The end of a
        // set's sums is serial (lanes added into one total, then a square root and a division)
        // and its normalization waits for it; with a few sets in flight those chains overlap
        // each other's vector work. The fused pass keeps both the adders (the sums) and the
        // loads and stores (the normalization) busy, and reads the next rows from memory while
        // the current ones are written.
        constexpr std::size_t kSetsInFlight = rows::kSetsInFlight;
        if constexpr (std::is_same_v<T, float>) {
            if (rows::lanes_only(block_len)) {
                // Sets of a multiple of sixteen floats (LayerNorm's rows): as the fused pass
                // below, but each next set's sums are kept as their lane pairs, and a group's
                // four sets are totalled and finished together (rows::finish_lane_pairs), the
                // same bits as set by set. Set by set, each set's totals were a chain of sixteen
                // dependent adds, then a square root and a division, about 12-22 ns a row.
                // LayerNorm's training forward on (1792, 512): one thread 237-255 -> 219-231 us,
                // two 117-126 -> 113-119; (4096, 768) 606-678 -> 607-651; GroupNorm(4) on
                // (1792, 512) 223-233 -> 216-222; (256, 1024) the same (AMD EPYC VM, the two
                // builds alternated). Each thread's share is one call
                // (rows::standardize_lane_sets), where a call per set cost about 100 cycles a
                // set. LayerNorm's forward (kernels::standardize of both builds alternated in one
                // process, the same bits; AMD EPYC VM, medians), one thread / two: (1792, 512)
                // 0.85 / 0.85-0.88 of the time (with x̂ stored 0.88 / 0.89), (256, 1024)
                // 0.88-0.91 / 0.88-0.89, (4096, 768) 0.92-0.94 / 0.88-0.94, (7168, 128)
                // 0.67-0.74 / 0.69-0.74; GroupNorm(6) on (1792, 576), sets of 96, 0.73.
                parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
                    const auto [k0, k1] = team.share(num_sets);
                    rows::standardize_lane_sets(x, k0, k1, block_len, spp, center, inv_m, eps, g, b,
                                                mean, var, inv_std,
                                                offsets_mean ? set_offsets : nullptr, xhat, y);
                });
                return;
            }
        }
        // Sets too short for vector sums (GroupNorm with a few channels per set on narrow rows)
        // gain nothing from fusing: they are summed after their partner is written.
        const bool fuse = block_len >= rows::kShortVector;
        grouped_sets(
            num_sets, kSetsInFlight, v.size() >= kParallelMin, sum, finish,
            [&](std::size_t, std::size_t k, bool has_next, double& s1, double& s2) {
                const std::size_t next = k + kSetsInFlight;
                if (!fuse || !has_next) {
                    normalize_set(x, v, sets, k, mean[k], inv_std[k], set_offset(k), set_gamma(k),
                                  set_beta(k), xhat, y);
                    if (has_next) sum(next, s1, s2);
                    return;
                }
                rows::affine_summing_next(x + k * block_len, block_len, mean[k], inv_std[k],
                                          set_offset(k), set_gamma(k), set_beta(k), 1,
                                          xhat ? xhat + k * block_len : nullptr, y + k * block_len,
                                          false, x + next * block_len, shift_of(next), s1, s2);
            },
            1);
        return;
    }
    if (few_sets(v, num_sets)) {
        // Fewer sets than threads (LayerNorm or RMSNorm at a batch of one): each set is summed
        // on one thread as below (the same bits), then its runs are normalized on every thread.
        // By set, one thread took a set's whole pass while the others waited. AMD EPYC VM, 2
        // threads, the two alternated call by call: LayerNorm on (1, 64, 56, 56) 0.81-0.83 of
        // the time, (1, 256, 4000) 0.72-0.73, (1, 64, 24, 24) 0.77-0.82.
        parallel_for(num_sets, num_sets > 1, [&](std::size_t k) {
            double s1 = 0, s2 = 0;
            sum(k, s1, s2);
            finish(k, s1, s2);
        });
        parallel_region(true, [&](const TeamSlot& team) {
            const auto [r0, r1] = team.share(v.n * v.c);
            for (std::size_t r = r0; r < r1; ++r) {
                const std::size_t c = r % v.c, k = (r / v.c) * spp + c / cps, at = r * v.s;
                affine_run(stream, x + at, v.s, mean[k], inv_std[k], T(0), g[c],
                           fold_mean ? run_betas[r] : b[c], xhat ? xhat + at : nullptr, y + at);
            }
            rows::fence_streamed_stores();
        });
        return;
    }
    if (cps == 1 && takes_chunks<T>(v, sets, 1)) {
        // One channel per set: a sample's consecutive sets a chunk at a time (takes_chunks).
        const std::size_t chunk = runs_per_chunk<T>(v);
        parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
            double s1[kMaxChunkRuns], s2[kMaxChunkRuns], residual[kMaxChunkRuns];
            for_each_set_chunk(team, num_sets, spp, chunk, [&](std::size_t k0, std::size_t k1) {
                const std::size_t count = k1 - k0, at = k0 * v.s, c0 = k0 % spp;
                for (std::size_t j = 0; j < count; ++j) {
                    shift_of(k0 + j);
                    s1[j] = s2[j] = 0;
                }
                rows::runs_shifted_sums(x + at, v.s, count, shifts + k0, s1, s2);
                // The chunk's sets finished together, as finish does set by set (the same bits),
                // their square roots and divisions in vectors, and their β′ in one loop: with
                // β′ set by set, InstanceNorm's training forward on (8, 256, 14, 14), 2048 sets
                // of 196 values, took 1.06x the time it took without β′ (medians of six
                // processes of each build alternated, 2 threads, AMD EPYC VM); like this,
                // 1.01-1.02x (docs/design.md, "Precision").
                finish_columns(center, inv_m, shifts + k0, s1, s2, 0, count, mean + k0, var + k0,
                               fold_mean ? residual : nullptr);
                inverse_std(var + k0, count, eps, inv_std + k0);
                if (fold_mean)
                    betas_for_means(count, 1, residual, inv_std + k0, gamma ? gamma + c0 : nullptr,
                                    beta ? beta + c0 : nullptr, run_betas + k0);
                rows::runs_affine(x + at, v.s, count, mean + k0, inv_std + k0,
                                  static_cast<const T*>(nullptr), g + c0, set_beta(k0),
                                  xhat ? xhat + at : nullptr, y + at);
            });
        });
        return;
    }
    if (stays_cached<T>(v)) {
        // In cache, each set is summed and then normalized while it is in this core's L1 or
        // L2. Normalizing a set while summing the next (below) was 10–50% slower there (medians
        // of InstanceNorm, GroupNorm(32) and LayerNorm training forward on (2, 64, 56, 56),
        // (4, 64, 56, 56), (8, 256, 14, 14) and (32, 256, 14, 14)), and 7–25% faster from
        // memory ((16, 64, 56, 56), 12.8 MB).
        parallel_for(num_sets, v.size() >= kParallelMin, [&](std::size_t k) {
            double s1 = 0, s2 = 0;
            sum(k, s1, s2);
            finish(k, s1, s2);
            normalize_set(x, v, sets, k, mean[k], inv_std[k], T(0), set_gamma(k), set_beta(k), xhat,
                          y);
        });
        return;
    }
    grouped_sets(
        num_sets, 1, v.size() >= kParallelMin, sum, finish,
        [&](std::size_t, std::size_t k, bool has_next, double& s1, double& s2) {
            if (!has_next) {
                normalize_set(x, v, sets, k, mean[k], inv_std[k], T(0), set_gamma(k), set_beta(k),
                              xhat, y);
                return;
            }
            const std::size_t start = k * block_len;
            rows::affine_channels_summing_next(x + start, v.s, cps, mean[k], inv_std[k],
                                               set_gamma(k), set_beta(k),
                                               xhat ? xhat + start : nullptr, y + start, stream_y,
                                               x + start + block_len, shift_of(k + 1), s1, s2);
        },
        1);
}

template <class T>
void backward_reduce(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                     const T* gamma, double* set_sum_g, double* set_sum_g_xhat, double* chan_sum_dy,
                     double* chan_sum_dy_xhat) {
    const std::size_t num_sets = sets.num_sets(v);
    const std::size_t cps = sets.channels_per_set;

    if (dense_across_batch(v, sets)) {
        // Written whole by channel_sums (r2 only with x̂; zeros without, as the sums of nothing).
        double* r1 = scratch(kTotal1, v.c, false);
        double* r2 = scratch(kTotal2, v.c, !xhat.present());
        channel_sums(dy, xhat, v, r1, xhat.present() ? r2 : nullptr, &sets);
        if (cps == 1) {
            for_each_set_range(num_sets, [&](std::size_t begin, std::size_t end) {
                weigh_columns(gamma, r1, set_sum_g, begin, end);
                if (set_sum_g_xhat) weigh_columns(gamma, r2, set_sum_g_xhat, begin, end);
            });
        } else {
            std::vector<T> ones;
            const T* g = or_constant(gamma, ones, v.c, T(1));
            parallel_for(num_sets, num_sets >= kParallelSets, [&](std::size_t k) {
                double a = 0, b = 0;
                for (std::size_t c = k * cps; c < (k + 1) * cps; ++c) {
                    a += double(g[c]) * r1[c];
                    b += double(g[c]) * r2[c];
                }
                set_sum_g[k] = a;
                if (set_sum_g_xhat) set_sum_g_xhat[k] = b;
            });
        }
        if (chan_sum_dy) std::copy_n(r1, v.c, chan_sum_dy);
        if (chan_sum_dy_xhat) std::copy_n(r2, v.c, chan_sum_dy_xhat);
        return;
    }
    std::vector<T> ones;
    const T* g = or_constant(gamma, ones, v.c, T(1));
    if (v.s == 1) {
        // Each set is a contiguous run of channels of one sample: its sums are taken row by row
        // in the same pass that adds the rows into the channel sums.
        // With x̂ formed from the input (one set per row), the row's x̂ comes from its input.
        const std::size_t spp = sets.sets_per_sample(v);
        dense_column_sums(
            dy, xhat, v, &sets, chan_sum_dy, chan_sum_dy_xhat, [&](std::size_t n, const T* h) {
                for (std::size_t kk = 0; kk < spp; ++kk) {
                    const std::size_t start = n * v.c + kk * cps;
                    const std::size_t k = n * spp + kk;
                    double a = 0, b = 0;
                    if (xhat.x)
                        rows::grad_sums_from_input(dy + start, xhat.x + start, xhat.shift[k],
                                                   xhat.scale[k], g + kk * cps, cps, a, b);
                    else
                        rows::grad_sums(dy + start, h ? h + kk * cps : nullptr, g + kk * cps, cps,
                                        a, b);
                    set_sum_g[k] = a;
                    if (set_sum_g_xhat) set_sum_g_xhat[k] = b;
                }
            });
        return;
    }

    // S > 1: one pass computes Σdy and Σdy·x̂ per row; sets and channels are sums of rows.
    const std::size_t rows_total = v.n * v.c;
    double* row1 = scratch(kRow1, rows_total);
    double* row2 = scratch(kRow2, rows_total);
    for_each_run_piece<T>(v, sets, [&](std::size_t r0, std::size_t count) {
        runs_grad_sums_from(dy, xhat, v, sets, r0, count, row1 + r0, row2 + r0);
    });
    std::fill(set_sum_g, set_sum_g + num_sets, 0.0);
    if (set_sum_g_xhat) std::fill(set_sum_g_xhat, set_sum_g_xhat + num_sets, 0.0);
    if (chan_sum_dy) std::fill(chan_sum_dy, chan_sum_dy + v.c, 0.0);
    if (chan_sum_dy_xhat) std::fill(chan_sum_dy_xhat, chan_sum_dy_xhat + v.c, 0.0);
    if (sets.across_batch && cps == 1) {
        // Set k is channel k (a set looked up and four outputs tested per run took 7.9 us of
        // BatchNorm's backward on (8, 256, 14, 14), add_rows 3.7).
        add_rows(row1, v, g, set_sum_g);
        if (set_sum_g_xhat) add_rows(row2, v, g, set_sum_g_xhat);
        if (chan_sum_dy) add_rows<T>(row1, v, nullptr, chan_sum_dy);
        if (chan_sum_dy_xhat) add_rows<T>(row2, v, nullptr, chan_sum_dy_xhat);
        return;
    }
    for (std::size_t n = 0; n < v.n; ++n) {
        for (std::size_t c = 0; c < v.c; ++c) {
            const std::size_t r = n * v.c + c;
            const std::size_t k = sets.set_of(n, c, v);
            set_sum_g[k] += double(g[c]) * row1[r];
            if (set_sum_g_xhat) set_sum_g_xhat[k] += double(g[c]) * row2[r];
            if (chan_sum_dy) chan_sum_dy[c] += row1[r];
            if (chan_sum_dy_xhat) chan_sum_dy_xhat[c] += row2[r];
        }
    }
}

template <class T>
void backward_apply(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                    const T* gamma, const T* coef_g, const T* coef_1, const T* coef_xhat, T* dx) {
    const bool stream = streams_dx(v, xhat, dx);
    std::vector<T> ones, zeros_1, zeros_x;
    const std::size_t num_sets = sets.num_sets(v);
    const T* g = or_constant(gamma, ones, v.c, T(1));
    const T* c1 = or_constant(coef_1, zeros_1, num_sets, T(0));
    const T* cx = or_constant(coef_xhat, zeros_x, num_sets, T(0));
    const bool reads_xhat = coef_xhat != nullptr && xhat.present();

    if (dense_across_batch(v, sets)) {
        std::vector<T> cg_storage, c1_storage, cx_storage;
        const T* cg = per_column(coef_g, v, sets, cg_storage);
        const T* c1c = per_column(c1, v, sets, c1_storage);
        const T* cxc = per_column(cx, v, sets, cx_storage);
        const bool direct = reads_xhat && direct_rows(xhat, v, &sets);
        for_each_dense_rows<T>(v, [&](std::size_t row, std::size_t count, bool row_by_row) {
            if (direct) {
                rows::apply_columns_from_input(dy + row, xhat.x + row, count, v.c, v.c, xhat.shift,
                                               xhat.scale, cg, g, c1c, cxc, dx + row, row_by_row);
                return;
            }
            const T* h = reads_xhat ? stored_xhat_rows(xhat, v, row / v.c) : nullptr;
            rows::apply_columns(dy + row, h, count, v.c, v.c, cg, g, c1c, cxc, dx + row,
                                row_by_row);
        });
        return;
    }
    if (runs_are_sets_over_the_batch(v, sets) && !stream && reads_xhat) {
        // BatchNorm's stage 4 after stage 3 (in cache): a sample's runs of the thread's share in
        // one call (rows::runs_apply). Run by run, a call per run of 196 values took 1.1-1.14x
        // as long on (8, 256, 14, 14) (2-vCPU Intel Xeon VM, the two alternated call by call in
        // one process; (2, 64, 56, 56), runs of 3136 values, 1.01-1.03x).
        for_each_run_piece<T>(v, sets, [&](std::size_t r0, std::size_t count) {
            const std::size_t c0 = r0 % v.c, at = r0 * v.s;
            rows::runs_apply(dy + at, xhat.xhat ? xhat.xhat + at : nullptr,
                             xhat.x ? xhat.x + at : nullptr, xhat.x ? xhat.shift + c0 : nullptr,
                             xhat.x ? xhat.scale + c0 : nullptr, v.s, count, coef_g + c0, g + c0,
                             c1 + c0, cx + c0, dx + at);
        });
        return;
    }
    for_each_block<T>(v, sets, [&](std::size_t k, std::size_t c0, std::size_t start) {
        if (v.s == 1) {
            if (reads_xhat && xhat.x)
                rows::apply_from_input(dy + start, xhat.x + start, xhat.shift[k], xhat.scale[k],
                                       sets.channels_per_set, coef_g[k], g + c0, 1, c1[k], cx[k],
                                       dx + start);
            else
                rows::apply(dy + start, reads_xhat ? xhat.xhat + start : nullptr,
                            sets.channels_per_set, coef_g[k], g + c0, 1, c1[k], cx[k], dx + start);
            return;
        }
        for (std::size_t j = 0; j < sets.channels_per_set; ++j) {
            const std::size_t base = start + j * v.s;
            if (reads_xhat)
                apply_run_from(stream, dy, xhat, base, v.s, k, coef_g[k], g[c0 + j], c1[k], cx[k],
                               dx);
            else
                apply_run(stream, dy + base, static_cast<const T*>(nullptr), v.s, coef_g[k],
                          g[c0 + j], c1[k], cx[k], dx + base);
        }
    });
}

bool recomputes_xhat_in_registers(const NcsView& v, const SetSpec& sets) {
    if (v.s > 1) return true;
    return sets.across_batch ? sets.channels_per_set == 1 : sets.sets_per_sample(v) == 1;
}

template <class T>
bool can_fuse_backward(const NcsView& v, const SetSpec& sets) {
    // Fused, a set over the batch is read run by run, one sample's run after another's, C·S
    // values apart; in cache the stages' passes in memory order were faster (BatchNorm backward
    // on (32, 256, 14, 14) 1.6×, (16, 256, 14, 14) and (16, 128, 28, 28) 1.2×, (8, 256, 14, 14)
    // 1.15×, min of interleaved runs), while from memory the fused pass reads dy and x once.
    if (!sets.across_batch) return true;
    return v.s > 1 && !stays_cached<T>(v) && !short_runs<T>(v);
}

bool dx_may_overwrite_xhat(const NcsView& v, const SetSpec& sets, bool stored) {
    // Per-sample sets on rows with x̂ stored are applied row by row before the column sums read
    // the group's x̂ again; every other path reads each value for the last time where it writes
    // its dx (or reduces everything before it applies).
    if (v.s == 1 && !sets.across_batch) return !stored && recomputes_xhat_in_registers(v, sets);
    return true;
}

template <class T>
void backward_fused(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                    const T* gamma, const T* coef_g, const SetCoefficients<T>& coefficients, T* dx,
                    double* chan_sum_dy, double* chan_sum_dy_xhat) {
    const bool stream = streams_dx(v, xhat, dx);
    std::vector<T> ones;
    const T* g = or_constant(gamma, ones, v.c, T(1));
    const std::size_t cps = sets.channels_per_set;
    const double inv_m = 1.0 / double(sets.set_size(v));

    if (v.s == 1 && direct_rows(xhat, v, &sets)) {
        // One set per row, x̂ formed from the input in registers. Row n's coefficients from its
        // sums over the whole row; then rows n0 .. n0 + count (coefficients from c1s[0], cxs[0]
        // on) applied over columns [c0, c1) while the same pass takes their column sums.
        const auto row_coefficients = [&](std::size_t n, T& c1, T& cx) {
            double a = 0, b = 0;
            rows::grad_sums_from_input(dy + n * v.c, xhat.x + n * v.c, xhat.shift[n], xhat.scale[n],
                                       g, v.c, a, b);
            coefficients(n, a * inv_m, b * inv_m, c1, cx);
        };
        const auto apply_group = [&](std::size_t n0, std::size_t count, std::size_t c0,
                                     std::size_t c1, const T* c1s, const T* cxs, double* part1,
                                     double* part2) {
            const std::size_t at = n0 * v.c + c0;
            rows::apply_rows_summing_columns(
                dy + at, xhat.x + at, count, v.c, c1 - c0, xhat.shift + n0, xhat.scale + n0,
                coef_g + n0, g + c0, c1s, cxs, dx + at, part1, part2,
                rows_ahead<T>(v, n0 + count, grad_row_group<T>(v), block_end(v, n0)));
        };
        if (few_row_blocks(v, 1)) {
            // Fewer blocks of rows than threads (a small batch of wide rows): every row's
            // coefficients first, the rows shared between the threads, then the groups applied
            // and summed by ranges of columns (the same sums: each column is summed alone).
            // Fused, a group is reduced over whole rows before it is applied, so a block of rows
            // was one thread's work, and LayerNorm's backward on (32, 4096) took longer on 2
            // threads than on one. AMD EPYC VM, 2 threads, the two builds alternated:
            // (32, 4096) 68-69 -> 42 us, (64, 2048) 75-79 -> 50-51, (8, 8192) 55 -> 45; with two
            // blocks, one each, the extra pass cost what the balance gave ((100, 1024) 38 ->
            // 39-40 us), so those stay fused.
            std::vector<T> coef_1(v.n), coef_xhat(v.n);  // under 64 rows per thread
            parallel_for(v.n, true,
                         [&](std::size_t n) { row_coefficients(n, coef_1[n], coef_xhat[n]); });
            column_sums_by_blocks(v, grad_row_group<T>(v), true, true, chan_sum_dy,
                                  chan_sum_dy_xhat,
                                  [&](std::size_t n0, std::size_t count, std::size_t c0,
                                      std::size_t c1, double* part1, double* part2) {
                                      apply_group(n0, count, c0, c1, coef_1.data() + n0,
                                                  coef_xhat.data() + n0, part1, part2);
                                  });
            return;
        }
        // Each group's rows are reduced, then applied together. Not split by columns: each
        // group's rows are applied in place after their sums. The group's row sums are one call,
        // four rows' totals side by side (rows::rows_grad_sums_from_input, the same bits as a call
        // per row): LayerNorm's backward, both alternated in one process (AMD EPYC VM, medians),
        // 2 threads / 1: (1792, 512) 0.98-0.99 / 0.97-0.99 of the time, (4096, 768) 0.94-0.95 /
        // 0.97-0.99, (256, 1024) 0.99-1.00 / 0.98-1.00.
        column_sums_by_blocks(v, grad_row_group<T>(v), true, false, chan_sum_dy, chan_sum_dy_xhat,
                              [&](std::size_t n0, std::size_t count, std::size_t, std::size_t,
                                  double* part1, double* part2) {
                                  T coef_1[kGradRowGroup], coef_xhat[kGradRowGroup];
                                  double sum_g[kGradRowGroup], sum_g_xhat[kGradRowGroup];
                                  rows::rows_grad_sums_from_input(
                                      dy + n0 * v.c, xhat.x + n0 * v.c, count, v.c, xhat.shift + n0,
                                      xhat.scale + n0, g, v.c, sum_g, sum_g_xhat);
                                  for (std::size_t n = n0; n < n0 + count; ++n)
                                      coefficients(n, sum_g[n - n0] * inv_m,
                                                   sum_g_xhat[n - n0] * inv_m, coef_1[n - n0],
                                                   coef_xhat[n - n0]);
                                  apply_group(n0, count, 0, v.c, coef_1, coef_xhat, part1, part2);
                              });
        return;
    }
    if (v.s == 1) {
        // Rows with x̂ stored: each row's sets are reduced and applied as the row's block adds it
        // into the column sums behind dγ and dβ, a few sets reduced before they are applied:
        // reduced and applied one by one, the loads of a set's dy and x̂ came right after the
        // stores of the set before, and where dx lies a multiple of 4 KiB (plus a little) from
        // dy or x̂ the core takes those loads for dependent on the stores (4 KiB aliasing).
        const std::size_t spp = sets.sets_per_sample(v);
        if constexpr (std::is_same_v<T, float>) {
            if (rows::short_set(cps) && xhat.xhat) {
                // Short sets (GroupNorm(32) on 256–2048 channels): a chunk of a row's sets is
                // reduced, four sets' totals at a time, then applied, without a call per set
                // (rows::grad_sums_short_sets, rows::apply_short_sets).
                constexpr std::size_t kChunk = 64;
                dense_column_sums(
                    dy, xhat, v, &sets, chan_sum_dy, chan_sum_dy_xhat,
                    [&](std::size_t n, const T* h) {
                        for (std::size_t kk0 = 0; kk0 < spp; kk0 += kChunk) {
                            const std::size_t count = std::min(kChunk, spp - kk0);
                            const std::size_t at = kk0 * cps, k0 = n * spp + kk0;
                            double sum_g[kChunk], sum_g_xhat[kChunk];
                            T coef_1[kChunk], coef_xhat[kChunk];
                            rows::grad_sums_short_sets(dy + n * v.c + at, h + at, g + at, count,
                                                       cps, sum_g, sum_g_xhat);
                            for (std::size_t kk = 0; kk < count; ++kk)
                                coefficients(k0 + kk, sum_g[kk] * inv_m, sum_g_xhat[kk] * inv_m,
                                             coef_1[kk], coef_xhat[kk]);
                            rows::apply_short_sets(dy + n * v.c + at, h + at, g + at, count, cps,
                                                   coef_g + k0, coef_1, coef_xhat,
                                                   dx + n * v.c + at);
                        }
                    });
                return;
            }
        }
        constexpr std::size_t kSetsInFlight = 8;
        dense_column_sums(
            dy, xhat, v, &sets, chan_sum_dy, chan_sum_dy_xhat, [&](std::size_t n, const T* h) {
                for (std::size_t kk0 = 0; kk0 < spp; kk0 += kSetsInFlight) {
                    const std::size_t kk1 = std::min(spp, kk0 + kSetsInFlight);
                    T coef_1[kSetsInFlight], coef_xhat[kSetsInFlight];
                    for (std::size_t kk = kk0; kk < kk1; ++kk) {
                        double a = 0, b = 0;
                        rows::grad_sums(dy + n * v.c + kk * cps, h + kk * cps, g + kk * cps, cps, a,
                                        b);
                        coefficients(n * spp + kk, a * inv_m, b * inv_m, coef_1[kk - kk0],
                                     coef_xhat[kk - kk0]);
                    }
                    for (std::size_t kk = kk0; kk < kk1; ++kk) {
                        const std::size_t start = n * v.c + kk * cps;
                        rows::apply(dy + start, h + kk * cps, cps, coef_g[n * spp + kk],
                                    g + kk * cps, 1, coef_1[kk - kk0], coef_xhat[kk - kk0],
                                    dx + start);
                    }
                }
            });
        return;
    }

    // S > 1: per set, Σdy and Σdy·x̂ of each of its runs (kept for the channel sums), the set's
    // sums in sample order, then the set is applied (x̂ of each run recomputed again there when
    // it comes from the input: a run is small, a set may not fit in cache).
    const std::size_t num_sets = sets.num_sets(v);
    const std::size_t spp = sets.sets_per_sample(v);
    const std::size_t runs = v.n * v.c;
    double* row1 = scratch(kRow1, runs);
    double* row2 = scratch(kRow2, runs);
    // The runs of set k in sample order, then channel order: f(run, channel).
    const std::size_t samples = sets.across_batch ? v.n : 1;
    // Set k's first run and its channel.
    const auto first_run = [&](std::size_t k) -> std::pair<std::size_t, std::size_t> {
        if (sets.across_batch) return {k * cps, k * cps};
        const std::size_t c0 = (k % spp) * cps;
        return {(k / spp) * v.c + c0, c0};
    };
    const auto for_each_run = [&](std::size_t k, auto&& f) {
        const auto [r0, c0] = first_run(k);
        for (std::size_t dn = 0; dn < samples; ++dn)
            for (std::size_t dc = 0; dc < cps; ++dc)
                f(r0 + dn * v.c + dc, c0 + dc);
    };
    const bool stream_dx = stream && rows::aligned16(dx) && v.s % 4 == 0;
    // Set k's totals from its runs' sums in row1, row2, added in run order, each weighted by γ
    // of its channel: the order every path adds them in.
    const auto add_run_totals = [&](std::size_t k, double& a, double& b) {
        for_each_run(k, [&](std::size_t r, std::size_t c) {
            a += double(g[c]) * row1[r];
            b += double(g[c]) * row2[r];
        });
    };
    const auto sum_set = [&](std::size_t k, double& a, double& b) {
        for_each_run(k, [&](std::size_t r, std::size_t) {
            run_grad_sums_from(dy, xhat, r * v.s, v.s, k, row1[r], row2[r]);
        });
        add_run_totals(k, a, b);
    };
    if (!sets.across_batch && few_sets(v, num_sets)) {
        // Fewer sets than threads (LayerNorm or RMSNorm at a batch of one): every run's sums
        // on every thread, each set's totals added in run order as the passes below add them
        // (the same bits), then the runs applied on every thread, where one thread took each
        // set. AMD EPYC VM, 2 threads, alternated call by call: LayerNorm on (1, 64, 56, 56)
        // 0.66-0.72 of the time, (1, 256, 4000) 0.52, (1, 64, 24, 24) 0.87-0.90. (While this VM
        // gives its second vCPU a fraction of a core, as it does for minutes at a time, a split
        // between two threads takes up to twice as long as one thread: there 1.9-2.3x.)
        const auto set_of_run = [&](std::size_t r) { return (r / v.c) * spp + (r % v.c) / cps; };
        parallel_region(true, [&](const TeamSlot& team) {
            const auto [r0, r1] = team.share(runs);
            for (std::size_t r = r0; r < r1; ++r)
                run_grad_sums_from(dy, xhat, r * v.s, v.s, set_of_run(r), row1[r], row2[r]);
        });
        std::vector<T> set_coef_1(num_sets), set_coef_xhat(num_sets);
        for (std::size_t k = 0; k < num_sets; ++k) {
            double a = 0, b = 0;
            add_run_totals(k, a, b);
            coefficients(k, a * inv_m, b * inv_m, set_coef_1[k], set_coef_xhat[k]);
        }
        parallel_region(true, [&](const TeamSlot& team) {
            const auto [r0, r1] = team.share(runs);
            for (std::size_t r = r0; r < r1; ++r) {
                const std::size_t k = set_of_run(r);
                apply_run_from(stream, dy, xhat, r * v.s, v.s, k, coef_g[k], g[r % v.c],
                               set_coef_1[k], set_coef_xhat[k], dx);
            }
            rows::fence_streamed_stores();
        });
        add_partials(row1, row2, v.n, v.c, chan_sum_dy, chan_sum_dy_xhat);
        return;
    }
    if (backward_set_by_set<T>(v, sets) && !sets.across_batch && !stream &&
        takes_chunks<T>(v, sets, 2)) {
        // Per-sample sets: a sample's consecutive sets a chunk at a time (takes_chunks), all of
        // a set's runs in one chunk.
        const std::size_t sets_per_chunk = std::max<std::size_t>(1, runs_per_chunk<T>(v) / cps);
        const std::size_t chunk_runs = sets_per_chunk * cps;
        parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
            // Per run: its set's shift and scale (x̂ from the input) and coefficients.
            std::vector<T> m(chunk_runs), sc(chunk_runs), cg(chunk_runs), c1(chunk_runs),
                cx(chunk_runs);
            for_each_set_chunk(
                team, num_sets, spp, sets_per_chunk, [&](std::size_t k0, std::size_t k1) {
                    const std::size_t r0 = k0 * cps, count = (k1 - k0) * cps, at = r0 * v.s;
                    const std::size_t c0 = (k0 % spp) * cps;
                    for (std::size_t j = 0; j < count && xhat.x; ++j) {
                        m[j] = xhat.shift[k0 + j / cps];
                        sc[j] = xhat.scale[k0 + j / cps];
                    }
                    rows::runs_grad_sums(dy + at, xhat.xhat ? xhat.xhat + at : nullptr,
                                         xhat.x ? xhat.x + at : nullptr, m.data(), sc.data(), v.s,
                                         count, row1 + r0, row2 + r0);
                    for (std::size_t k = k0; k < k1; ++k) {
                        double a = 0, b = 0;
                        for (std::size_t dc = 0; dc < cps; ++dc) {
                            const std::size_t r = k * cps + dc, c = (k % spp) * cps + dc;
                            a += double(g[c]) * row1[r];
                            b += double(g[c]) * row2[r];
                        }
                        const std::size_t j0 = (k - k0) * cps;
                        coefficients(k, a * inv_m, b * inv_m, c1[j0], cx[j0]);
                        std::fill_n(cg.begin() + std::ptrdiff_t(j0), cps, coef_g[k]);
                        std::fill_n(c1.begin() + std::ptrdiff_t(j0 + 1), cps - 1, c1[j0]);
                        std::fill_n(cx.begin() + std::ptrdiff_t(j0 + 1), cps - 1, cx[j0]);
                    }
                    rows::runs_apply(dy + at, xhat.xhat ? xhat.xhat + at : nullptr,
                                     xhat.x ? xhat.x + at : nullptr, m.data(), sc.data(), v.s,
                                     count, cg.data(), g + c0, c1.data(), cx.data(), dx + at);
                });
        });
        add_partials(row1, row2, v.n, v.c, chan_sum_dy, chan_sum_dy_xhat);
        return;
    }
    if (backward_set_by_set<T>(v, sets)) {
        // Run by run: rows::runs_apply, a set's runs in one call, took 1.05-1.1x as long on
        // (8, 256, 14, 14) (runs of 196 values), 2-vCPU Intel Xeon VM.
        parallel_region(v.size() >= kParallelMin, [&](const TeamSlot& team) {
            const auto [k0, k1] = team.share(num_sets);
            for (std::size_t k = k0; k < k1; ++k) {
                double a = 0, b = 0;
                sum_set(k, a, b);
                T coef_1, coef_xhat;
                coefficients(k, a * inv_m, b * inv_m, coef_1, coef_xhat);
                for_each_run(k, [&](std::size_t r, std::size_t c) {
                    apply_run_from(stream, dy, xhat, r * v.s, v.s, k, coef_g[k], g[c], coef_1,
                                   coef_xhat, dx);
                });
            }
            rows::fence_streamed_stores();
        });
        add_partials(row1, row2, v.n, v.c, chan_sum_dy, chan_sum_dy_xhat);
        return;
    }
    // Sets over the batch go a group at a time, sample by sample (grouped_sets); larger per-sample
    // sets a group at a time too (one set in cache), the next group's runs right after the group's.
    std::vector<T> set_coef_1(num_sets), set_coef_xhat(num_sets);
    const std::size_t group =
        sets.across_batch ? sets_per_pass<T>(v, sets) : per_sample_sets_per_pass<T>(v, sets);
    grouped_sets(
        num_sets, group, v.size() >= kParallelMin, sum_set,
        [&](std::size_t k, double t1, double t2) {
            coefficients(k, t1 * inv_m, t2 * inv_m, set_coef_1[k], set_coef_xhat[k]);
        },
        // Sample n's runs of set k are applied; with a next group, the runs `step` runs further
        // (set k + group, the same places) are reduced in the same pass
        // (rows::apply_runs_summing_next), so reads from memory and writes overlap, their sums
        // kept in row1, row2 for the channel sums and added, weighted by γ of their channel, into
        // a, b.
        [&](std::size_t n, std::size_t k, bool has_next, double& a, double& b) {
            const auto [r0, c0] = first_run(k);
            const std::size_t r = r0 + n * v.c, base = r * v.s;
            const T cg = coef_g[k], coef_1 = set_coef_1[k], coef_xhat = set_coef_xhat[k];
            if (!has_next) {
                for (std::size_t dc = 0; dc < cps; ++dc)
                    apply_run_from(stream, dy, xhat, base + dc * v.s, v.s, k, cg, g[c0 + dc],
                                   coef_1, coef_xhat, dx);
                return;
            }
            const std::size_t kn = k + group, step = group * cps, rn = r + step;
            if (xhat.xhat)
                rows::apply_runs_summing_next<T>(
                    dy + base, xhat.xhat + base, nullptr, T(0), T(0), v.s, cps, cg, g + c0, coef_1,
                    coef_xhat, dx + base, stream_dx, step * v.s, T(0), T(0), row1 + rn, row2 + rn);
            else
                rows::apply_runs_summing_next<T>(
                    dy + base, nullptr, xhat.x + base, xhat.shift[k], xhat.scale[k], v.s, cps, cg,
                    g + c0, coef_1, coef_xhat, dx + base, stream_dx, step * v.s, xhat.shift[kn],
                    xhat.scale[kn], row1 + rn, row2 + rn);
            for (std::size_t dc = 0; dc < cps; ++dc) {
                // The next run's channel (per-sample sets: possibly in the next sample's row).
                const double gn = double(g[(c0 + dc + step) % v.c]);
                a += gn * row1[rn + dc];
                b += gn * row2[rn + dc];
            }
        },
        samples);
    add_partials(row1, row2, v.n, v.c, chan_sum_dy, chan_sum_dy_xhat);
}

template <class T>
void inverse_std(const T* var, std::size_t n, double eps, T* inv_std) {
    inverse_std_clones(var, n, eps, inv_std);
}

template <class T>
bool all_finite(const T* a, const T* b, std::size_t n) {
    return all_finite_clones(a, b, n);
}

template <class T>
void betas_for_means(std::size_t num_sets, std::size_t cps, const double* residual, const T* scale,
                     const T* gamma, const T* beta, T* out) {
    betas_for_means_clones(num_sets, cps, residual, scale, gamma, beta, out);
}

template <class T>
std::size_t first_non_finite(const T* a, const T* b, std::size_t n) {
    if (all_finite(a, b, n)) return n;
    for (std::size_t k = 0; k < n; ++k)
        if (!std::isfinite(a[k]) || (b && !std::isfinite(b[k]))) return k;
    return n;
}

#define NORMLAB_INSTANTIATE_KERNELS(T)                                                             \
    template void inverse_std<T>(const T*, std::size_t, double, T*);                               \
    template bool all_finite<T>(const T*, const T*, std::size_t);                                  \
    template void betas_for_means<T>(std::size_t, std::size_t, const double*, const T*, const T*,  \
                                     const T*, T*);                                                \
    template std::size_t first_non_finite<T>(const T*, const T*, std::size_t);                     \
    template void collect_moments<T>(const T*, const NcsView&, const SetSpec&, bool, T*, T*,       \
                                     double*);                                                     \
    template void normalize_affine<T>(const T*, const NcsView&, const SetSpec&, const T*,          \
                                      const T*, const T*, const T*, const T*, T*, T*, bool);       \
    template void standardize<T>(const T*, const NcsView&, const SetSpec&, bool, double, const T*, \
                                 const T*, T*, T*, T*, T*, T*, T*);                                \
    template void backward_reduce<T>(const T*, XhatArg<T>, const NcsView&, const SetSpec&,         \
                                     const T*, double*, double*, double*, double*);                \
    template void backward_apply<T>(const T*, XhatArg<T>, const NcsView&, const SetSpec&,          \
                                    const T*, const T*, const T*, const T*, T*);                   \
    template void weighted_column_sums<T>(const T*, XhatArg<T>, const NcsView&, const SetSpec&,    \
                                          const T*, const T*, double*, double*);                   \
    template void channel_sums<T>(const T*, XhatArg<T>, const NcsView&, double*, double*,          \
                                  const SetSpec*);                                                 \
    template bool can_fuse_backward<T>(const NcsView&, const SetSpec&);                            \
    template void backward_fused<T>(const T*, XhatArg<T>, const NcsView&, const SetSpec&,          \
                                    const T*, const T*, const SetCoefficients<T>&, T*, double*,    \
                                    double*);

NORMLAB_INSTANTIATE_KERNELS(float)
NORMLAB_INSTANTIATE_KERNELS(double)

// Set while the library's globals are initialized, which may come before libgcc's own
// initializer of the CPU features has run (host_vector_features runs it first).
bool wide_vector_width = host_vector_features().avx512f;
const bool host_has_avx512 = host_vector_features().avx512f;

void set_wide_vectors(bool wide) {
    wide_vector_width = wide;
}

}  // namespace normlab::kernels
