#pragma once
// The one statistics kernel every normalizer is built from (spec §0).
//
// The reduction sets are unions of rows of the [N][C][S] view, described by SetSpec.
// Work is split into the stages named in STYLE.md: collect_moments, normalize_affine,
// backward_reduce, backward_apply. Each output element and each set's statistic is computed by
// one thread in a fixed order, so results do not depend on the number of threads.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <type_traits>
#include <vector>

#include "kernels/parallel.hpp"
#include "normlab/set_spec.hpp"
#include "normlab/tensor.hpp"

namespace normlab::kernels {

using normlab::SetSpec;

// Below this many elements one thread does the whole job: thread start-up would cost more.
// (The elementwise passes of layers built beside the kernel use the same threshold.)
constexpr std::size_t kParallelMin = std::size_t{1} << 15;

// From this many sets on, the per-set work between the passes (the moments' and coefficients'
// few divisions and a square root each, ~10 ns) is split between the threads: Batch-Layer
// Norm's batch branch has one set per channel and position, 200k on (2, 64, 56, 56).
constexpr std::size_t kParallelSets = std::size_t{1} << 12;

// Per-set work in ranges of kSetRange sets, f(begin, end) each, that the loops inside f can
// vectorize, split between the threads from kParallelSets sets on: a call per set did not
// vectorize, and took a third of Batch-Layer Norm's small-batch forward.
constexpr std::size_t kSetRange = 2048;

template <class F>
void for_each_set_range(std::size_t num_sets, F&& f) {
    const std::size_t ranges = (num_sets + kSetRange - 1) / kSetRange;
    parallel_for(ranges, num_sets >= kParallelSets,
                 [&](std::size_t r) { f(r * kSetRange, std::min(num_sets, (r + 1) * kSetRange)); });
}

// p, or n copies of value kept in storage when p is null (an absent γ or β).
template <class T>
const T* or_constant(const T* p, std::vector<T>& storage, std::size_t n, T value) {
    if (p) return p;
    storage.assign(n, value);
    return storage.data();
}

// Stage 1. Per set: mean and biased variance (center = true), or mean = 0 and the mean square
// (center = false, RMSNorm). Sums are shifted by the set's set_shift and accumulated in double,
// so a large common offset (mean 1e4, std 1) costs no precision; there is no E[x²]−E[x]².
// With `residual`, each set's mean_residual (what rounding its mean to T took off it) too.
template <class T>
void collect_moments(const T* x, const NcsView& v, const SetSpec& sets, bool center, T* mean,
                     T* var, double* residual = nullptr);

// β of every channel of sets [0, num_sets) of `cps` channels (gamma, beta and out from the first
// set's first channel), set k normalized with scale[k] and its mean off by residual[k]
// (collect_moments): beta_for_mean (formulas.hpp) into out[0 .. num_sets·cps), gamma and beta
// null taken as 1 and 0. Sets over the batch take it per channel, per-sample sets on feature maps
// per sample and channel (standardize).
template <class T>
void betas_for_means(std::size_t num_sets, std::size_t cps, const double* residual, const T* scale,
                     const T* gamma, const T* beta, T* out);

// inv_std[k] = 1/√(var[k] + eps) for k < n, in double as finish_standardized forms it (the same
// bits), vectorized in every ISA clone: a layer finishing its statistics per channel spends
// most of that time on the square roots and divisions, which AVX2's vectors take four at a time.
template <class T>
void inverse_std(const T* var, std::size_t n, double eps, T* inv_std);

// Whether a[k] and b[k] are finite for every k < n (b may be null), without a branch per value:
// the sum of every value times 0 is 0, or NaN where one is infinite or NaN.
template <class T>
bool all_finite(const T* a, const T* b, std::size_t n);

// The first k < n where a[k] or b[k] (b may be null) is NaN or infinite, or n where none is: the
// statistic an error names. all_finite first, so a finite array costs no branch per value.
template <class T>
std::size_t first_non_finite(const T* a, const T* b, std::size_t n);

// Stage 2. x̂ = (x − shift[k])·scale[k], y = gamma[c]·(x̂ + offset[k]) + beta[c], with k the set
// of the element. offset, gamma, beta may be null (0, 1, 0); xhat may be null (not stored). The
// stored x̂ is without the offset: the x̂ that backward forms again from the input. `inference`:
// no backward follows, so the threads need not take the channels a backward would.
template <class T>
void normalize_affine(const T* x, const NcsView& v, const SetSpec& sets, const T* shift,
                      const T* scale, const T* offset, const T* gamma, const T* beta, T* xhat, T* y,
                      bool inference = false);

// Stages 1 and 2 fused, for statistics taken from x itself: each set's moments, then
// inv_std = 1/sqrt(var + eps), then its normalization while its values are still in cache.
// Fills mean, var (biased, or mean square when not centred) and inv_std per set. Where γ and β
// are one value per run of a set (sets over the batch; per-sample sets on feature maps), y takes
// the rounding of each set's mean into β (betas_for_means); x̂ does not. Per-sample sets on rows
// (γ and β vary within a set) take it as an offset of x̂ in y (offset_for_mean), and
// `mean_offset` (may be null) receives those offsets there, for the backward's coefficients; it
// is not written elsewhere.
template <class T>
void standardize(const T* x, const NcsView& v, const SetSpec& sets, bool center, double eps,
                 const T* gamma, const T* beta, T* mean, T* var, T* inv_std, T* xhat, T* y,
                 T* mean_offset = nullptr);

// Whether standardize forms y from x̂ plus an offset per set, and so fills `mean_offset`:
// centred per-sample sets on rows.
inline bool takes_mean_offsets(const NcsView& v, const SetSpec& sets, bool center) {
    return center && v.s == 1 && !sets.across_batch;
}

// Where stages 3 and 4 read x̂: the x̂ forward stored, or the input x forward kept instead with
// the per-set shift and scale it normalized with, x̂ = (x − shift[k])·scale[k] (computed exactly as
// forward computed it), formed in registers as the backward stages read it — so forward need not
// write x̂ at all; only for layouts recomputes_xhat_in_registers accepts (others throw
// std::logic_error). Empty: no x̂ (only Σdy wanted, or no x̂ term).
template <class T>
struct XhatSource {
    const T* xhat = nullptr;
    const T* x = nullptr;
    const T* shift = nullptr;
    const T* scale = nullptr;

    XhatSource() = default;
    XhatSource(const T* stored) : xhat(stored) {}  // NOLINT(google-explicit-constructor)
    XhatSource(const T* input, const T* set_shift, const T* set_scale)
        : x(input), shift(set_shift), scale(set_scale) {}
    bool present() const { return xhat != nullptr || x != nullptr; }
};

// Whether stages 3 and 4 can form x̂ from the input in registers for this layout (runs of one
// channel, rows with one set, one channel per set across the batch). Rows with several sets
// (GroupNorm on (N, C)) cannot: those layers store x̂.
bool recomputes_xhat_in_registers(const NcsView& v, const SetSpec& sets);

// Kernel parameters take x̂ through this, so a plain pointer still converts to it.
template <class T>
using XhatArg = const std::type_identity_t<XhatSource<T>>&;

// Stage 3. With g = gamma[c]·dy (gamma null = 1): per set Σg and Σg·x̂; per channel Σdy and
// Σdy·x̂ (the raw sums behind dβ and dγ). Channel outputs may be null; xhat may be null when
// only Σg / Σdy are wanted (then set_sum_g_xhat and chan_sum_dy_xhat must be null too).
template <class T>
void backward_reduce(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                     const T* gamma, double* set_sum_g, double* set_sum_g_xhat, double* chan_sum_dy,
                     double* chan_sum_dy_xhat);

// Stage 4. dx = coef_g[k]·(gamma[c]·dy − coef_1[k] − coef_xhat[k]·x̂). coef_1 / coef_xhat null
// mean 0 (then xhat is not read). With coef_g = s, coef_1 = Σg/M, coef_xhat = Σg·x̂/M this is the
// generic backward of spec §0.
template <class T>
void backward_apply(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                    const T* gamma, const T* coef_g, const T* coef_1, const T* coef_xhat, T* dx);

// Stage 4's per-set terms from the two means of stage 3: (k, Σg/M, Σg·x̂/M, coef_1, coef_xhat).
template <class T>
using SetCoefficients = std::function<void(std::size_t, double, double, T&, T&)>;

// Stages 3 and 4 fused: each set (or, for rows, each block of rows) is reduced and then applied
// while it is still in cache, so dy and x̂ come from memory once. Same sums, same order as stage
// 3 then stage 4; fills the per-channel Σdy and Σdy·x̂. can_fuse_backward says where the kernel
// takes it: not for sets across the batch of a dense (N, C) input (whose sets span all rows, so
// nothing can be applied before everything is reduced), nor for sets across the batch of a
// tensor that stays in cache, where the two stages walking memory in order are faster.
template <class T>
bool can_fuse_backward(const NcsView& v, const SetSpec& sets);
template <class T>
void backward_fused(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                    const T* gamma, const T* coef_g, const SetCoefficients<T>& coefficients, T* dx,
                    double* chan_sum_dy, double* chan_sum_dy_xhat);

// Whether stages 3 and 4 (fused or not) may write dx over the x̂ (stored) or input (not stored)
// they read: every value of dx is then written after the last read of x̂ or the input at the
// same place. False for per-sample sets on rows with x̂ stored, whose fused backward reads a
// group's x̂ again after applying its rows.
bool dx_may_overwrite_xhat(const NcsView& v, const SetSpec& sets, bool stored);

// Per channel Σdy and Σdy·x̂ only (dβ, dγ) — for layers whose dx comes from elsewhere. sets
// says which set each value belongs to when x̂ is recomputed from the input (else unused).
template <class T>
void channel_sums(const T* dy, XhatArg<T> xhat, const NcsView& v, double* chan_sum_dy,
                  double* chan_sum_dy_xhat, const SetSpec* sets = nullptr);

// channel_sums of g = w·dy on a dense (N, C) view (v.s = 1) whose x̂ is formed from the input, w
// per row (row_weight, N values) or per column (column_weight, C values), one of the two: the
// same sums as channel_sums over an array holding g, without writing that array. Batch-Layer
// Norm's branches weigh dy by γ per channel, which is a column of its batch branch's view and a
// row of its feature branch's per-sample view.
template <class T>
void weighted_column_sums(const T* dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                          const T* row_weight, const T* column_weight, double* s1, double* s2);

}  // namespace normlab::kernels
