#pragma once
// The innermost loops of the statistics kernel, one per job, each over one contiguous run.
// Compiled for AVX-512, AVX2 and the baseline ISA, picked at load time (GCC target_clones), so
// portable binaries still use the host's vector width. Sums are kept in kLanes independent
// double accumulators — enough parallel chains to hide add latency, and a fixed order, so the
// result does not depend on how runs are split across threads (it may differ in the last bits
// between machines whose clones differ).

#include <immintrin.h>
#include <xmmintrin.h>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "kernels/formulas.hpp"
#include "kernels/vector_width.hpp"

namespace normlab::kernels::rows {

constexpr std::size_t kLanes = 16;

// The lane helpers below are always inlined into the ISA clones, so the vector-ABI note GCC
// gives for them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// Sixteen double lanes as four vectors of four (one AVX2 register or two SSE2 registers each;
// wider vectors make GCC spill them through memory on AVX2), so every ISA clone vectorizes the
// same fixed order. Floats come eight to a vector (sixteen in paired_sums' loop where
// kernels::wide_vectors says so).
using Double4 = double __attribute__((vector_size(32)));
// Sixteen double lanes as two vectors of eight, lanes 0-7 and 8-15: the accumulators of the
// AVX-512 loops, where each is one register (Sum16's four vectors of four, the width every clone
// handles, take twice the instructions and, four runs at a time, spill).
using Double8 = double __attribute__((vector_size(64)));
using Float8 = float __attribute__((vector_size(32)));
using Float4 = float __attribute__((vector_size(16)));
using Float16 = float __attribute__((vector_size(64)));

struct Sum16 {
    Double4 lane[4] = {};
};

__attribute__((always_inline)) inline Float8 load_floats(const float* p) {
    Float8 f;
    std::memcpy(&f, p, sizeof f);
    return f;
}

__attribute__((always_inline)) inline Double4 load_doubles(const double* p) {
    Double4 d;
    std::memcpy(&d, p, sizeof d);
    return d;
}

// Sixteen floats (lo, then hi) widened to double. Written as a loop over an array because the
// vectorizer turns that into one vcvtps2pd per four values on AVX, where GCC lowers a
// __builtin_convertvector of four floats to two-value conversions glued back through the stack.
__attribute__((always_inline)) inline void widen(Float8 lo, Float8 hi, Double4 (&out)[4]) {
    float f[kLanes];
    std::memcpy(f, &lo, sizeof lo);
    std::memcpy(f + 8, &hi, sizeof hi);
    double d[kLanes];
    for (std::size_t j = 0; j < kLanes; ++j)
        d[j] = double(f[j]);
    std::memcpy(out, d, sizeof d);
}

// Lanes 0–7 from lo, 8–15 from hi, widened and added.
__attribute__((always_inline)) inline void add_widened(Sum16& s, Float8 lo, Float8 hi) {
    Double4 w[4];
    widen(lo, hi, w);
    for (int k = 0; k < 4; ++k)
        s.lane[k] += w[k];
}

// The same into sixteen doubles in memory.
__attribute__((always_inline)) inline void add_widened(double* out, Float8 lo, Float8 hi) {
    Double4 w[4];
    widen(lo, hi, w);
    for (int k = 0; k < 4; ++k) {
        const Double4 v = load_doubles(out + 4 * k) + w[k];
        std::memcpy(out + 4 * k, &v, sizeof v);
    }
}

// Lane j + lane j + 8 of sixteen lanes: pairs 0–3 in lo, 4–7 in hi, the pairs total adds up.
__attribute__((always_inline)) inline void lane_pairs16(const Sum16& s, Double4& lo, Double4& hi) {
    lo = s.lane[0] + s.lane[2];
    hi = s.lane[1] + s.lane[3];
}

// Σ of lane pairs (lane_pairs16) in order: pairs 0–3 of lo, then of hi, added to 0.
__attribute__((always_inline)) inline double total(Double4 lo, Double4 hi) {
    double t = 0;
    for (int j = 0; j < 4; ++j)
        t += lo[j];
    for (int j = 0; j < 4; ++j)
        t += hi[j];
    return t;
}

// Σ over the lanes in a fixed order: lane j with lane j + 8 (lane_pairs16), then those pairs in
// order.
__attribute__((always_inline)) inline double total(const Sum16& s) {
    Double4 lo, hi;
    lane_pairs16(s, lo, hi);
    return total(lo, hi);
}

// Float data is first combined in float, up to kRunSteps vectors per lane along a run (up to
// kFloatSteps rows down a column block), and only each block's partial sums are widened and
// added in double: the widening (one conversion per value) would otherwise cost more than the
// arithmetic, and a partial of sixteen deviations from the shift loses at most a few float ulps
// of itself, far below what the double total then adds. (Sixteen steps instead of eight along a
// run: the in-cache forward and backward on rows 3-6% faster.)
constexpr std::size_t kFloatSteps = 8;
constexpr std::size_t kRunSteps = 16;
constexpr std::size_t kFloatBlock = kLanes * kRunSteps;
// Shorter runs (GroupNorm's sets of a few channels on rows, small feature maps) are summed
// eight values at a time in one float vector, then the rest one by one in double: setting up
// and reducing sixteen lanes would cost more than the run itself, and the scalar loop alone is
// a chain of dependent double adds (GroupNorm(32) on rows of 512 ran 8× LayerNorm's time).
// Runs under eight values take the scalar loop alone.
constexpr std::size_t kShortRun = 2 * kLanes;
constexpr std::size_t kShortVector = 8;

// Lanes j and j + 4 of a float vector, widened and added: the four pairs total8 adds up.
__attribute__((always_inline)) inline Double4 lane_pairs(Float8 f) {
    const Float4 lo = __builtin_shufflevector(f, f, 0, 1, 2, 3);
    const Float4 hi = __builtin_shufflevector(f, f, 4, 5, 6, 7);
    return __builtin_convertvector(lo, Double4) + __builtin_convertvector(hi, Double4);
}

// Σ of a float vector's eight lanes in double, in a fixed order: (p0 + p1) + (p2 + p3) of its
// lane_pairs.
__attribute__((always_inline)) inline double total8(Float8 f) {
    const Double4 p = lane_pairs(f);
    return (p[0] + p[1]) + (p[2] + p[3]);
}

// Loads a vector of V's width (Float8, Double4) or one value (V = T) from p; splat broadcasts.
template <class V, class T>
__attribute__((always_inline)) inline V load_as(const T* p) {
    if constexpr (std::is_same_v<V, Float8>)
        return load_floats(p);
    else if constexpr (std::is_same_v<V, Float4>) {
        Float4 f;
        std::memcpy(&f, p, sizeof f);
        return f;
    } else if constexpr (std::is_same_v<V, Float16>) {
        Float16 f;
        std::memcpy(&f, p, sizeof f);
        return f;
    } else if constexpr (std::is_same_v<V, Double4>)
        return load_doubles(p);
    else
        return *p;
}

// Exact, a −0 included (adding it to a zero vector would turn it into +0): vector bodies and
// scalar tails then compute with the same values.
template <class V, class S>
__attribute__((always_inline)) inline V splat(S value) {
    if constexpr (std::is_same_v<V, Float8>) {
        const Float8 f = {float(value)};
        return __builtin_shufflevector(f, f, 0, 0, 0, 0, 0, 0, 0, 0);
    } else if constexpr (std::is_same_v<V, Float4>) {
        const Float4 f = {float(value)};
        return __builtin_shufflevector(f, f, 0, 0, 0, 0);
    } else if constexpr (std::is_same_v<V, Float16>) {
        const Float16 f = {float(value)};
        return __builtin_shufflevector(f, f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    } else if constexpr (std::is_same_v<V, Double4>) {
        const Double4 d = {double(value)};
        return __builtin_shufflevector(d, d, 0, 0, 0, 0);
    } else {
        return V(value);
    }
}

// A coefficient as one value and as a vector of each width, formed once before a loop whose
// body is written for any width: GCC does not hoist the broadcasts out of such a body when it
// also branches. The widest first: declared narrowest first, GCC wrote the narrow members with
// one store of sixty-four bytes and the vector of sixteen partly with it, partly with another
// store, and the load of that vector before the loop could not be forwarded from either (it
// waited for both to reach the cache, on every call): LayerNorm's training forward on
// (128, 1024), one thread, 2-vCPU Intel Xeon VM, took 1.06-1.09 of the time of a plain loop of
// the same arithmetic in the same process, against 1.10-1.14 before.
template <class T>
struct Splat {
    Float16 f16;
    Float8 f8;
    Float4 f4;
    Double4 d4;
    T one;
    explicit Splat(T v)
        : f16(splat<Float16>(v)),
          f8(splat<Float8>(v)),
          f4(splat<Float4>(v)),
          d4(splat<Double4>(v)),
          one(splat<T>(v)) {}
    template <class V>
    __attribute__((always_inline)) V as() const {
        if constexpr (std::is_same_v<V, Float4>)
            return f4;
        else if constexpr (std::is_same_v<V, Float8>)
            return f8;
        else if constexpr (std::is_same_v<V, Float16>)
            return f16;
        else if constexpr (std::is_same_v<V, Double4>)
            return d4;
        else
            return one;
    }
};

// f(std::bool_constant<a>): a loop specialized on a flag instead of testing it on every element.
template <class F>
__attribute__((always_inline)) inline void with_flag(bool a, F&& f) {
    if (a)
        f(std::true_type{});
    else
        f(std::false_type{});
}

// f(std::bool_constant<a>, std::bool_constant<b>): the same for two flags.
template <class F>
__attribute__((always_inline)) inline void with_flags(bool a, bool b, F&& f) {
    if (a) {
        if (b)
            f(std::true_type{}, std::true_type{});
        else
            f(std::true_type{}, std::false_type{});
    } else {
        if (b)
            f(std::false_type{}, std::true_type{});
        else
            f(std::false_type{}, std::false_type{});
    }
}

// Lanes 0-7 and 8-15 of a vector of sixteen floats.
__attribute__((always_inline)) inline Float8 low8(Float16 f) {
    return __builtin_shufflevector(f, f, 0, 1, 2, 3, 4, 5, 6, 7);
}
__attribute__((always_inline)) inline Float8 high8(Float16 f) {
    return __builtin_shufflevector(f, f, 8, 9, 10, 11, 12, 13, 14, 15);
}

// add_widened for the sixteen lanes of a Float16, in vectors of eight doubles: on AVX-512 (where
// Float16 sums run) two conversions, two adds and two stores, where add_widened's vectors of four
// took four adds, four stores and two extracts. The same sums, lane by lane. (Converted through
// arrays as in widen: a __builtin_convertvector to eight doubles became four conversions of
// four values and three inserts.)
__attribute__((always_inline)) inline void add_widened(double* out, Float16 f) {
    float values[kLanes];
    std::memcpy(values, &f, sizeof f);
    double wide[kLanes];
    for (std::size_t j = 0; j < kLanes; ++j)
        wide[j] = double(values[j]);
    for (std::size_t half = 0; half < kLanes; half += 8) {
        Double8 sum, add;
        std::memcpy(&sum, out + half, sizeof sum);
        std::memcpy(&add, wide + half, sizeof add);
        sum += add;
        std::memcpy(out + half, &sum, sizeof sum);
    }
}

// The float blocks of paired_sums (n >= kShortRun): sixteen lanes of floats combined kRunSteps
// at a time and widened into a and q, while sixteen values remain; returns where they end.
template <class Term, class After>
__attribute__((always_inline)) inline std::size_t float_block_sums(std::size_t n, Term&& term,
                                                                   Sum16& a, Sum16& q,
                                                                   After&& after) {
    const bool wide = wide_vectors();
    std::size_t i = 0;
    while (i + kLanes <= n) {
        const std::size_t begin = i;
        const std::size_t end = std::min(n - n % kLanes, i + kFloatBlock);
        if (wide) {
            Float16 fa = {}, fq = {};
            for (; i < end; i += kLanes) {
                const auto [u, w] = term(Float16{}, i);
                fa += u;
                fq += u * w;
            }
            add_widened(a, low8(fa), high8(fa));
            add_widened(q, low8(fq), high8(fq));
        } else {
            Float8 fa0 = {}, fa1 = {}, fq0 = {}, fq1 = {};
            for (; i < end; i += kLanes) {
                const auto [u0, w0] = term(Float8{}, i);
                const auto [u1, w1] = term(Float8{}, i + 8);
                fa0 += u0;
                fa1 += u1;
                fq0 += u0 * w0;
                fq1 += u1 * w1;
            }
            add_widened(a, fa0, fa1);
            add_widened(q, fq0, fq1);
        }
        after(begin, end);
    }
    return i;
}

// s1 += Σ u_i, s2 += Σ u_i·w_i for i < n, with (u, w) = term(V{}, i) giving the values at i (a
// vector of V's width, or one value for V = T): sixteen lanes in a fixed order, float lanes
// combined in float kRunSteps at a time and widened, a scalar tail in double (float runs shorter
// than kShortRun: one vector of eight lanes, then the tail). Float terms come sixteen to a vector
// where kernels::wide_vectors says so (AVX-512), else eight, two vectors per sixteen lanes. Every
// sum of the kernel is this loop with a different term. after(begin, end) is called once the sums
// of [begin, end) are taken, in order, the ranges covering [0, n): a caller does other work on the
// same range there, interleaved with the sums at the granularity of a float block.
template <class T, class Term, class After>
__attribute__((always_inline)) inline void paired_sums(std::size_t n, Term&& term, double& s1,
                                                       double& s2, After&& after) {
    Sum16 a, q;
    double ta = 0, tq = 0;
    std::size_t i = 0;
    if (n < kShortRun) {
        if constexpr (std::is_same_v<T, float>) {
            if (n >= kShortVector) {
                Float8 fa = {}, fq = {};
                for (; i + kShortVector <= n; i += kShortVector) {
                    const auto [u, w] = term(Float8{}, i);
                    fa += u;
                    fq += u * w;
                }
                ta = total8(fa);
                tq = total8(fq);
            }
        }
    } else if constexpr (std::is_same_v<T, float>) {
        i = float_block_sums(n, term, a, q, after);
    } else {
        for (; i + kLanes <= n; i += kLanes)
            for (int k = 0; k < 4; ++k) {
                const auto [u, w] = term(Double4{}, i + 4 * k);
                a.lane[k] += u;
                q.lane[k] += u * w;
            }
    }
    if (n >= kShortRun) {
        ta = total(a);
        tq = total(q);
    }
    const std::size_t rest = std::is_same_v<T, float> && n >= kShortRun ? i : 0;
    for (; i < n; ++i) {
        const auto [u, w] = term(T{}, i);
        ta += double(u);
        tq += double(u) * double(w);
    }
    if (rest < n) after(rest, n);
    s1 += ta;
    s2 += tq;
}

template <class T, class Term>
__attribute__((always_inline)) inline void paired_sums(std::size_t n, Term&& term, double& s1,
                                                       double& s2) {
    paired_sums<T>(n, term, s1, s2, [](std::size_t, std::size_t) {});
}

// What paired_sums adds up for a run of floats whose length is a multiple of sixteen from
// kShortRun (lanes_only(n)), before it adds it up: the lane pairs (lane_pairs16) of its sixteen
// lanes of Σu (a) and of Σu·w (q). total() of them, or four_totals of four runs' at once, gives
// paired_sums' s1 and s2 (which has no scalar tail there).
struct LanePairs {
    Double4 a_lo, a_hi, q_lo, q_hi;
};

constexpr bool lanes_only(std::size_t n) {
    return n >= kShortRun && n % kLanes == 0;
}

template <class Term>
__attribute__((always_inline)) inline void paired_lane_pairs(std::size_t n, Term&& term,
                                                             LanePairs& out) {
    Sum16 a, q;
    float_block_sums(n, term, a, q, [](std::size_t, std::size_t) {});
    lane_pairs16(a, out.a_lo, out.a_hi);
    lane_pairs16(q, out.q_lo, out.q_hi);
}

// s1 += Σ(p − shift), s2 += Σ(p − shift)².
template <class T>
NORMLAB_ISA_CLONES void shifted_sums(const T* p, std::size_t n, double shift, double& s1,
                                     double& s2) {
    paired_sums<T>(
        n,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V d = load_as<V>(p + i) - splat<V>(T(shift));
            return std::pair{d, d};
        },
        s1, s2);
}

// The lane pairs of shifted_sums(p, n, shift) for lanes_only(n) floats.
template <class T>
__attribute__((always_inline)) inline void shifted_lane_pairs(const T* p, std::size_t n, T shift,
                                                              LanePairs& out) {
    static_assert(std::is_same_v<T, float>, "float runs only");
    paired_lane_pairs(
        n,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V d = load_as<V>(p + i) - splat<V>(shift);
            return std::pair{d, d};
        },
        out);
}

// g = w·dy with w = gamma[i] (or 1 when gamma is null) at i.
template <class V, class T>
__attribute__((always_inline)) inline V weighted(const T* dy, const T* gamma, std::size_t i) {
    V g = load_as<V>(dy + i);
    if (gamma) g *= load_as<V>(gamma + i);
    return g;
}

// s1 += Σ w·dy, s2 += Σ w·dy·x̂ with w = gamma[i] (or 1 when gamma is null); xhat may be null.
template <class T>
NORMLAB_ISA_CLONES void grad_sums(const T* dy, const T* xhat, const T* gamma, std::size_t n,
                                  double& s1, double& s2) {
    paired_sums<T>(
        n,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            return std::pair{weighted<V>(dy, gamma, i), xhat ? load_as<V>(xhat + i) : V{}};
        },
        s1, s2);
}

// Prefetches column i of the `ahead` rows that follow `rows` rows of a and b (stride apart): a
// kernel walking a group of rows column by column fetches the next group's lines meanwhile. From
// the vector paths only, once per line of a: every vector of sixteen, and the eight that start
// in the first half of a line.
template <class V, class T>
__attribute__((always_inline)) inline void prefetch_ahead(const T* a, const T* b, std::size_t rows,
                                                          std::size_t ahead, std::size_t stride,
                                                          std::size_t i) {
    constexpr bool wide = std::is_same_v<V, Float16>;
    if constexpr (wide || std::is_same_v<V, Float8>)
        if (wide || reinterpret_cast<std::uintptr_t>(a + i) % 64 < 32)
            for (std::size_t r = rows; r < rows + ahead; ++r) {
                __builtin_prefetch(a + r * stride + i);
                __builtin_prefetch(b + r * stride + i);
            }
}

// The values before p + k is on a 64-byte line boundary, at most n (0 where p is not aligned to
// its type at all). The dense kernels walk columns in vectors from there: a vector that spans two
// lines costs two accesses, and glibc's malloc leaves large blocks 16 bytes past a line, so that
// every vector of sixteen floats of an (N, C) tensor did. BatchNorm, 2 threads, Intel Xeon VM,
// medians of six interleaved rounds of normalizer_bench, before -> after: (256, 1024) inference
// 38 -> 33 us, training forward 99 -> 90, backward 127 -> 115; (1792, 512) inference 229 -> 185,
// training forward 390 -> 360.
inline constexpr std::uintptr_t kLineBytes = 64;

template <class T>
std::size_t values_before_line(const T* p, std::size_t n) {
    const auto past = reinterpret_cast<std::uintptr_t>(p) % kLineBytes;
    if (past % sizeof(T) != 0) return 0;
    return std::min(n, std::size_t((kLineBytes - past) % kLineBytes / sizeof(T)));
}

// Column sums down `rows` rows (callers pass at most kFloatSteps): s1[i] += Σ_r u,
// s2[i] += Σ_r u·w (s2 null: not taken), with (u, w) = f(V{}, i)(r) the values at column i of
// row r — f(V{}, i) loads once what the columns share down the rows and returns row(r) (a vector
// of V's width, or one value for V = T). Floats are combined in float down the rows and widened,
// every column alike: sixteen columns to a vector (one of sixteen where kernels::wide_vectors
// says so, else two of eight) from the first whose address in `line_of` (the array the columns
// are aligned by: row 0 of the output, or of the input) is on a 64-byte line, and the columns
// before it and past the last sixteen one at a time, with the same float operations as a lane.
// A column's sums are thus the same bits wherever the arrays lie. Doubles: one column at a time.
// Every column sum of the kernel is this loop with a different f.
template <class T, class F>
__attribute__((always_inline)) inline void column_paired_sums(std::size_t rows, std::size_t n,
                                                              const T* line_of, F&& f, double* s1,
                                                              double* s2) {
    const auto one_column = [&](std::size_t i) __attribute__((always_inline)) {
        const auto column = f(T{}, i);
        T fa = 0, fq = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            const auto [u, w] = column(r);
            fa += u;
            fq += u * w;
        }
        s1[i] += double(fa);
        if (s2) s2[i] += double(fq);
    };
    std::size_t i = 0;
    if constexpr (std::is_same_v<T, float>) {
        for (const std::size_t head = values_before_line(line_of, n); i < head; ++i)
            one_column(i);
        if (wide_vectors()) {
            // Two vectors of sixteen columns side by side, down a group's rows unrolled where it
            // has all kFloatSteps of them: each vector's sums are a chain of dependent adds, one
            // step per row, which one vector at a time left waiting on the add's latency.
            const auto two_vectors = [&](auto count) __attribute__((always_inline)) {
                const auto left = f(Float16{}, i), right = f(Float16{}, i + kLanes);
                Float16 fa0 = {}, fq0 = {}, fa1 = {}, fq1 = {};
                for (std::size_t r = 0; r < std::size_t(count); ++r) {
                    const auto [u0, w0] = left(r);
                    const auto [u1, w1] = right(r);
                    fa0 += u0;
                    fq0 += u0 * w0;
                    fa1 += u1;
                    fq1 += u1 * w1;
                }
                add_widened(s1 + i, fa0);
                add_widened(s1 + i + kLanes, fa1);
                if (s2) {
                    add_widened(s2 + i, fq0);
                    add_widened(s2 + i + kLanes, fq1);
                }
            };
            for (; i + 2 * kLanes <= n; i += 2 * kLanes)
                if (rows == kFloatSteps)
                    two_vectors(std::integral_constant<std::size_t, kFloatSteps>{});
                else
                    two_vectors(rows);
            for (; i + kLanes <= n; i += kLanes) {
                const auto columns = f(Float16{}, i);
                Float16 fa = {}, fq = {};
                for (std::size_t r = 0; r < rows; ++r) {
                    const auto [u, w] = columns(r);
                    fa += u;
                    fq += u * w;
                }
                add_widened(s1 + i, fa);
                if (s2) add_widened(s2 + i, fq);
            }
        } else {
            for (; i + kLanes <= n; i += kLanes) {
                const auto lo = f(Float8{}, i), hi = f(Float8{}, i + 8);
                Float8 fa0 = {}, fa1 = {}, fq0 = {}, fq1 = {};
                for (std::size_t r = 0; r < rows; ++r) {
                    const auto [u0, w0] = lo(r);
                    const auto [u1, w1] = hi(r);
                    fa0 += u0;
                    fa1 += u1;
                    fq0 += u0 * w0;
                    fq1 += u1 * w1;
                }
                add_widened(s1 + i, fa0, fa1);
                if (s2) add_widened(s2 + i, fq0, fq1);
            }
        }
    }
    for (; i < n; ++i)
        one_column(i);
}

// Column sums down `rows` consecutive rows (row stride `stride`) of a dense block:
// s1[i] += Σ_rows (x[i] − shift[i]), s2[i] += its square. Float rows are combined in float
// first (callers pass at most kFloatSteps rows), as in shifted_sums.
template <class T>
NORMLAB_ISA_CLONES void column_shifted_sums(const T* x, std::size_t rows, std::size_t stride,
                                            std::size_t n, const T* shift, double* s1, double* s2) {
    column_paired_sums<T>(
        rows, n, x,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V sh = load_as<V>(shift + i);
            return [=](std::size_t r) __attribute__((always_inline)) {
                const V d = load_as<V>(x + r * stride + i) - sh;
                return std::pair{d, d};
            };
        },
        s1, s2);
}

// s1[i] += Σ_rows dy[i], s2[i] += Σ_rows dy[i]·x̂[i] (xhat may be null), as above.
template <class T>
NORMLAB_ISA_CLONES void column_grad_sums(const T* dy, const T* xhat, std::size_t rows,
                                         std::size_t stride, std::size_t n, double* s1,
                                         double* s2) {
    column_paired_sums<T>(
        rows, n, dy,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            return [=](std::size_t r) __attribute__((always_inline)) {
                const std::size_t at = r * stride + i;
                return std::pair{load_as<V>(dy + at), xhat ? load_as<V>(xhat + at) : V{}};
            };
        },
        s1, xhat ? s2 : nullptr);
}

// x̂ = (x − m)·sc, y = (x̂ + off)·g + b (off = 0: nothing added), with g, b per element
// (g_step 1) or one value (g_step 0). The stored x̂ leaves the offset out, so that backward sees
// the same x̂ whether it reads it or forms it again from the input (the layer with an offset,
// Batch Renormalization, adds its share of the gradients itself). y is computed the same way
// whether x̂ is stored or not, so inference, training and a training forward that keeps its
// input instead of x̂ give the same bits.
template <class T>
__attribute__((always_inline)) inline void affine_inline(const T* x, std::size_t n, T m, T sc,
                                                         T off, const T* g, const T* b,
                                                         std::size_t g_step, T* xhat, T* y) {
    with_flags(
        off != T(0), g_step == 0, [&](auto offset, auto one_g) __attribute__((always_inline)) {
            const T gs = g[0], bs = b[0];
            const auto y_of = [&](T h, std::size_t i) __attribute__((always_inline)) {
                if constexpr (offset) h = h + off;
                if constexpr (one_g) return T(h * gs + bs);
                return T(h * g[i] + b[i]);
            };
            if (xhat) {
#pragma omp simd
                for (std::size_t i = 0; i < n; ++i) {
                    const T h = standardized(x[i], m, sc);
                    xhat[i] = h;
                    y[i] = y_of(h, i);
                }
            } else {
#pragma omp simd
                for (std::size_t i = 0; i < n; ++i)
                    y[i] = y_of(standardized(x[i], m, sc), i);
            }
        });
}

template <class T>
NORMLAB_ISA_CLONES void affine(const T* x, std::size_t n, T m, T sc, T off, const T* g, const T* b,
                               std::size_t g_step, T* xhat, T* y) {
    affine_inline(x, n, m, sc, off, g, b, g_step, xhat, y);
}

// affine (g_step 0) over `runs` consecutive runs of n values, run j with m[j], sc[j], off[j] (off
// null: 0), g[j], b[j]: one call for a sample's runs of many channels instead of one per run
// (on runs of 196 values the calls cost 10-20%: kernels::normalize_affine), the same values as
// run by run.
template <class T>
NORMLAB_ISA_CLONES void runs_affine(const T* x, std::size_t n, std::size_t runs, const T* m,
                                    const T* sc, const T* off, const T* g, const T* b, T* xhat,
                                    T* y) {
    for (std::size_t j = 0; j < runs; ++j) {
        const std::size_t at = j * n;
        affine_inline(x + at, n, m[j], sc[j], off ? off[j] : T(0), g + j, b + j, 0,
                      xhat ? xhat + at : nullptr, y + at);
    }
}

// Stores that bypass the caches (SSE, so every ISA clone has them), for outputs too large to
// stay in the last-level cache: they save the read of each destination line that a normal store
// costs, and they do not evict the input a fused kernel is about to read again. The kernels that
// stream do not fence: each thread fences once, after its share of a pass
// (fence_streamed_stores), before another thread may read what it wrote. A fence after every run
// waited for each run's lines to reach memory before the next run began. Intel Xeon VM, 2
// threads, (32, 64, 56, 56) with the kernels planning for a 32 MiB cache (so that its outputs
// are streamed), medians: BatchNorm's normalization pass 1305-1408 -> 1044-1206 us, its fused
// training forward 1547-1583 -> 1196-1446.
__attribute__((always_inline)) inline void stream_floats(float* p, Float8 v) {
    _mm_stream_ps(p, __m128(__builtin_shufflevector(v, v, 0, 1, 2, 3)));
    _mm_stream_ps(p + 4, __m128(__builtin_shufflevector(v, v, 4, 5, 6, 7)));
}

// The same for a whole 64-byte line, p on one (AVX-512: the avx512f clones inline it, and the
// callers check kernels::host_has_avx512, as tests switch wide_vectors anywhere). One store per
// line instead of four: normalizer_bench's triad_streamed on a 51 MB working set, Intel Xeon VM,
// went from 11.4-13.3 to 14.0-14.7 GB/s on one thread and from 23-28 to 26-40 on two; with
// streamed runs on lines (aligned_vectors), the forward passes of every layer on (32, 64, 56, 56)
// planned for a 32 MiB cache took 0.73-1.05 of the time (median 0.93; both forms alternated
// call by call in one process, ABBA, the cases in normalizer_bench's order), the backward
// 0.99-1.05.
__attribute__((target("avx512f"))) inline void stream_line(float* p, const Float16* v) {
    __m512 line;
    std::memcpy(&line, v, sizeof line);
    _mm512_stream_ps(p, line);
}

inline bool on_line(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % kLineBytes == 0;
}

// Orders this thread's streamed stores before its later stores (the barrier that ends a
// parallel region included): the one fence of a thread's share of a pass.
inline void fence_streamed_stores() {
    _mm_sfence();
}

inline bool aligned16(const void* p) {
    return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0;
}

// One float with a streaming store (SSE2's movnti, on every x86-64): the values of a streamed
// output that no vector covers, so that no line of it is written partly by ordinary stores.
__attribute__((always_inline)) inline void stream_float(float* p, float v) {
    int bits;
    std::memcpy(&bits, &v, sizeof bits);
    _mm_stream_si32(reinterpret_cast<int*>(p), bits);
}

// Stores a vector of V's width (or one value for V = T) at p, streamed when `stream` (floats
// only; vectors must then be 16-byte aligned).
template <class V, class T>
__attribute__((always_inline)) inline void store_as(T* p, V v, bool stream) {
    if constexpr (std::is_same_v<V, Float4>) {
        if (stream)
            _mm_stream_ps(p, __m128(v));
        else
            std::memcpy(p, &v, sizeof v);
    } else if constexpr (std::is_same_v<V, Float8>) {
        if (stream)
            stream_floats(p, v);
        else
            std::memcpy(p, &v, sizeof v);
    } else if constexpr (std::is_same_v<V, Float16>) {
        if (stream && host_has_avx512 && on_line(p)) {
            stream_line(p, &v);
        } else if (stream) {
            stream_floats(p, low8(v));
            stream_floats(p + 8, high8(v));
        } else {
            std::memcpy(p, &v, sizeof v);
        }
    } else if constexpr (std::is_same_v<V, Double4>) {
        std::memcpy(p, &v, sizeof v);
    } else if constexpr (std::is_same_v<T, float>) {
        if (stream)
            stream_float(p, v);
        else
            *p = v;
    } else {
        *p = v;
    }
}

// How far `output` lies above `input` modulo a 4 KiB page (0 to 4095 bytes): where the core
// compares a load's address with earlier stores by their low twelve bits (4 KiB aliasing).
inline constexpr std::uintptr_t kPage = 4096;
inline std::uintptr_t bytes_above_in_page(const void* output, const void* input) {
    return (reinterpret_cast<std::uintptr_t>(output) - reinterpret_cast<std::uintptr_t>(input)) %
           kPage;
}

// Whether a run whose output is streamed is walked from its end to its start: where the output
// lies 1-255 bytes above the input modulo 4 KiB. Walked forward, each load of x then matches in
// its low twelve address bits a streamed store to y issued a few vectors before, and the core
// holds it back as if it read that store (4 KiB aliasing; streamed stores stay in the core's
// buffers longer than normal ones, so the window is wider than the dense kernels' 64 bytes,
// columns_backward). BatchNorm's inference on (32, 64, 56, 56) (rows::affine_streamed, runs of
// 3136 values; AMD EPYC VM, 2 threads, y placed in turn at each offset in one process) took
// 1.7x the time with y 16 bytes above x, 2.3x at 32, 2.9x at 64, 1.5x at 128 and 1.2x at 192
// against 1024 bytes above; 0-32 bytes below, as far: glibc often places an output allocated
// right after its input 16 bytes further.
inline bool streams_backward(const void* output, const void* input) {
    constexpr std::uintptr_t kNear = 256;
    const std::uintptr_t d = bytes_above_in_page(output, input);
    return d > 0 && d < kNear;
}

// Calls body(V{}, i) over [begin, end) of out, each value once: V = float for one value at a
// time before out + i is 16-byte aligned and after the last full vector, V = Float8 for vectors
// of eight in between. For a `streamed` output (body then stores with streaming stores), so that
// no line is written partly by ordinary stores, where kernels::wide_vectors says so: eight and
// four up to the first 64-byte line and sixteen on each line (one streaming store of a whole
// line, stream_line), and the rest eight, four and one at a time. (A line written partly by
// ordinary stores made the per-sample layers' streamed training forward on (32, 64, 56, 56)
// take 7.5-9.3 ms instead of 2.2-3.2. Written as a vector of eight reaching back into the line
// streamed before them, or one by one with ordinary stores, as until 2026-12-03, the last values of
// each range made the streamed forwards on short runs several times slower; with the 32 MiB plan, 2
// threads, Intel Xeon VM, this form over that one, both alternated call by call (ABBA), medians:
// (128, 256, 14, 14), runs of 196 values, InstanceNorm 0.32-0.33, BatchNorm training forward
// 0.41, LayerNorm and RMSNorm 0.82-0.85 (with vectors of eight, as on AVX2: 0.25-0.40);
// (256, 512, 7, 7), runs of 49, 0.13-0.23 for every layer but BatchNorm's training forward, which
// does not stream there; (32, 64, 56, 56) 0.97-1.04. Backward passes 0.91-1.03.)
// Normal stores keep eight from a 16-byte boundary: on lines they cost runs of a few hundred
// values 2-9% (InstanceNorm and GroupNorm(32) inference on (8, 256, 14, 14) and (2, 64, 56, 56)).
// Every value is computed alone (elementwise passes only), so the split changes no bit.
// With `descending`, the same pieces are taken from the last to the first (see
// streams_backward).
template <class Body>
__attribute__((always_inline)) inline void aligned_vectors(std::size_t begin, std::size_t end,
                                                           const float* out, bool streamed,
                                                           Body&& body, bool descending = false) {
    // The pieces: single values up to a 16-byte boundary (head); streamed and wide, eights up to
    // the first line, then a four if the line is 4 or 12 values on, and sixteens on lines; then
    // eights, a four (streamed) and single values to the end.
    std::size_t head = begin;
    while (head < end && !aligned16(out + head))
        ++head;
    std::size_t eights_end = head, first_line = head, lines_end = head;
    if (streamed && wide_vectors() && head + kLanes <= end) {
        // Both 16-byte aligned: the first line is 0, 4, 8 or 12 values on.
        first_line = head + values_before_line(out + head, end - head);
        eights_end = head + (first_line - head) / 8 * 8;
        lines_end = first_line + (end - first_line) / kLanes * kLanes;
    }
    const bool four_before_line = eights_end < first_line;
    const std::size_t rest_eights_end = lines_end + (end - lines_end) / 8 * 8;
    const bool four_after = streamed && rest_eights_end + 4 <= end;
    const std::size_t tail = rest_eights_end + (four_after ? 4 : 0);
    if (descending) {
        for (std::size_t i = end; i > tail; --i)
            body(float{}, i - 1);
        if (four_after) body(Float4{}, rest_eights_end);
        for (std::size_t i = rest_eights_end; i > lines_end; i -= 8)
            body(Float8{}, i - 8);
        for (std::size_t i = lines_end; i > first_line; i -= kLanes)
            body(Float16{}, i - kLanes);
        if (four_before_line) body(Float4{}, eights_end);
        for (std::size_t i = eights_end; i > head; i -= 8)
            body(Float8{}, i - 8);
        for (std::size_t i = head; i > begin; --i)
            body(float{}, i - 1);
        return;
    }
    for (std::size_t i = begin; i < head; ++i)
        body(float{}, i);
    for (std::size_t i = head; i < eights_end; i += 8)
        body(Float8{}, i);
    if (four_before_line) body(Float4{}, eights_end);
    for (std::size_t i = first_line; i < lines_end; i += kLanes)
        body(Float16{}, i);
    for (std::size_t i = lines_end; i < rest_eights_end; i += 8)
        body(Float8{}, i);
    if (four_after) body(Float4{}, rest_eights_end);
    for (std::size_t i = tail; i < end; ++i)
        body(float{}, i);
}

// affine with g_step 0 (one channel's run) and no x̂, writing y with streaming stores.
template <class T>
NORMLAB_ISA_CLONES void affine_streamed(const T* x, std::size_t n, T m, T sc, T off, T gs, T bs,
                                        T* y) {
    if constexpr (std::is_same_v<T, float>) {
        const Splat<T> mk(m), sck(sc), offk(off), gk(gs), bk(bs);
        with_flag(
            off != T(0), [&](auto offset) __attribute__((always_inline)) {
                aligned_vectors(
                    0, n, y, true,
                    [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                        using V = decltype(tag);
                        V h = standardized(load_as<V>(x + i), mk.template as<V>(),
                                           sck.template as<V>());
                        if constexpr (offset) h = h + offk.template as<V>();
                        store_as<V>(y + i, h * gk.template as<V>() + bk.template as<V>(), true);
                    },
                    streams_backward(y, x));
            });
    } else {
        affine(x, n, m, sc, off, &gs, &bs, 0, static_cast<T*>(nullptr), y);
    }
}

// Vector stores issued one vector late: put(p, v) stores the vector put before it (the first
// goes to a sink of its own, so that no branch tests for it) and keeps v; flush() stores the
// last. Values (V = T) are stored at once. glibc places blocks of one size allocated one after
// the other 16 bytes more than their size apart, so that a layer's y often lies 16 bytes past its
// input's offset within a 4 KiB page; a loop that stores y[i..i+8) and then loads x[i+8..i+16)
// then loads what matches the store just issued in its low twelve address bits, and the core
// holds the loads back as if they read it (4 KiB aliasing). Issued one vector late, the store
// before a load of x[i..] wrote y[i-16..i-8), 16-48 bytes below it in the page for y 0-32
// bytes past x. LayerNorm's training forward on rows (rows::standardize_lane_sets), 2
// threads, AMD EPYC VM, with and without (a switch tested outside the loops, alternated call by
// call in one process), y 16 bytes past x's offset: (256, 1024) 37.8 -> 34.1 us, (1792, 512)
// 129.6 -> 115.5, (4096, 768) 426 -> 398; y at x's offset or half a page from it 0.99-1.02x.
// Against oneDNN timed in turn (onednn_bench, paired), three processes each: (256, 1024)
// 0.90-0.92 -> 0.95-0.97, (1792, 512) 0.84-0.88 -> 0.96-1.01.
template <class T>
class LateStores {
  public:
    template <class V>
    __attribute__((always_inline)) void put(T* p, V v) {
        if constexpr (std::is_same_v<T, float> && std::is_same_v<V, Float8>) {
            store_as<V>(at8_, v8_, false);
            at8_ = p;
            v8_ = v;
        } else if constexpr (std::is_same_v<T, float> && std::is_same_v<V, Float16>) {
            store_as<V>(at16_, v16_, false);
            at16_ = p;
            v16_ = v;
        } else if constexpr (std::is_same_v<T, double> && std::is_same_v<V, Double4>) {
            store_as<V>(at4_, v4_, false);
            at4_ = p;
            v4_ = v;
        } else {
            store_as<V>(p, v, false);
        }
    }
    __attribute__((always_inline)) void flush() {
        if constexpr (std::is_same_v<T, float>) {
            store_as<Float8>(at8_, v8_, false);
            // Sixteen-float vectors are put only where the AVX-512 loops run; elsewhere the
            // flush of that slot was a 64-byte copy through the stack on every call
            // (LayerNorm's forward on (1792, 512), one thread: 0.95-0.97 of the time without it).
            if (at16_ != sink_) store_as<Float16>(at16_, v16_, false);
        } else {
            store_as<Double4>(at4_, v4_, false);
        }
    }

  private:
    alignas(64) T sink_[64 / sizeof(T)];
    T* at8_ = sink_;
    Float8 v8_{};
    T* at16_ = sink_;
    Float16 v16_{};
    T* at4_ = sink_;
    Double4 v4_{};
};

// affine (offset 0) of one run (x → x̂, y) while taking the shifted sums of another run of the
// same length, `next`: s1 += Σ(next − shift), s2 += Σ(next − shift)², the same values in the
// same order as shifted_sums, and the same y and x̂ as affine / affine_streamed. g and b are one
// value (g_step 0: a channel's run) or one per element (g_step 1: a row). A kernel that
// normalizes one set while reading the next from memory keeps reads and writes in flight
// together, where normalizing after summing leaves the write path idle during the sums and the
// read path idle during the normalization; on rows in cache it also fills the vector units
// that each loop alone leaves half idle (the sums are add-bound, the normalization load-bound).
// y is streamed when `stream` (x̂ must then be null and y 16-byte aligned).
// With Lanes, the lane pairs of next's sums into *lanes instead (lanes_only(n) floats).
template <bool Lanes, bool StoresXhat, bool Streams, bool OneG, bool Offset, class T>
__attribute__((always_inline)) inline void affine_summing_next_with(
    const T* x, std::size_t n, T m, T sc, T off, const T* g, const T* b, T* xhat, T* y,
    const T* next, double shift, double& s1, double& s2, LanePairs* lanes) {
    const Splat<T> mk{m}, sck{sc}, offk{off}, gk{g[0]}, bk{b[0]}, shiftk{T(shift)};
    LateStores<T> late_y, late_xhat;
    const auto term = [&](auto tag, std::size_t i) __attribute__((always_inline)) {
        using V = decltype(tag);
        // The next run's values are loaded before this step's stores. Loaded after them,
        // where x and y lie at the same offset within a 4 KiB page (as large allocations
        // often do) each load matched the store just issued in its low twelve address bits,
        // and the core held it back as if it read that store (4K aliasing): LayerNorm's
        // training forward on (128, 1024), one thread, 2-vCPU Intel Xeon VM, the two
        // orders alternated call by call, took 0.91 of the time with y at x's page offset,
        // 0.96-0.99 at eleven other offsets.
        const V d = load_as<V>(next + i) - shiftk.template as<V>();
        const V h = standardized(load_as<V>(x + i), mk.template as<V>(), sck.template as<V>());
        if constexpr (StoresXhat) late_xhat.put(xhat + i, h);
        V hy = h;
        if constexpr (Offset) hy = h + offk.template as<V>();
        if constexpr (OneG)
            hy = hy * gk.template as<V>() + bk.template as<V>();
        else
            hy = hy * load_as<V>(g + i) + load_as<V>(b + i);
        if constexpr (Streams)
            store_as<V>(y + i, hy, true);
        else
            late_y.put(y + i, hy);
        return std::pair{d, d};
    };
    if constexpr (Lanes)
        paired_lane_pairs(n, term, *lanes);
    else
        paired_sums<T>(n, term, s1, s2);
    if constexpr (StoresXhat) late_xhat.flush();
    if constexpr (!Streams) late_y.flush();
}

template <class T>
NORMLAB_ISA_CLONES void affine_summing_next(const T* x, std::size_t n, T m, T sc, T off, const T* g,
                                            const T* b, std::size_t g_step, T* xhat, T* y,
                                            bool stream, const T* next, double shift, double& s1,
                                            double& s2) {
    with_flags(
        xhat != nullptr,
        stream, [&](auto stores_xhat, auto streams) __attribute__((always_inline)) {
            with_flags(
                g_step == 0,
                off != T(0), [&](auto one_g, auto offset) __attribute__((always_inline)) {
                    affine_summing_next_with<false, decltype(stores_xhat)::value,
                                             decltype(streams)::value, decltype(one_g)::value,
                                             decltype(offset)::value>(
                        x, n, m, sc, off, g, b, xhat, y, next, shift, s1, s2, nullptr);
                });
        });
}

// y (and x̂) of [begin, end) of one channel: affine with g_step 0, y streamed when `stream`
// (without the closing fence, which the caller issues once).
template <class T>
__attribute__((always_inline)) inline void affine_span(const T* x, std::size_t begin,
                                                       std::size_t end, T m, T sc, T gs, T bs,
                                                       T* xhat, T* y, bool stream) {
    if constexpr (std::is_same_v<T, float>) {
        const Splat<T> mk(m), sck(sc), gk(gs), bk(bs);
        aligned_vectors(
            begin, end, y, stream, [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                using V = decltype(tag);
                const V h =
                    standardized(load_as<V>(x + i), mk.template as<V>(), sck.template as<V>());
                if (xhat) store_as<V>(xhat + i, h, false);
                store_as<V>(y + i, h * gk.template as<V>() + bk.template as<V>(), stream);
            });
    } else {
        for (std::size_t i = begin; i < end; ++i) {
            const T h = standardized(x[i], m, sc);
            if (xhat) xhat[i] = h;
            y[i] = h * gs + bs;
        }
    }
}

// A set of `channels` runs of length s (x, y and x̂ contiguous, g and b per channel) normalized
// with offset 0 while the shifted sums of the next block of as many values, `next`, are taken
// as one run: the same sums in the same order as shifted_sums(next, channels·s), the same y and
// x̂ as affine / affine_streamed run by run. For per-sample sets with trailing dimensions, as
// affine_summing_next is for runs of one channel.
template <class T>
NORMLAB_ISA_CLONES void affine_channels_summing_next(const T* x, std::size_t s,
                                                     std::size_t channels, T m, T sc, const T* g,
                                                     const T* b, T* xhat, T* y, bool stream,
                                                     const T* next, double shift, double& s1,
                                                     double& s2) {
    paired_sums<T>(
        channels * s,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V d = load_as<V>(next + i) - splat<V>(T(shift));
            return std::pair{d, d};
        },
        s1, s2,
        [&](std::size_t begin, std::size_t end) __attribute__((always_inline)) {
            while (begin < end) {
                const std::size_t c = begin / s, stop = std::min(end, (c + 1) * s);
                affine_span(x, begin, stop, m, sc, g[c], b[c], xhat, y, stream);
                begin = stop;
            }
        });
}

// Whether the dense kernels below take a group's columns from the last to the first. A store
// to an output lying a few bytes above an input modulo 4 KiB (as glibc places a block allocated
// right after another of the same size: 16 bytes further) matches in its low 12 address bits
// the input's next columns, which a walk to the right loads next, and the core holds those
// loads back until the store is done. Walking to the left, the next loads lie below every store
// so far. BatchNorm on rows in cache, AMD EPYC VM, 2 threads, alternated call by call in one
// process: inference on (256, 1024) with y 16 / 48 bytes above x 43.6 -> 36.1 / 47.9 -> 34.4 us,
// (1792, 512) 135.7 -> 128.1 / 156.8 -> 143.2; training forward on (256, 1024) 65.0 -> 54.6 /
// 91.1 -> 54.9. Outputs just below an input (or none near) keep the walk to the right, and so do
// rows taken one by one from memory, where a walk to the left ran 10-15% slower ((4096, 768)).
inline bool columns_backward(std::initializer_list<const void*> outputs,
                             std::initializer_list<const void*> inputs) {
    constexpr std::uintptr_t kNear = 64;
    bool above = false, below = false;
    for (const void* out : outputs)
        for (const void* in : inputs) {
            if (!out || !in) continue;
            const std::uintptr_t d = bytes_above_in_page(out, in);
            above = above || (d > 0 && d < kNear);
            below = below || d > kPage - kNear;
        }
    return above && !below;
}

// Rows per group of the dense kernels below where their input stays in cache (moments.cpp's
// for_each_dense_rows).
inline constexpr std::size_t kColumnGroupRows = 4;

// Rows r, r + apart, r + 2·apart and r + 3·apart at one column block, (value, store) the pair
// that f(V{}, i) returned: value(r) loads and computes row r's columns, store(r, v) writes them.
// All four are loaded before any is stored.
template <class Pair>
__attribute__((always_inline)) inline void rows_apart(std::size_t r, std::size_t apart,
                                                      const Pair& pair) {
    static_assert(kColumnGroupRows == 4, "a group's values are named one by one");
    const auto& [value, store] = pair;
    const auto v0 = value(r), v1 = value(r + apart), v2 = value(r + 2 * apart),
               v3 = value(r + 3 * apart);
    store(r, v0);
    store(r + apart, v1);
    store(r + 2 * apart, v2);
    store(r + 3 * apart, v3);
}

// The rows r < rows of a group at one column block (value, store as in rows_apart). A full group
// loads all its rows before it stores any. Rows 4 KiB apart (C = 1024 floats; every other row
// at C = 512) match each other in the low 12 address bits, so the next row's load, issued after
// a store to this one a few bytes from it modulo 4 KiB, was held back until the store was done.
// BatchNorm on rows, AMD EPYC VM, 2 threads, the two alternated call by call in one process:
// inference (256, 1024) 49 -> 36 us, (1792, 512) 169 -> 124; training forward 85 -> 72 and
// 207 -> 195; backward 103 -> 94 and 284 -> 277 (the same values: each is computed alone).
template <class Pair>
__attribute__((always_inline)) inline void down_rows(std::size_t rows, const Pair& pair) {
    if (rows == kColumnGroupRows) {
        rows_apart(0, 1, pair);
        return;
    }
    const auto& [value, store] = pair;
    for (std::size_t r = 0; r < rows; ++r)
        store(r, value(r));
}

// Walks the columns i < n of `rows` rows: f(V{}, i) loads the coefficients of the columns at i
// (a vector of V's width, or one value for V = T) and returns the pair (value, store) that
// computes and writes those columns of row r from them (down_rows). For floats a vector of columns
// goes down all the rows, so each coefficient is loaded once per group of rows (the compiler cannot
// hoist such loads past the stores itself: it must assume they may alias): sixteen columns where
// kernels::wide_vectors says so, else eight, from the first column whose address in `line_of` (row
// 0 of the output) is on a 64-byte line (values_before_line); the columns before it and past the
// last vector one by one. Every value is computed alone, so the split does not change any. The
// dense kernels below are this loop with different bodies. With `row_by_row`, the rows go one after
// the other instead, each along all its columns, as a single row does. With `backward`
// (columns_backward; in groups of rows only), the columns are taken from the last to the first,
// split as in the other direction.
template <class T, bool RowsInStreams = false, class F>
__attribute__((always_inline)) inline void down_columns(std::size_t rows, std::size_t n,
                                                        const T* line_of, F&& f,
                                                        bool row_by_row = false,
                                                        bool backward = false) {
    // Columns [0, head) one by one, [head, wide_end) sixteen at a time, [wide_end, narrow_end)
    // eight, the rest one by one.
    std::size_t head = 0, wide_end = 0, narrow_end = 0;
    if constexpr (std::is_same_v<T, float>) {
        head = values_before_line(line_of, n);
        wide_end = wide_vectors() ? head + (n - head) / kLanes * kLanes : head;
        narrow_end = wide_end + (n - wide_end) / 8 * 8;
    }
    const auto columns = [&](auto&& walk) __attribute__((always_inline)) {
        for (std::size_t i = 0; i < head; ++i)
            walk(T{}, i);
        if constexpr (std::is_same_v<T, float>) {
            for (std::size_t i = head; i < wide_end; i += kLanes)
                walk(Float16{}, i);
            for (std::size_t i = wide_end; i < narrow_end; i += 8)
                walk(Float8{}, i);
        }
        for (std::size_t i = narrow_end; i < n; ++i)
            walk(T{}, i);
    };
    const auto columns_to_the_left = [&](auto&& walk) __attribute__((always_inline)) {
        for (std::size_t i = n; i > narrow_end; --i)
            walk(T{}, i - 1);
        if constexpr (std::is_same_v<T, float>) {
            for (std::size_t i = narrow_end; i > wide_end; i -= 8)
                walk(Float8{}, i - 8);
            for (std::size_t i = wide_end; i > head; i -= kLanes)
                walk(Float16{}, i - kLanes);
        }
        for (std::size_t i = head; i > 0; --i)
            walk(T{}, i - 1);
    };
    // A single row (the dense kernels take rows one at a time from memory, for_each_dense_rows)
    // goes straight along its columns, each coefficient a memory operand:
    // through the loop down the rows, every vector paid that loop's setup and GCC first loaded
    // the coefficients into registers (BatchNorm on (4096, 768), AMD EPYC VM, 2 threads, builds
    // alternated: inference 5-15% faster, backward 3-15%).
    // Row by row with RowsInStreams, the rows go as four streams a quarter of them apart,
    // each vector of columns' coefficients loaded once for the four (rows_apart), the rows left
    // over one by one: one stream of rows kept too few lines of the L3 or memory in flight.
    // BatchNorm's normalization (affine_columns) on (4096, 768), AMD EPYC VM, 2 threads, the two
    // builds alternated call by call in one process, y placed at a fixed distance from x modulo
    // 4 KiB: inference 0.67-0.93 of the time with y 128 bytes to 2 KiB above x or 64 bytes below
    // (most 0.70-0.83, in fast and slow phases of the VM), 0.84-1.17 with y 16-64 bytes above
    // (4 KiB aliasing: a store to one stream matches the next loads of all four);
    // (8192, 1024) 0.92; training forward (kernels::standardize, statistics first) 0.89-0.98 on
    // (4096, 768), 0.97 on (8192, 1024). Adjacent rows instead (two, or four of a group, as in
    // cache) were 0.94-1.06 of one stream in a standalone loop. The backward's apply keeps one
    // stream: three arrays in four streams each took 1.0-1.2x its time on the same shapes.
    if (rows == 1 || row_by_row) {
        // The first kColumnGroupRows·apart rows go in four streams, the rest one by one.
        std::size_t apart = 0;
        if constexpr (RowsInStreams) {
            apart = rows / kColumnGroupRows;
            for (std::size_t r = 0; r < apart; ++r)
                columns([&](auto tag, std::size_t i)
                            __attribute__((always_inline)) { rows_apart(r, apart, f(tag, i)); });
        }
        for (std::size_t r = kColumnGroupRows * apart; r < rows; ++r)
            columns([&](auto tag, std::size_t i) __attribute__((always_inline)) {
                const auto [value, store] = f(tag, i);
                store(r, value(r));
            });
    } else if (backward)
        columns_to_the_left([&](auto tag, std::size_t i)
                                __attribute__((always_inline)) { down_rows(rows, f(tag, i)); });
    else
        columns([&](auto tag, std::size_t i)
                    __attribute__((always_inline)) { down_rows(rows, f(tag, i)); });
}

// The dense form, every coefficient per column: `rows` rows of n values, `stride` apart, taken
// down the columns or row by row (down_columns; row by row in four streams with RowsInStreams).
template <class T, bool RowsInStreams>
NORMLAB_ISA_CLONES void affine_columns_walk(const T* x, std::size_t rows, std::size_t stride,
                                            std::size_t n, const T* m, const T* sc, const T* off,
                                            const T* g, const T* b, T* xhat, T* y,
                                            bool row_by_row) {
    with_flags(
        xhat != nullptr,
        off != nullptr, [&](auto stores_xhat, auto offset) __attribute__((always_inline)) {
            down_columns<T, RowsInStreams>(
                rows, n, y,
                [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    const V mv = load_as<V>(m + i), scv = load_as<V>(sc + i),
                            gv = load_as<V>(g + i), bv = load_as<V>(b + i);
                    V offv{};
                    if constexpr (offset) offv = load_as<V>(off + i);
                    // The pair is built from the lambdas themselves (here and in the kernels
                    // below): named first and copied into it, their vectors went through the
                    // stack and BatchNorm's inference on (4096, 768) took 7.3-7.8 ms, not 0.77.
                    return std::pair(
                        [=](std::size_t r) __attribute__((always_inline)) {
                            const V h = standardized(load_as<V>(x + r * stride + i), mv, scv);
                            V shifted = h;
                            if constexpr (offset) shifted = shifted + offv;
                            return std::pair{h, shifted * gv + bv};
                        },
                        [=](std::size_t r, const std::pair<V, V>& h_y)
                            __attribute__((always_inline)) {
                                const std::size_t at = r * stride + i;
                                if constexpr (stores_xhat) store_as<V>(xhat + at, h_y.first, false);
                                store_as<V>(y + at, h_y.second, false);
                            });
                },
                row_by_row, columns_backward({y, xhat}, {x}));
        });
}

// affine_columns_walk, row by row in four streams, in groups of rows as before: with both walks
// in one function, BatchNorm's inference in cache ((1792, 512), (256, 1024); groups of four
// rows, a walk that did not change) took 1.04-1.16x the time (AMD EPYC VM, 2 threads,
// alternated in one process), from the code of the four streams beside its own.
template <class T>
inline void affine_columns(const T* x, std::size_t rows, std::size_t stride, std::size_t n,
                           const T* m, const T* sc, const T* off, const T* g, const T* b, T* xhat,
                           T* y, bool row_by_row) {
    if (row_by_row)
        affine_columns_walk<T, true>(x, rows, stride, n, m, sc, off, g, b, xhat, y, true);
    else
        affine_columns_walk<T, false>(x, rows, stride, n, m, sc, off, g, b, xhat, y, false);
}

// dx = applied(cg, g, dy, c1, cx, x̂), g per element (g_step 1) or one value (g_step 0); null
// xhat: cx = 0.
template <class T>
__attribute__((always_inline)) inline void apply_inline(const T* dy, const T* xhat, std::size_t n,
                                                        T cg, const T* g, std::size_t g_step, T c1,
                                                        T cx, T* dx) {
    if (g_step == 0) {
        const T gs = g[0];
        if (xhat) {
#pragma omp simd
            for (std::size_t i = 0; i < n; ++i)
                dx[i] = applied(cg, gs, dy[i], c1, cx, xhat[i]);
        } else {
#pragma omp simd
            for (std::size_t i = 0; i < n; ++i)
                dx[i] = applied(cg, gs, dy[i], c1);
        }
        return;
    }
    if (xhat) {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i)
            dx[i] = applied(cg, g[i], dy[i], c1, cx, xhat[i]);
    } else {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i)
            dx[i] = applied(cg, g[i], dy[i], c1);
    }
}

template <class T>
NORMLAB_ISA_CLONES void apply(const T* dy, const T* xhat, std::size_t n, T cg, const T* g,
                              std::size_t g_step, T c1, T cx, T* dx) {
    apply_inline(dy, xhat, n, cg, g, g_step, c1, cx, dx);
}

// apply with g_step 0 (one channel's run), writing with streaming stores.
template <class T>
NORMLAB_ISA_CLONES void apply_streamed(const T* dy, const T* xhat, std::size_t n, T cg, T gs, T c1,
                                       T cx, T* dx) {
    if constexpr (std::is_same_v<T, float>) {
        const Splat<T> cgk(cg), gk(gs), c1k(c1), cxk(cx);
        if (xhat)
            aligned_vectors(
                0, n, dx, true, [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    store_as<V>(
                        dx + i,
                        applied(cgk.template as<V>(), gk.template as<V>(), load_as<V>(dy + i),
                                c1k.template as<V>(), cxk.template as<V>(), load_as<V>(xhat + i)),
                        true);
                });
        else
            aligned_vectors(
                0, n, dx, true, [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    store_as<V>(dx + i,
                                applied(cgk.template as<V>(), gk.template as<V>(),
                                        load_as<V>(dy + i), c1k.template as<V>()),
                                true);
                });
    } else {
        apply(dy, xhat, n, cg, &gs, 0, c1, cx, dx);
    }
}

// The backward stages when x̂ is recomputed from the input: h = standardized(x, m, sc), exactly as
// affine computes x̂, formed in registers. grad_sums_from_input is grad_sums over
// h, apply_from_input is apply, and so on: the same bits as those functions reading a stored x̂.
template <class T>
NORMLAB_ISA_CLONES void grad_sums_from_input(const T* dy, const T* x, T m, T sc, const T* gamma,
                                             std::size_t n, double& s1, double& s2) {
    paired_sums<T>(
        n,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V h = standardized(load_as<V>(x + i), splat<V>(m), splat<V>(sc));
            return std::pair{weighted<V>(dy, gamma, i), h};
        },
        s1, s2);
}

// Four vectors of four doubles as the columns of a 4×4 block: out[j] holds lane j of each,
// in[i]'s in lane i.
__attribute__((always_inline)) inline void transpose4(Double4 a, Double4 b, Double4 c, Double4 d,
                                                      Double4 (&out)[4]) {
    const Double4 t0 = __builtin_shufflevector(a, b, 0, 4, 2, 6);
    const Double4 t1 = __builtin_shufflevector(a, b, 1, 5, 3, 7);
    const Double4 t2 = __builtin_shufflevector(c, d, 0, 4, 2, 6);
    const Double4 t3 = __builtin_shufflevector(c, d, 1, 5, 3, 7);
    out[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    out[1] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    out[2] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    out[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

// Four runs' totals side by side, run j in lane j, from each run's lane pairs (lane_pairs16):
// total's order, lane pairs 0–3 of lo, then of hi, added one after the other to 0.
__attribute__((always_inline)) inline Double4 four_totals(const Double4 (&lo)[4],
                                                          const Double4 (&hi)[4]) {
    Double4 p[4], r[4];
    transpose4(lo[0], lo[1], lo[2], lo[3], p);
    transpose4(hi[0], hi[1], hi[2], hi[3], r);
    Double4 t = Double4{};
    for (int j = 0; j < 4; ++j)
        t += p[j];
    for (int j = 0; j < 4; ++j)
        t += r[j];
    return t;
}

// The totals of four runs from their lane pairs, side by side (four_totals): run j's Σu in lane j
// of t1, its Σu·w in lane j of t2, each the same bits as total() of that run's pairs.
__attribute__((always_inline)) inline void four_lane_totals(const LanePairs* lanes, Double4& t1,
                                                            Double4& t2) {
    Double4 a_lo[4], a_hi[4], q_lo[4], q_hi[4];
    for (std::size_t j = 0; j < 4; ++j) {
        a_lo[j] = lanes[j].a_lo;
        a_hi[j] = lanes[j].a_hi;
        q_lo[j] = lanes[j].q_lo;
        q_hi[j] = lanes[j].q_hi;
    }
    t1 = four_totals(a_lo, a_hi);
    t2 = four_totals(q_lo, q_hi);
}

// grad_sums_from_input of `rows` rows of n values, row r at r·stride with m[r], sc[r]: s1[r] =
// Σγ·dy and s2[r] = Σγ·dy·x̂ of row r (set, not added to), the same bits as a call per row into
// sums starting from 0. Rows of lanes_only(n) floats are taken four at a time, their totals
// side by side in vectors (four_totals), where a row's totals were a chain of sixteen dependent
// adds after its loop.
template <class T>
NORMLAB_ISA_CLONES void rows_grad_sums_from_input(const T* dy, const T* x, std::size_t rows,
                                                  std::size_t stride, const T* m, const T* sc,
                                                  const T* gamma, std::size_t n, double* s1,
                                                  double* s2) {
    const auto row_term = [&](std::size_t r) __attribute__((always_inline)) {
        const T* const dy_row = dy + r * stride;
        const T* const x_row = x + r * stride;
        const T mr = m[r], scr = sc[r];
        return [=](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V h = standardized(load_as<V>(x_row + i), splat<V>(mr), splat<V>(scr));
            return std::pair{weighted<V>(dy_row, gamma, i), h};
        };
    };
    std::size_t r = 0;
    if constexpr (std::is_same_v<T, float>) {
        if (lanes_only(n)) {
            for (; r + 4 <= rows; r += 4) {
                LanePairs lanes[4];
                for (std::size_t j = 0; j < 4; ++j)
                    paired_lane_pairs(n, row_term(r + j), lanes[j]);
                Double4 t1, t2;
                four_lane_totals(lanes, t1, t2);
                std::memcpy(s1 + r, &t1, sizeof t1);
                std::memcpy(s2 + r, &t2, sizeof t2);
            }
        }
    }
    for (; r < rows; ++r) {
        double a = 0, b = 0;
        paired_sums<T>(n, row_term(r), a, b);
        s1[r] = a;
        s2[r] = b;
    }
}

// paired_sums of R runs of n floats at once (n >= kShortRun), run j's (u, w) = term(V{}, j, i),
// added to s1[j], s2[j]: the same lanes, blocks, totals and tail as R calls of paired_sums, so
// the same bits. One run's float lanes are a chain of dependent adds through each block, and its
// totals and tail wait on that chain; side by side, R runs' chains overlap. Runs of a few hundred
// values (14×14 feature maps) were summed at about half the speed of long ones: collect_moments
// on (4, 256, 14, 14), one thread, fastest of 3000 calls, 38.7-39.9 -> 29.2-35.4 us (four runs
// at a time; (1, 64, 56, 56), the same bytes in long runs, 17-22). Eight floats per vector, two
// vectors per sixteen lanes (the narrow width of paired_sums), two runs at a time (four would not
// fit AVX2's registers).
template <std::size_t R, class Term>
__attribute__((always_inline)) inline void interleaved_run_sums(std::size_t n, Term&& term,
                                                                double* s1, double* s2) {
    Sum16 a[R], q[R];
    const std::size_t body = n - n % kLanes;
    for (std::size_t i = 0; i < body;) {
        const std::size_t end = std::min(body, i + kFloatBlock);
        Float8 fa0[R] = {}, fa1[R] = {}, fq0[R] = {}, fq1[R] = {};
        for (; i < end; i += kLanes) {
#pragma GCC unroll 4
            for (std::size_t j = 0; j < R; ++j) {
                const auto [u0, w0] = term(Float8{}, j, i);
                const auto [u1, w1] = term(Float8{}, j, i + 8);
                fa0[j] += u0;
                fa1[j] += u1;
                fq0[j] += u0 * w0;
                fq1[j] += u1 * w1;
            }
        }
#pragma GCC unroll 4
        for (std::size_t j = 0; j < R; ++j) {
            add_widened(a[j], fa0[j], fa1[j]);
            add_widened(q[j], fq0[j], fq1[j]);
        }
    }
    double ta[R], tq[R];
#pragma GCC unroll 4
    for (std::size_t j = 0; j < R; ++j) {
        ta[j] = total(a[j]);
        tq[j] = total(q[j]);
    }
    for (std::size_t i = body; i < n; ++i)
#pragma GCC unroll 4
        for (std::size_t j = 0; j < R; ++j) {
            const auto [u, w] = term(float{}, j, i);
            ta[j] += double(u);
            tq[j] += double(u) * double(w);
        }
#pragma GCC unroll 4
    for (std::size_t j = 0; j < R; ++j) {
        s1[j] += ta[j];
        s2[j] += tq[j];
    }
}

// Lane j + lane j + 8 of sixteen lanes in two vectors of eight: lane_pairs16's lo (pairs 0-3)
// and hi (pairs 4-7), the same sums.
__attribute__((always_inline)) inline void lane_pairs16(const Double8 (&s)[2], Double4& lo,
                                                        Double4& hi) {
    const Double8 pairs = s[0] + s[1];
    lo = __builtin_shufflevector(pairs, pairs, 0, 1, 2, 3);
    hi = __builtin_shufflevector(pairs, pairs, 4, 5, 6, 7);
}

// Sixteen float lanes widened and added to two vectors of eight doubles (add_widened). Here with
// __builtin_convertvector, not through arrays as add_widened(double*, Float16) converts for the
// column sums: in the four-runs loops that made BatchNorm's training forward on (2, 64, 56, 56)
// and (8, 256, 14, 14) 1.2-1.4x slower (interleaved runs). All sixteen in one conversion: GCC 12
// lowers a conversion of eight floats to eight doubles as four of four, glued with extracts and
// inserts (nine instructions where this takes three); BatchNorm's statistics pass on
// (8, 256, 14, 14), runs of 196 values widened once each, went from 1.59-1.62 to 1.43-1.47 times
// a plain float sum loop in the same process (2 threads, Intel Xeon VM), its gradient sums 0.95.
__attribute__((always_inline)) inline void add_widened(Double8 (&s)[2], Float16 f) {
    using Double16 = double __attribute__((vector_size(128)));
    const Double16 wide = __builtin_convertvector(f, Double16);
    s[0] += __builtin_shufflevector(wide, wide, 0, 1, 2, 3, 4, 5, 6, 7);
    s[1] += __builtin_shufflevector(wide, wide, 8, 9, 10, 11, 12, 13, 14, 15);
}

// Four vectors of four floats, v[j] = (v_j0 .. v_j3), turned and widened: out[k] = (v_0k .. v_3k).
__attribute__((always_inline)) inline void transpose_widened(const Float4 (&v)[4],
                                                             Double4 (&out)[4]) {
    const Float4 a = __builtin_shufflevector(v[0], v[1], 0, 4, 1, 5);
    const Float4 b = __builtin_shufflevector(v[2], v[3], 0, 4, 1, 5);
    const Float4 c = __builtin_shufflevector(v[0], v[1], 2, 6, 3, 7);
    const Float4 d = __builtin_shufflevector(v[2], v[3], 2, 6, 3, 7);
    out[0] = __builtin_convertvector(__builtin_shufflevector(a, b, 0, 1, 4, 5), Double4);
    out[1] = __builtin_convertvector(__builtin_shufflevector(a, b, 2, 3, 6, 7), Double4);
    out[2] = __builtin_convertvector(__builtin_shufflevector(c, d, 0, 1, 4, 5), Double4);
    out[3] = __builtin_convertvector(__builtin_shufflevector(c, d, 2, 3, 6, 7), Double4);
}

// interleaved_run_sums for four runs at sixteen floats per vector (paired_sums' wide width, on
// AVX-512), every accumulator one register; the four runs' totals and tails side by side, run j
// in lane j: total's order (four_totals), then the tail's values one after the other, as
// paired_sums adds them to each run's total.
template <class Term>
__attribute__((always_inline)) inline void four_wide_run_sums(std::size_t n, Term&& term,
                                                              double* s1, double* s2) {
    Double8 a[4][2] = {}, q[4][2] = {};
    const std::size_t body = n - n % kLanes;
    for (std::size_t i = 0; i < body;) {
        const std::size_t end = std::min(body, i + kFloatBlock);
        Float16 fa[4] = {}, fq[4] = {};
        for (; i < end; i += kLanes) {
#pragma GCC unroll 4
            for (std::size_t j = 0; j < 4; ++j) {
                const auto [u, w] = term(Float16{}, j, i);
                fa[j] += u;
                fq[j] += u * w;
            }
        }
#pragma GCC unroll 4
        for (std::size_t j = 0; j < 4; ++j) {
            add_widened(a[j], fa[j]);
            add_widened(q[j], fq[j]);
        }
    }
    const auto totals = [](const Double8(&sums)[4][2]) __attribute__((always_inline)) {
        Double4 lo[4], hi[4];
        for (std::size_t j = 0; j < 4; ++j)
            lane_pairs16(sums[j], lo[j], hi[j]);
        return four_totals(lo, hi);
    };
    Double4 ta = totals(a), tq = totals(q);
    // The tail four values at a time: each run's four in one vector of four (the same float
    // operations per value as one by one), turned so that vector k holds value k of the four
    // runs, and added in double in value order, as one by one. On (8, 256, 14, 14), runs of 196
    // (twelve vectors and a tail of four), sixteen scalar terms per four runs became four.
    std::size_t i = body;
    for (; i + 4 <= n; i += 4) {
        Float4 u[4], w[4];
#pragma GCC unroll 4
        for (std::size_t j = 0; j < 4; ++j) {
            const auto [uj, wj] = term(Float4{}, j, i);
            u[j] = uj;
            w[j] = wj;
        }
        Double4 uk[4], wk[4];
        transpose_widened(u, uk);
        transpose_widened(w, wk);
#pragma GCC unroll 4
        for (std::size_t k = 0; k < 4; ++k) {
            ta += uk[k];
            tq += uk[k] * wk[k];
        }
    }
    for (; i < n; ++i) {
        const auto [u0, w0] = term(float{}, 0, i);
        const auto [u1, w1] = term(float{}, 1, i);
        const auto [u2, w2] = term(float{}, 2, i);
        const auto [u3, w3] = term(float{}, 3, i);
        const Double4 u = {double(u0), double(u1), double(u2), double(u3)};
        const Double4 w = {double(w0), double(w1), double(w2), double(w3)};
        ta += u;
        tq += u * w;
    }
    const Double4 out1 = load_doubles(s1) + ta, out2 = load_doubles(s2) + tq;
    std::memcpy(s1, &out1, sizeof out1);
    std::memcpy(s2, &out2, sizeof out2);
}

// Runs shorter than this are where the four-runs loop prefetches (consecutive_run_sums).
constexpr std::size_t kPrefetchedRunBytes = 4096;

// paired_sums of `runs` consecutive runs of n values each (run j at j·n), term(V{}, j, i) at
// value i of run j, run j's sums added to s1[j], s2[j], the same bits as run by run: float runs
// from kShortRun values on go four (four_wide_run_sums, on AVX-512) or two
// (interleaved_run_sums) side by side, others and the last few one by one. On AVX-512, runs
// shorter than kPrefetchedRunBytes also call prefetch(offset) with each vector's offset in the
// next four runs (4·n values on): the loads of stage 3 waited on the L2 and L3 there, which the
// hardware's prefetcher did not hide (a prefetch never faults, so those past the last run cost
// nothing else). On the 2-vCPU Intel Xeon VM (AVX-512), with and without the prefetch alternated
// call by call in one process: BatchNorm backward on (8, 256, 14, 14) (runs of 784 bytes) took
// 0.89-0.91 of the time, Batch Renormalization's 0.89-0.95, their training forwards 0.96-0.98;
// the same prefetch on (2, 64, 56, 56), whose runs of 12.5 KB the hardware follows, cost 3%, and
// 8 or 16 runs ahead were no better than 4. AVX2 machines (two runs side by side) were not
// measured and do not prefetch.
template <class T, class Term, class Prefetch>
__attribute__((always_inline)) inline void consecutive_run_sums(std::size_t n, std::size_t runs,
                                                                Term&& term, double* s1, double* s2,
                                                                Prefetch&& prefetch) {
    std::size_t r = 0;
    if constexpr (std::is_same_v<T, float>) {
        // Vectors of sixteen run only in the four-runs loop. Whether it prefetches is decided
        // outside it: tested inside, the branch kept GCC from hoisting out of the loop what the
        // terms broadcast per run (runs_shifted_sums converted and broadcast each run's shift for
        // every vector of sixteen). BatchNorm's statistics pass (collect_moments), 2 threads,
        // 2-vCPU Intel Xeon VM, two builds alternated: (8, 256, 14, 14) 0.91 of the time,
        // (2, 64, 56, 56) 0.89, (32, 64, 56, 56) 0.92.
        const std::size_t ahead = 4 * n;
        if (n >= kShortRun && wide_vectors()) {
            with_flag(
                n * sizeof(T) < kPrefetchedRunBytes, [&](auto prefetching) __attribute__((
                                                         always_inline)) {
                    const auto runs_from_r = [&](auto tag, std::size_t j, std::size_t i)
                        __attribute__((always_inline)) {
                        if constexpr (prefetching && std::is_same_v<decltype(tag), Float16>)
                            prefetch((r + j) * n + i + ahead);
                        return term(tag, r + j, i);
                    };
                    for (; r + 4 <= runs; r += 4)
                        four_wide_run_sums(n, runs_from_r, s1 + r, s2 + r);
                });
        } else if (n >= kShortRun) {
            const auto runs_from_r = [&](auto tag, std::size_t j, std::size_t i)
                __attribute__((always_inline)) {
                return term(tag, r + j, i);
            };
            for (; r + 2 <= runs; r += 2)
                interleaved_run_sums<2>(n, runs_from_r, s1 + r, s2 + r);
        }
    }
    for (; r < runs; ++r)
        paired_sums<T>(
            n,
            [&](auto tag, std::size_t i) __attribute__((always_inline)) { return term(tag, r, i); },
            s1[r], s2[r]);
}

// shifted_sums of `runs` consecutive runs of n values, run j shifted by shift[j]:
// s1[j] += Σ(x − shift[j]), s2[j] += Σ(x − shift[j])².
template <class T>
NORMLAB_ISA_CLONES void runs_shifted_sums(const T* x, std::size_t n, std::size_t runs,
                                          const double* shift, double* s1, double* s2) {
    consecutive_run_sums<T>(
        n, runs,
        [&](auto tag, std::size_t j, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            const V d = load_as<V>(x + j * n + i) - splat<V>(T(shift[j]));
            return std::pair{d, d};
        },
        s1, s2, [&](std::size_t at) __attribute__((always_inline)) { __builtin_prefetch(x + at); });
}

// grad_sums (gamma null) of `runs` consecutive runs of n values, s1[j] += Σdy and
// s2[j] += Σdy·x̂ of run j, with x̂ stored in xhat, or (xhat null) formed from the input x with
// m[j], sc[j] as grad_sums_from_input forms it, or neither (both null: x̂ taken as 0).
template <class T>
NORMLAB_ISA_CLONES void runs_grad_sums(const T* dy, const T* xhat, const T* x, const T* m,
                                       const T* sc, std::size_t n, std::size_t runs, double* s1,
                                       double* s2) {
    with_flag(
        xhat == nullptr && x != nullptr, [&](auto from_input) __attribute__((always_inline)) {
            consecutive_run_sums<T>(
                n, runs,
                [&](auto tag, std::size_t j, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    const std::size_t at = j * n + i;
                    V h{};
                    if constexpr (from_input)
                        h = standardized(load_as<V>(x + at), splat<V>(m[j]), splat<V>(sc[j]));
                    else if (xhat)
                        h = load_as<V>(xhat + at);
                    return std::pair{load_as<V>(dy + at), h};
                },
                s1, s2,
                [&, source = xhat ? xhat : x ](std::size_t at) __attribute__((always_inline)) {
                    __builtin_prefetch(dy + at);
                    if (source) __builtin_prefetch(source + at);
                });
        });
}

// column_grad_sums over h recomputed from the input: with m, sc per row (m_col null) or per
// column (m_row null); the `ahead` rows after them are prefetched. dy is weighted per column by
// w_col or else per row by w_row (g = dy·w, the product an array of g would hold) in the
// `weighted` instantiation, so that the loops of the other have nothing to test.
template <class T, bool weighted = false>
NORMLAB_ISA_CLONES void column_grad_sums_from_input(const T* dy, const T* x, std::size_t rows,
                                                    std::size_t stride, std::size_t n,
                                                    const T* m_row, const T* sc_row, const T* m_col,
                                                    const T* sc_col, double* s1, double* s2,
                                                    std::size_t ahead, const T* w_row = nullptr,
                                                    const T* w_col = nullptr) {
    column_paired_sums<T>(
        rows, n, dy,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            prefetch_ahead<V>(dy, x, rows, ahead, stride, i);
            V m{}, sc{}, w{};
            if (m_col) {
                m = load_as<V>(m_col + i);
                sc = load_as<V>(sc_col + i);
            }
            if (weighted && w_col) w = load_as<V>(w_col + i);
            return [=](std::size_t r) __attribute__((always_inline)) {
                const std::size_t at = r * stride + i;
                const V h = m_col ? standardized(load_as<V>(x + at), m, sc)
                                  : standardized(load_as<V>(x + at), splat<V>(m_row[r]),
                                                 splat<V>(sc_row[r]));
                V g = load_as<V>(dy + at);
                if constexpr (weighted) g *= w_col ? w : splat<V>(w_row[r]);
                return std::pair{g, h};
            };
        },
        s1, s2);
}

// apply_columns over h recomputed from the input with m, sc per column, down the columns or row
// by row (down_columns); row by row, each row's columns of dy and x prefetch the next row's.
template <class T>
NORMLAB_ISA_CLONES void apply_columns_from_input(const T* dy, const T* x, std::size_t rows,
                                                 std::size_t stride, std::size_t n, const T* m,
                                                 const T* sc, const T* cg, const T* g, const T* c1,
                                                 const T* cx, T* dx, bool row_by_row) {
    with_flag(
        row_by_row, [&](auto prefetches) __attribute__((always_inline)) {
            down_columns<T>(
                rows, n, dx,
                [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    const V mv = load_as<V>(m + i), scv = load_as<V>(sc + i),
                            cgv = load_as<V>(cg + i), gv = load_as<V>(g + i),
                            c1v = load_as<V>(c1 + i), cxv = load_as<V>(cx + i);
                    return std::pair(
                        [=](std::size_t r) __attribute__((always_inline)) {
                            const std::size_t at = r * stride + i;
                            if constexpr (prefetches)
                                if (r + 1 < rows)
                                    prefetch_ahead<V>(dy + at, x + at, 1, 1, stride, 0);
                            const V h = standardized(load_as<V>(x + at), mv, scv);
                            return applied(cgv, gv, load_as<V>(dy + at), c1v, cxv, h);
                        },
                        [=](std::size_t r, V d) __attribute__((always_inline)) {
                            store_as<V>(dx + r * stride + i, d, false);
                        });
                },
                row_by_row, columns_backward({dx}, {dy, x}));
        });
}

// apply_from_input (γ per column) of `rows` consecutive rows (at most kFloatSteps, as for
// column_paired_sums; row stride `stride`), row r with its own m_row[r], sc_row[r], cg[r],
// c1[r], cx[r], while taking the column sums of those rows as column_grad_sums_from_input does
// (s1[i] += Σ_rows dy[i], s2[i] += Σ_rows dy[i]·x̂[i]): the same dx and the same sums in the
// same order. Walking a block of columns down the rows keeps the column sums in registers, so
// dy and x are read once for both jobs. The `ahead` rows after them (the next group, whose sums
// come next) are prefetched.
template <class T>
NORMLAB_ISA_CLONES void apply_rows_summing_columns(const T* dy, const T* x, std::size_t rows,
                                                   std::size_t stride, std::size_t n,
                                                   const T* m_row, const T* sc_row, const T* cg,
                                                   const T* g, const T* c1, const T* cx, T* dx,
                                                   double* s1, double* s2, std::size_t ahead) {
    // The rows' coefficients, copied where no store to dx can reach them: read through the
    // pointers, each was loaded again after every store (the compiler must assume dx may alias
    // them), five loads per vector of dx on top of dy and x.
    struct RowCoefficients {
        T m, sc, cg, c1, cx;
    } coef[kFloatSteps];
    for (std::size_t r = 0; r < rows; ++r)
        coef[r] = {m_row[r], sc_row[r], cg[r], c1[r], cx[r]};
    column_paired_sums<T>(
        rows, n, dx,
        [&](auto tag, std::size_t i) __attribute__((always_inline)) {
            using V = decltype(tag);
            prefetch_ahead<V>(dy, x, rows, ahead, stride, i);
            const V gv = load_as<V>(g + i);
            return [ =, &coef ](std::size_t r) __attribute__((always_inline)) {
                const std::size_t at = r * stride + i;
                const RowCoefficients& k = coef[r];
                const V d = load_as<V>(dy + at);
                const V h = standardized(load_as<V>(x + at), splat<V>(k.m), splat<V>(k.sc));
                store_as<V>(dx + at,
                            applied(splat<V>(k.cg), gv, d, splat<V>(k.c1), splat<V>(k.cx), h),
                            false);
                return std::pair{d, h};
            };
        },
        s1, s2);
}

template <class T>
__attribute__((always_inline)) inline void apply_from_input_inline(const T* dy, const T* x, T m,
                                                                   T sc, std::size_t n, T cg,
                                                                   const T* g, std::size_t g_step,
                                                                   T c1, T cx, T* dx) {
    if (g_step == 0) {
        const T gs = g[0];
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) {
            const T h = standardized(x[i], m, sc);
            dx[i] = applied(cg, gs, dy[i], c1, cx, h);
        }
        return;
    }
#pragma omp simd
    for (std::size_t i = 0; i < n; ++i) {
        const T h = standardized(x[i], m, sc);
        dx[i] = applied(cg, g[i], dy[i], c1, cx, h);
    }
}

template <class T>
NORMLAB_ISA_CLONES void apply_from_input(const T* dy, const T* x, T m, T sc, std::size_t n, T cg,
                                         const T* g, std::size_t g_step, T c1, T cx, T* dx) {
    apply_from_input_inline(dy, x, m, sc, n, cg, g, g_step, c1, cx, dx);
}

// apply_from_input (g_step 0), or apply with x̂ stored in xhat (x null), over `runs` consecutive
// runs of n values, run j with its own cg[j], g[j], c1[j], cx[j] (and m[j], sc[j]): one call for a
// sample's runs of many channels instead of one per run, their bodies run by run.
// (Prefetching the run four runs on, as consecutive_run_sums does, gained nothing here: stage 4
// reads what stage 3 has just brought into the L2.)
template <class T>
NORMLAB_ISA_CLONES void runs_apply(const T* dy, const T* xhat, const T* x, const T* m, const T* sc,
                                   std::size_t n, std::size_t runs, const T* cg, const T* g,
                                   const T* c1, const T* cx, T* dx) {
    for (std::size_t j = 0; j < runs; ++j) {
        const std::size_t at = j * n;
        if (xhat)
            apply_inline(dy + at, xhat + at, n, cg[j], g + j, 0, c1[j], cx[j], dx + at);
        else
            apply_from_input_inline(dy + at, x + at, m[j], sc[j], n, cg[j], g + j, 0, c1[j], cx[j],
                                    dx + at);
    }
}

template <class T>
NORMLAB_ISA_CLONES void apply_streamed_from_input(const T* dy, const T* x, T m, T sc, std::size_t n,
                                                  T cg, T gs, T c1, T cx, T* dx) {
    if constexpr (std::is_same_v<T, float>) {
        const Splat<T> cgk(cg), gk(gs), c1k(c1), cxk(cx), mk(m), sck(sc);
        aligned_vectors(
            0, n, dx, true, [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                using V = decltype(tag);
                const V h =
                    standardized(load_as<V>(x + i), mk.template as<V>(), sck.template as<V>());
                store_as<V>(dx + i,
                            applied(cgk.template as<V>(), gk.template as<V>(), load_as<V>(dy + i),
                                    c1k.template as<V>(), cxk.template as<V>(), h),
                            true);
            });
    } else {
        apply_from_input(dy, x, m, sc, n, cg, &gs, 0, c1, cx, dx);
    }
}

// apply with g_step 0, run by run, of `runs` consecutive runs of length n (x̂ stored in xhat, or
// formed from x by m, sc; γ of run j in g[j]) while taking the gradient sums of the runs `step`
// values further, run j's into s1[j] += Σ next_dy, s2[j] += Σ next_dy·x̂ with its x̂ likewise
// from next_xhat or next_x by next_m, next_sc — the same values in the same order as grad_sums /
// grad_sums_from_input (without gamma) run by run, and the same dx as apply / apply_streamed /
// apply_from_input. As in affine_summing_next, the writes of one set and the reads of the next
// then overlap. A set's runs go in one call: a call per run through the clone dispatch, with the
// broadcasts of the set's coefficients, cost LayerNorm's and GroupNorm(32)'s backward on
// (8, 256, 14, 14), runs of 196 values, 5-7% on one thread. dx is streamed when
// `stream` (it must then be 16-byte aligned).
template <class T>
NORMLAB_ISA_CLONES void apply_runs_summing_next(const T* dy, const T* xhat, const T* x, T m, T sc,
                                                std::size_t n, std::size_t runs, T cg, const T* g,
                                                T c1, T cx, T* dx, bool stream, std::size_t step,
                                                T next_m, T next_sc, double* s1, double* s2) {
    const Splat<T> mk(m), sck(sc), cgk(cg), c1k(c1), cxk(cx), next_mk(next_m), next_sck(next_sc);
    // x̂ of both runs is stored, or both are formed from the input. Each block's dx is written
    // after the block's sums (paired_sums' `after`), in a loop of its own: in one loop with the
    // sums, the eight coefficients of both runs and the four partial sums outnumbered the AVX2
    // registers, and GCC kept a partial sum in memory (a store-to-load chain in every step; the
    // x̂-from-input form 1.5× the time of the stored one).
    with_flags(
        xhat != nullptr, stream, [&](auto stored, auto streams) __attribute__((always_inline)) {
            for (std::size_t j = 0; j < runs; ++j) {
                const std::size_t at = j * n, next = at + step;
                const Splat<T> gk(g[j]);
                const auto apply_at = [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    V h;
                    if constexpr (stored)
                        h = load_as<V>(xhat + at + i);
                    else
                        h = standardized(load_as<V>(x + at + i), mk.template as<V>(),
                                         sck.template as<V>());
                    store_as<V>(
                        dx + at + i,
                        applied(cgk.template as<V>(), gk.template as<V>(), load_as<V>(dy + at + i),
                                c1k.template as<V>(), cxk.template as<V>(), h),
                        streams);
                };
                paired_sums<T>(
                    n,
                    [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                        using V = decltype(tag);
                        V next_h;
                        if constexpr (stored)
                            next_h = load_as<V>(xhat + next + i);
                        else
                            next_h =
                                standardized(load_as<V>(x + next + i), next_mk.template as<V>(),
                                             next_sck.template as<V>());
                        return std::pair{load_as<V>(dy + next + i), next_h};
                    },
                    s1[j], s2[j],
                    [&](std::size_t begin, std::size_t end) __attribute__((always_inline)) {
                        if constexpr (std::is_same_v<T, float> && streams) {
                            aligned_vectors(begin, end, dx + at, true, apply_at);
                        } else {
                            std::size_t i = begin;
                            if constexpr (std::is_same_v<T, float>)
                                for (; i + 8 <= end; i += 8)
                                    apply_at(Float8{}, i);
                            for (; i < end; ++i)
                                apply_at(T{}, i);
                        }
                    });
            }
        });
}

// The dense form, every coefficient per column: `rows` rows of n values, `stride` apart, taken
// down the columns or row by row (down_columns).
template <class T>
NORMLAB_ISA_CLONES void apply_columns(const T* dy, const T* xhat, std::size_t rows,
                                      std::size_t stride, std::size_t n, const T* cg, const T* g,
                                      const T* c1, const T* cx, T* dx, bool row_by_row) {
    with_flag(
        xhat != nullptr, [&](auto reads_xhat) __attribute__((always_inline)) {
            down_columns<T>(
                rows, n, dx,
                [&](auto tag, std::size_t i) __attribute__((always_inline)) {
                    using V = decltype(tag);
                    const V cgv = load_as<V>(cg + i), gv = load_as<V>(g + i),
                            c1v = load_as<V>(c1 + i), cxv = load_as<V>(cx + i);
                    return std::pair(
                        [=](std::size_t r) __attribute__((always_inline)) {
                            const std::size_t at = r * stride + i;
                            const V d = load_as<V>(dy + at);
                            if constexpr (reads_xhat)
                                return applied(cgv, gv, d, c1v, cxv, load_as<V>(xhat + at));
                            else
                                return applied(cgv, gv, d, c1v);
                        },
                        [=](std::size_t r, V d) __attribute__((always_inline)) {
                            store_as<V>(dx + r * stride + i, d, false);
                        });
                },
                row_by_row, columns_backward({dx}, {dy, xhat}));
        });
}

// Sets of this many floats or fewer, a multiple of eight under kShortRun or of sixteen from it,
// are taken four at a time by the *_short_sets kernels below: their per-set costs (horizontal
// totals, a square root, a division, a call) would otherwise outweigh their data.
constexpr std::size_t kShortSetMax = 2 * kShortRun;

constexpr bool short_set(std::size_t len) {
    return len <= kShortSetMax && (len < kShortRun ? len % kShortVector == 0 : len % kLanes == 0);
}

// paired_sums of sets k .. k + 3 of len values each (short_set(len)), set j's sums in lane j of
// t1, t2, the same bits as paired_sums set by set: term(set, i) gives (u, w) at value i of the
// row, which is in that set.
// Under kShortRun, one float vector of eight lanes per set and total8's order, (p0 + p1) +
// (p2 + p3) of its lane_pairs; from kShortRun, sixteen lanes in one float block, widened, and
// total's order, lane j with lane j + 8 and those pairs added one after the other. Either way
// the four sets' totals are added side by side, and to 0, as a set's sums start from 0.
template <class Term>
__attribute__((always_inline)) inline void four_set_sums(std::size_t k, std::size_t len,
                                                         Term&& term, Double4& t1, Double4& t2) {
    if (len < kShortRun) {
        const auto partials = [&](std::size_t set, Float8 & fa, Float8 & fq)
            __attribute__((always_inline)) {
            fa = Float8{};
            fq = Float8{};
            for (std::size_t i = set * len; i < (set + 1) * len; i += kShortVector) {
                const auto [u, w] = term(set, i);
                fa += u;
                fq += u * w;
            }
        };
        Float8 fa0, fa1, fa2, fa3, fq0, fq1, fq2, fq3;
        partials(k, fa0, fq0);
        partials(k + 1, fa1, fq1);
        partials(k + 2, fa2, fq2);
        partials(k + 3, fa3, fq3);
        const auto totals =
            [](Float8 f0, Float8 f1, Float8 f2, Float8 f3) __attribute__((always_inline)) {
            Double4 q[4];
            transpose4(lane_pairs(f0), lane_pairs(f1), lane_pairs(f2), lane_pairs(f3), q);
            return Double4{} + ((q[0] + q[1]) + (q[2] + q[3]));
        };
        t1 = totals(fa0, fa1, fa2, fa3);
        t2 = totals(fq0, fq1, fq2, fq3);
        return;
    }
    // Per set, the pairs of total (lane_pairs16 of the widened sums).
    Double4 a_lo[4], a_hi[4], q_lo[4], q_hi[4];
    for (std::size_t j = 0; j < 4; ++j) {
        Float8 fa0 = {}, fa1 = {}, fq0 = {}, fq1 = {};
        for (std::size_t i = (k + j) * len; i < (k + j + 1) * len; i += kLanes) {
            const auto [u0, w0] = term(k + j, i);
            const auto [u1, w1] = term(k + j, i + 8);
            fa0 += u0;
            fa1 += u1;
            fq0 += u0 * w0;
            fq1 += u1 * w1;
        }
        Sum16 a, q;
        add_widened(a, fa0, fa1);
        add_widened(q, fq0, fq1);
        lane_pairs16(a, a_lo[j], a_hi[j]);
        lane_pairs16(q, q_lo[j], q_hi[j]);
    }
    t1 = four_totals(a_lo, a_hi);
    t2 = four_totals(q_lo, q_hi);
}

// finish_standardized of four sets, set j's from lane j of s1 and s2 and from shift[j], lane by
// lane the same operations: their mean, var and inv_std into mean[0..3], var[0..3],
// inv_std[0..3]. Four square roots and divisions in vectors, where a set at a time waits on
// each.
__attribute__((always_inline)) inline void finish_four_standardized(
    bool center, double inv_m, double eps, const float* shift, Double4 s1, Double4 s2, float* mean,
    float* var, float* inv_std, float* offset = nullptr) {
    const Double4 inv_mv = splat<Double4>(inv_m);
    const Double4 cm = s1 * inv_mv;
    Double4 m2 = s2;
    Double4 unrounded_mean = {};  // shift + s1/m, before rounding to float
    Float4 mean4 = {};
    if (center) {
        const Double4 shift4 = {double(shift[0]), double(shift[1]), double(shift[2]),
                                double(shift[3])};
        unrounded_mean = shift4 + cm;
        mean4 = __builtin_convertvector(unrounded_mean, Float4);
        m2 = s2 - s1 * cm;
    }
    const Float4 var4 = __builtin_convertvector((m2 < 0.0 ? Double4{} : m2) * inv_mv, Float4);
    Double4 root = __builtin_convertvector(var4, Double4) + splat<Double4>(eps);
    for (int j = 0; j < 4; ++j)
        root[j] = std::sqrt(root[j]);
    const Float4 inv_std4 = __builtin_convertvector(splat<Double4>(1.0) / root, Float4);
    std::memcpy(mean, &mean4, sizeof mean4);
    std::memcpy(var, &var4, sizeof var4);
    std::memcpy(inv_std, &inv_std4, sizeof inv_std4);
    if (offset) {
        // offset_for_mean of each set's mean_residual, lane by lane the same operations.
        const Double4 residual =
            center ? unrounded_mean - __builtin_convertvector(mean4, Double4) : Double4{};
        const Float4 offset4 = __builtin_convertvector(
            -(residual * __builtin_convertvector(inv_std4, Double4)), Float4);
        std::memcpy(offset, &offset4, sizeof offset4);
    }
}

// finish_standardized of `count` (1 to 4) sets from their lane pairs (set j's from lanes[j] and
// shift[j]) into mean[0..count), var, inv_std, and with `offset` each set's offset_for_mean of
// its mean_residual: the same bits as finish_standardized of the totals paired_sums forms from
// them. Four sets' totals and finish in vectors (four_totals,
// finish_four_standardized), where one set at a time took a chain of sixteen dependent adds, a
// square root and a division per set.
template <class T>
__attribute__((always_inline)) inline void finish_lane_pairs(const LanePairs* lanes,
                                                             std::size_t count, bool center,
                                                             double inv_m, double eps,
                                                             const T* shift, T* mean, T* var,
                                                             T* inv_std, T* offset) {
    static_assert(std::is_same_v<T, float>, "float sets only");
    if (count == 4) {
        Double4 t1, t2;
        four_lane_totals(lanes, t1, t2);
        finish_four_standardized(center, inv_m, eps, shift, t1, t2, mean, var, inv_std, offset);
        return;
    }
    for (std::size_t j = 0; j < count; ++j)
        finish_standardized(center, inv_m, eps, double(shift[j]),
                            total(lanes[j].a_lo, lanes[j].a_hi),
                            total(lanes[j].q_lo, lanes[j].q_hi), mean[j], var[j], inv_std[j],
                            offset ? offset + j : nullptr);
}

// How many sets standardize_lane_sets (and kernels::standardize on rows) finish together and
// keep in flight: each set is written while the set this many places on is summed.
inline constexpr std::size_t kSetsInFlight = 4;

// Sets [k0, k1) of `len` floats each, one after the other, lanes_only(len) (LayerNorm's rows,
// GroupNorm's sets of a multiple of sixteen), `sets_per_row` to a row: each set's shift
// (set_shift, when center), moments and inv_std (finish_standardized), with `offset` its
// offset_for_mean, and x̂ (if xhat) and y = (x̂ + offset)·g + b with g and b per element from the
// set's place in its row: the same bits as shifted_sums, finish_standardized and affine set by
// set. The sets go in groups of kSetsInFlight: a group's totals, square roots and divisions
// are taken together in vectors (finish_lane_pairs), then each set of the group is written while
// the set kSetsInFlight places on is summed (affine_summing_next_with), so that the reads of the
// next sets overlap the writes and the serial end of a group's sums overlaps vector work. One
// call takes a thread's whole share: a call per set (its flags tested, its coefficients broadcast
// and its pending stores set up in a frame of several KiB) cost about 100 cycles a set, and
// LayerNorm's forward on (1792, 512), one thread, took 1.5x the time of a plain loop of the same
// fused pass in float (2.3x on (7168, 128)); with one call per share 1.4x and 1.8x (widening
// each block's sums to double, as here, took that plain loop 1.15x and 1.3x the time).
template <class T>
NORMLAB_ISA_CLONES void standardize_lane_sets(const T* x, std::size_t k0, std::size_t k1,
                                              std::size_t len, std::size_t sets_per_row,
                                              bool center, double inv_m, double eps, const T* g,
                                              const T* b, T* mean, T* var, T* inv_std, T* offset,
                                              T* xhat, T* y) {
    static_assert(std::is_same_v<T, float>, "float sets only");
    constexpr std::size_t group = kSetsInFlight;
    // Set j of a group (set g0 + j): its sums and shift, replaced by those of set j of the next
    // group as the group is written.
    LanePairs lanes[group];
    T shifts[group];
    const auto shift_of = [&](std::size_t k) __attribute__((always_inline)) {
        return center ? set_shift(x + k * len, len) : T(0);
    };
    for (std::size_t k = k0; k < std::min(k1, k0 + group); ++k) {
        shifts[k - k0] = shift_of(k);
        shifted_lane_pairs(x + k * len, len, shifts[k - k0], lanes[k - k0]);
    }
    with_flag(
        xhat != nullptr, [&](auto stores_xhat) __attribute__((always_inline)) {
            constexpr bool kStoresXhat = decltype(stores_xhat)::value;
            for (std::size_t g0 = k0; g0 < k1; g0 += group) {
                const std::size_t g1 = std::min(k1, g0 + group);
                finish_lane_pairs(lanes, g1 - g0, center, inv_m, eps, shifts, mean + g0, var + g0,
                                  inv_std + g0, offset ? offset + g0 : nullptr);
                for (std::size_t k = g0; k < g1; ++k) {
                    const std::size_t at = k * len, c0 = (k % sets_per_row) * len;
                    const T off = offset ? offset[k] : T(0);
                    T* const h = kStoresXhat ? xhat + at : nullptr;
                    const std::size_t next = k + group;
                    if (next >= k1) {
                        affine_inline(x + at, len, mean[k], inv_std[k], off, g + c0, b + c0, 1, h,
                                      y + at);
                        continue;
                    }
                    const std::size_t j = k - g0;
                    shifts[j] = shift_of(next);
                    double unused1 = 0, unused2 = 0;
                    with_flag(
                        off != T(0), [&](auto offset_flag) __attribute__((always_inline)) {
                            affine_summing_next_with<true, kStoresXhat, false, false,
                                                     decltype(offset_flag)::value>(
                                x + at, len, mean[k], inv_std[k], off, g + c0, b + c0, h, y + at,
                                x + next * len, shifts[j], unused1, unused2, &lanes[j]);
                        });
                }
            }
        });
}

// set_shift of the four sets of `len` (>= kShiftValues) floats each from `x` on, set j's in
// lane j: each set's first eight values scaled by 1/8, folded in halves (value i with value
// i + 4), and the four sets' pairs transposed so that (p0 + p1) + (p2 + p3) is taken for all
// four at once, the same bits as set_shift. GroupNorm(32)'s training forward on (1792, 512), sets
// of 16, took 428-456 us so, 459-476 with each set's vector folded on its own, 493-520 with
// set_shift's scalar loop in double, and 410-446 with each set's first value as its shift (the
// four alternated, AMD EPYC VM, 2 threads).
__attribute__((always_inline)) inline Float4 four_set_shifts(const float* x, std::size_t len) {
    static_assert(kShiftValues == 8, "a set's shift is the mean of a vector of eight");
    const Float8 eighth = splat<Float8>(1.0f / float(kShiftValues));
    const auto folded = [&](std::size_t j) __attribute__((always_inline)) {
        const Float8 v = load_floats(x + j * len) * eighth;
        return Float4(__builtin_shufflevector(v, v, 0, 1, 2, 3) +
                      __builtin_shufflevector(v, v, 4, 5, 6, 7));
    };
    const Float4 a = folded(0), b = folded(1), c = folded(2), d = folded(3);
    const Float4 ab_lo = __builtin_shufflevector(a, b, 0, 4, 1, 5);
    const Float4 ab_hi = __builtin_shufflevector(a, b, 2, 6, 3, 7);
    const Float4 cd_lo = __builtin_shufflevector(c, d, 0, 4, 1, 5);
    const Float4 cd_hi = __builtin_shufflevector(c, d, 2, 6, 3, 7);
    const Float4 p0 = __builtin_shufflevector(ab_lo, cd_lo, 0, 1, 4, 5);
    const Float4 p1 = __builtin_shufflevector(ab_lo, cd_lo, 2, 3, 6, 7);
    const Float4 p2 = __builtin_shufflevector(ab_hi, cd_hi, 0, 1, 4, 5);
    const Float4 p3 = __builtin_shufflevector(ab_hi, cd_hi, 2, 3, 6, 7);
    return (p0 + p1) + (p2 + p3);
}

// Sets of `len` floats each, one after the other (GroupNorm's sets on a row), short_set(len):
// each set's shifted sums (as shifted_sums, shifted by set_shift when center), moments and
// inv_std (finish_standardized), with `offset` each set's offset_for_mean, and x̂ (if xhat),
// y = (x̂ + offset)·g + b with g, b per element (as affine) — the same bits as those calls, set
// by set. Four sets at a time: their totals
// (four_set_sums) and their moments, square roots and divisions are taken together, set j in
// lane j of one vector; the row is then written while it is in L1. Set by set, each set of 16–24
// values cost two horizontal totals, a scalar square root and a division (GroupNorm(32) training
// forward on (1792, 512): 630–650 → 390–400 µs, (4096, 768): 1600–1680 → 1250–1440, 2 threads).
template <class T>
NORMLAB_ISA_CLONES void standardize_short_sets(const T* x, std::size_t sets, std::size_t len,
                                               bool center, double inv_m, double eps, const T* g,
                                               const T* b, T* mean, T* var, T* inv_std, T* offset,
                                               T* xhat, T* y) {
    static_assert(std::is_same_v<T, float>, "float sets only");
    // The shifts of the four sets from k0 on (set_shift), and the deviations of the values of
    // set k from its shift.
    float shift4[4] = {};
    std::size_t k0 = 0;
    const auto deviation = [&](std::size_t k, std::size_t i) __attribute__((always_inline)) {
        const Float8 d = load_floats(x + i) - splat<Float8>(shift4[k - k0]);
        return std::pair{d, d};
    };
    std::size_t k = 0;
    for (; k + 4 <= sets; k += 4) {
        k0 = k;
        if (center) {
            const Float4 shifts = four_set_shifts(x + k * len, len);
            std::memcpy(shift4, &shifts, sizeof shifts);
        }
        Double4 s1, s2;
        four_set_sums(k, len, deviation, s1, s2);
        finish_four_standardized(center, inv_m, eps, shift4, s1, s2, mean + k, var + k, inv_std + k,
                                 offset ? offset + k : nullptr);
    }
    for (; k < sets; ++k) {
        const double shift = center ? double(set_shift(x + k * len, len)) : 0.0;
        double s1 = 0, s2 = 0;
        shifted_sums(x + k * len, len, shift, s1, s2);
        finish_standardized(center, inv_m, eps, shift, s1, s2, mean[k], var[k], inv_std[k],
                            offset ? offset + k : nullptr);
    }
    with_flag(
        offset != nullptr, [&](auto offsets) __attribute__((always_inline)) {
            for (k = 0; k < sets; ++k) {
                const Float8 m = splat<Float8>(mean[k]), sc = splat<Float8>(inv_std[k]);
                const Float8 off = splat<Float8>(offsets ? offset[k] : 0.0f);
                for (std::size_t i = k * len; i < (k + 1) * len; i += kShortVector) {
                    const Float8 h = standardized(load_floats(x + i), m, sc);
                    if (xhat) store_as<Float8>(xhat + i, h, false);
                    Float8 hy = h;
                    if constexpr (offsets) hy = h + off;
                    store_as<Float8>(y + i, hy * load_floats(g + i) + load_floats(b + i), false);
                }
            }
        });
}

// Sets of `len` floats each, one after the other, short_set(len), as in standardize_short_sets:
// each set's Σ g·dy and Σ g·dy·x̂ (g = dy·gamma, gamma per element), the same bits as grad_sums
// set by set, four sets' totals taken together.
template <class T>
NORMLAB_ISA_CLONES void grad_sums_short_sets(const T* dy, const T* xhat, const T* gamma,
                                             std::size_t sets, std::size_t len, double* s1,
                                             double* s2) {
    static_assert(std::is_same_v<T, float>, "float sets only");
    std::size_t k = 0;
    for (; k + 4 <= sets; k += 4) {
        Double4 t1, t2;
        four_set_sums(
            k, len,
            [&](std::size_t, std::size_t i) __attribute__((always_inline)) {
                return std::pair{weighted<Float8>(dy, gamma, i), load_floats(xhat + i)};
            },
            t1, t2);
        std::memcpy(s1 + k, &t1, sizeof t1);
        std::memcpy(s2 + k, &t2, sizeof t2);
    }
    for (; k < sets; ++k) {
        s1[k] = s2[k] = 0;
        grad_sums(dy + k * len, xhat + k * len, gamma + k * len, len, s1[k], s2[k]);
    }
}

// apply (g per element, x̂ stored) of `sets` sets of `len` values one after the other, set k with
// cg[k], c1[k], cx[k]: the same dx as apply set by set, without a call per set.
template <class T>
NORMLAB_ISA_CLONES void apply_short_sets(const T* dy, const T* xhat, const T* g, std::size_t sets,
                                         std::size_t len, const T* cg, const T* c1, const T* cx,
                                         T* dx) {
    static_assert(std::is_same_v<T, float>, "float sets only");
    for (std::size_t k = 0; k < sets; ++k) {
        const Float8 cgv = splat<Float8>(cg[k]), c1v = splat<Float8>(c1[k]),
                     cxv = splat<Float8>(cx[k]);
        for (std::size_t i = k * len; i < (k + 1) * len; i += kShortVector)
            store_as<Float8>(dx + i,
                             applied(cgv, load_floats(g + i), load_floats(dy + i), c1v, cxv,
                                     load_floats(xhat + i)),
                             false);
    }
}

}  // namespace normlab::kernels::rows
