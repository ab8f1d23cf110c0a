#pragma once
// The formulas of the statistics kernel: a set's moments and inv_std from its shifted sums, and
// the two elementwise formulas, for one value or a vector of values. Every stage that finishes a
// set or forms x̂ or dx uses them, and so does a layer that applies the kernel's coefficients in
// a pass of its own (Batch-Layer Norm's two branches), so that all give the same bits.

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace normlab::kernels {

// x̂ = (x − m)·sc: the one formula of every stage, whether forward stores x̂ or backward forms
// it again from the input, so both give the same bits. (An offset, Batch Renormalization's d,
// is added only where it is not 0; x̂ with an offset is always stored.)
template <class V>
__attribute__((always_inline)) inline V standardized(V x, V m, V sc) {
    return (x - m) * sc;
}

// dx = cg·(g·dy − c1 − cx·x̂): the one formula of every apply stage, whether x̂ is stored or
// formed again from the input, run by run or down columns, so they all give the same bits. The
// bracket is formed before the scaling, so that a set of one value (g·dy = c1, x̂ = 0) gets
// exactly 0 however large cg = 1/σ is. Without x̂ (no cx term) the second form.
template <class V>
__attribute__((always_inline)) inline V applied(V cg, V g, V dy, V c1, V cx, V h) {
    return cg * (g * dy - c1 - cx * h);
}

template <class V>
__attribute__((always_inline)) inline V applied(V cg, V g, V dy, V c1) {
    return cg * (g * dy - c1);
}

// The shift of a set's sums: the mean of the first values of its first contiguous block
// (`first`, block_len values: the set's values in sample 0), up to kShiftValues of them. Any
// value is a valid shift, but the sums are partly taken in float (rows::paired_sums), and the
// squares of the deviations from the shift then lose digits as (d² + σ²)/σ², d the shift's
// distance from the set's mean: shifted by its first value alone, a set of GroupNorm(32) on
// (4096, 768) whose first value lay 3.4σ out gave y off by 1.6e-06 where float rounding of y
// itself is 2e-07 (PyTorch's float32 kernel 6.6e-07). One set gets the same shift on every path;
// a set whose values are all equal still gets exactly that value (mean and variance exact), and
// a set of one value that value. A column of (N, C) rows, whose first block is one value, takes
// the mean of its first rows instead (moments.cpp, column_shifts).
inline constexpr std::size_t kShiftValues = 8;

// Eight values are taken in T: each scaled by 1/8 (exact but for subnormal values, which need no
// better shift; the sum of eight scaled values cannot overflow), value i added to value i + 4,
// then (p0 + p1) + (p2 + p3): a chain of three dependent adds, and the order that column_shifts
// takes across columns in vectors and rows::four_set_shifts across four sets (the lanes of a
// vector of eight folded in halves). In T rather than double, because a shift needs no more than
// to lie near the mean, and GroupNorm's short sets on rows pay for every instruction of it (below
// 32 values a set takes about 40 in all). Fewer values (a set shorter than eight) are added in
// order in double.
template <class T>
T set_shift(const T* first, std::size_t block_len) {
    if (block_len >= kShiftValues) {
        const T eighth = T(1) / T(kShiftValues);
        T pair[4];
        for (std::size_t i = 0; i < 4; ++i)
            pair[i] = first[i] * eighth + first[i + 4] * eighth;
        return (pair[0] + pair[1]) + (pair[2] + pair[3]);
    }
    double sum = 0;
    for (std::size_t i = 0; i < block_len; ++i)
        sum += double(first[i]);
    return T(sum / double(block_len));
}

// Mean and variance (or mean square) of one set from its shifted sums.
template <class T>
void finish_moments(bool center, double inv_m, double shift, double s1, double s2, T& mean,
                    T& var) {
    const double centered_mean = s1 * inv_m;
    mean = center ? T(shift + centered_mean) : T(0);
    const double m2 = center ? s2 - s1 * centered_mean : s2;
    var = T(std::max(m2, 0.0) * inv_m);
}

// What rounding the set's mean to T took off it: shift + s1/m, as finish_moments forms it in
// double, minus the rounded mean (0 without centring, and in double, where nothing is rounded).
template <class T>
double mean_residual(bool center, double inv_m, double shift, double s1, T mean) {
    return center ? (shift + s1 * inv_m) - double(mean) : 0.0;
}

// β of a channel whose set is normalized as (x − mean)·scale·γ + β with its mean rounded to T,
// less that rounding's share of y: the set's mean_residual times scale·γ, in double, so that y is
// (x − μ)·scale·γ + β for the set's unrounded mean μ, to the roundings of the expression. With the
// input far from zero mean this rounding dominated y's error: at mean 100 and σ = 2, float's
// spacing at 100 is 7.6e-06, half of it over σ 1.9e-06, eight times y's own rounding. Only where
// γ and β are one value per run of a set (sets over the batch, a value per channel; per-sample
// sets on feature maps, a value per sample and channel), not per element; x̂ (and what backward
// forms from the input) stays (x − mean)·scale.
template <class T>
T beta_for_mean(T beta, double residual, T scale, T gamma) {
    return T(double(beta) - residual * double(scale) * double(gamma));
}

// Where γ and β vary within the set (per-sample sets on (N, C) rows), the same correction as an
// offset of x̂ instead: y = γ·(x̂ + offset) + β with offset = −residual·scale rounded to T, an
// operation per value (x̂ stays (x − mean)·scale). −0 without a residual, which leaves x̂ as it is.
template <class T>
T offset_for_mean(double residual, T scale) {
    return T(-(residual * double(scale)));
}

// finish_moments, then the set's inv_std = 1/√(var + eps), as standardize normalizes with it.
template <class T>
void finish_standardized(bool center, double inv_m, double eps, double shift, double s1, double s2,
                         T& mean, T& var, T& inv_std) {
    finish_moments(center, inv_m, shift, s1, s2, mean, var);
    inv_std = T(1.0 / std::sqrt(double(var) + eps));
}

// finish_standardized, and with `offset` (may be null) the set's offset_for_mean of its
// mean_residual: a per-sample set on rows finished on its own.
template <class T>
void finish_standardized(bool center, double inv_m, double eps, double shift, double s1, double s2,
                         T& mean, T& var, T& inv_std, T* offset) {
    finish_standardized(center, inv_m, eps, shift, s1, s2, mean, var, inv_std);
    if (offset) *offset = offset_for_mean(mean_residual(center, inv_m, shift, s1, mean), inv_std);
}

}  // namespace normlab::kernels
