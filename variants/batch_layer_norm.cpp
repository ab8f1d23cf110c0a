#include "batch_layer_norm.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <utility>

#include <omp.h>

#include "kernels/formulas.hpp"
#include "kernels/moments.hpp"
#include "kernels/parallel.hpp"
#include "kernels/vector_width.hpp"

namespace normlab {
namespace {

// One kernel call covering some of a branch's sets: the data starts at `offset` elements,
// `view` and `sets` describe it to the kernel, and its sets are numbered from `first_set`.
struct BranchCall {
    std::size_t offset;
    NcsView view;
    SetSpec sets;
    std::size_t first_set;
};

// Batch branch, one set per (c, s) over n: BatchNorm sets on the view [N][C·S][1]. Its sets are
// numbered c·S + s.
std::vector<BranchCall> batch_calls(const NcsView& v) {
    return {{0, NcsView{v.n, v.c * v.s, 1}, SetSpec{true, 1}, 0}};
}

// Feature branch, one set per (n, s) over c, numbered n·S + s. Without trailing dims these are
// LayerNorm sets. Otherwise the values of one sample form a C×S matrix whose sets are its
// columns, i.e. BatchNorm sets with C in the role of the batch: one call per sample, no copy.
std::vector<BranchCall> feature_calls(const NcsView& v) {
    if (v.s == 1) return {{0, NcsView{v.n, v.c, 1}, SetSpec{false, v.c}, 0}};
    std::vector<BranchCall> calls;
    calls.reserve(v.n);
    for (std::size_t n = 0; n < v.n; ++n)
        calls.push_back({n * v.c * v.s, NcsView{v.c, v.s, 1}, SetSpec{true, 1}, n * v.s});
    return calls;
}

// f(call) for each call. Several calls (the feature branch with trailing dimensions: one per
// sample) go to the threads a call each, every call on one thread, instead of one after another
// with the threads splitting each call: a sample's sets are small (C·S values), and a parallel
// region per sample cost more than its work. The kernels give the same bits on any number of
// threads. (A single call runs outside any region: kernels' regions nested in one with a false
// if clause, inactive or not, got new threads on every call.)
template <class F>
void for_each_call(const std::vector<BranchCall>& calls, F&& f) {
    kernels::parallel_for(calls.size(),
                          calls.size() > 1 && omp_get_max_threads() > 1 && !omp_in_parallel(),
                          [&](std::size_t i) { f(calls[i]); });
}

template <class T>
struct Moments {
    SetValues<T> mean, var;  // biased variance
};

template <class T>
Moments<T> branch_moments(const Array<T>& x, const std::vector<BranchCall>& calls,
                          std::size_t num_sets) {
    Moments<T> m;
    m.mean.resize(num_sets);
    m.var.resize(num_sets);
    for_each_call(calls, [&](const BranchCall& call) {
        kernels::collect_moments(x.data() + call.offset, call.view, call.sets, true,
                                 m.mean.data() + call.first_set, m.var.data() + call.first_set);
    });
    return m;
}

// Sets per step of scale_sets: the variances read by inverse_std are read again by all_finite
// from the L1 cache, not from memory (the batch branch on conv input has a set per channel and
// position: 800 KB of each statistic on (2, 64, 56, 56)).
constexpr std::size_t kScaleStep = 1024;

// inv_std = 1/√(var + eps) for sets [begin, end) (kernels::inverse_std), or, with var null,
// `unit` for every set (variances all 0). Returns whether the moments taken from the input there
// (checked_mean and checked_var; null when the branch took none) are all finite.
template <class T>
bool scale_sets(const T* var, T unit, double eps, const T* checked_mean, const T* checked_var,
                std::size_t begin, std::size_t end, T* inv_std) {
    bool finite = true;
    for (std::size_t k0 = begin; k0 < end; k0 += kScaleStep) {
        const std::size_t count = std::min(kScaleStep, end - k0);
        if (var)
            kernels::inverse_std(var + k0, count, eps, inv_std + k0);
        else
            std::fill_n(inv_std + k0, count, unit);
        if (checked_mean)
            finite = kernels::all_finite(checked_mean + k0, checked_var + k0, count) && finite;
    }
    return finite;
}

// The epoch's sums of the statistics += this call's, for sets [begin, end), in every ISA clone;
// the means alone where var is null.
template <class T>
NORMLAB_ISA_CLONES void add_sets(const T* mean, const T* var, std::size_t begin, std::size_t end,
                                 T* sum_mean, T* sum_var) {
    if (!var) {
#pragma omp simd
        for (std::size_t k = begin; k < end; ++k)
            sum_mean[k] += mean[k];
        return;
    }
#pragma omp simd
    for (std::size_t k = begin; k < end; ++k) {
        sum_mean[k] += mean[k];
        sum_var[k] += var[k];
    }
}

// Where a branch's statistics come from: `shift` is the current mean or the population mean;
// the variance is the current one or `population_var`. single_values: the current moments are
// of sets of one value each (the batch branch at a batch of one), so the current variances are
// all exactly 0.
template <class T>
struct BranchSource {
    const T* shift;
    const T* population_var;
    bool mean_from_input, var_from_input, single_values;
};

// Scale of one branch from the current moments and the population constants; `delta` only
// `for_backward`. `current_finite` says whether the current moments (where the branch took
// them) are finite.
template <class T>
BlnBranch<T> make_branch(const Moments<T>& current, const BranchSource<T>& source,
                         std::size_t num_sets, double eps, bool for_backward,
                         bool& current_finite) {
    const T* shift = source.shift;
    const bool mean_from_input = source.mean_from_input, var_from_input = source.var_from_input;
    BlnBranch<T> b;
    b.mean_from_input = mean_from_input;
    b.var_from_input = var_from_input;
    b.inv_std.resize(num_sets);
    // Sets of one value share one inv_std, 1/√(0 + eps), formed by the same kernel.
    const bool unit_sets = var_from_input && source.single_values;
    const T* var = unit_sets        ? nullptr
                   : var_from_input ? current.var.data()
                                    : source.population_var;
    T unit = 0;
    if (unit_sets) {
        const T zero = 0;
        kernels::inverse_std(&zero, 1, eps, &unit);
    }
    const bool checks = !current.mean.empty();
    std::atomic<bool> finite{true};
    kernels::for_each_set_range(num_sets, [&](std::size_t begin, std::size_t end) {
        if (!scale_sets(var, unit, eps, checks ? current.mean.data() : nullptr,
                        checks ? current.var.data() : nullptr, begin, end, b.inv_std.data()))
            finite.store(false, std::memory_order_relaxed);
    });
    current_finite = finite.load();
    if (for_backward && var_from_input && !mean_from_input) {
        b.delta.resize(num_sets);
        for (std::size_t k = 0; k < num_sets; ++k)
            b.delta[k] = T((double(shift[k]) - double(current.mean[k])) * double(b.inv_std[k]));
    }
    return b;
}

// A branch's shift as the saved context keeps it: the current mean itself (taken over), or a
// copy of the population mean, which a later end_epoch may change before the backward.
template <class T>
SetValues<T> kept_shift(Moments<T>& current, const T* population_mean, bool mean_from_input,
                        std::size_t num_sets) {
    if (mean_from_input) return std::move(current.mean);
    return SetValues<T>(population_mean, population_mean + num_sets);
}

// One branch's backward coefficients per set: dx_branch = cg·(g − c1 − cx·x̂)
// (kernels::applied with γ = 1, since g = γ ⊙ dy already carries it), with the projection terms
// of the statistics that came from the input (spec §6.4 for the fully-current case). When none
// did, c1 and cx are empty and the branch is cg·g (applied without the x̂ term).
template <class T>
struct BranchGrad {
    SetValues<T> cg, c1, cx;
};

// f(std::bool_constant<flags>...): one instantiation of f per combination of the flags, so
// that loops specialized on them vectorize.
template <class F>
void with_flags(F&& f) {
    f();
}

template <class F, class... Flags>
void with_flags(F&& f, bool first, Flags... rest) {
    if (first)
        with_flags([&](auto... t) { f(std::true_type{}, t...); }, rest...);
    else
        with_flags([&](auto... t) { f(std::false_type{}, t...); }, rest...);
}

// The coefficients of sets [begin, end): cg = coef·inv_std and, where the set's statistics came
// from the input (sum_g not null), c1 and cx from its sums Σg and Σg·x̂, each added to 0 as a
// set's sum over its columns starts from 0 (a no-op for sums that did). In every ISA clone: the
// batch branch on conv input has a set per channel and position.
template <class T, bool mean_in, bool var_in>
NORMLAB_ISA_CLONES void set_coefficients(T coef, const T* inv_std, const double* sum_g,
                                         const double* sum_gx, double inv_m, const T* delta,
                                         std::size_t begin, std::size_t end, T* cg, T* c1, T* cx) {
#pragma omp simd
    for (std::size_t k = begin; k < end; ++k)
        cg[k] = coef * inv_std[k];
    if (!sum_g) return;
#pragma omp simd
    for (std::size_t k = begin; k < end; ++k) {
        const double per_xhat = var_in ? (0.0 + sum_gx[k]) * inv_m : 0.0;
        const double mean_g = mean_in ? (0.0 + sum_g[k]) * inv_m : 0.0;
        cx[k] = T(per_xhat);
        c1[k] = T(mean_g + per_xhat * (delta ? double(delta[k]) : 0.0));
    }
}

// How γ weighs dy in a branch's calls, g = γ ⊙ dy: per row or per column of the call's view
// (γ per channel is a column of the batch branch's view, and of the feature branch's on rows,
// and a row of the feature branch's per-sample view); both null without γ.
template <class T>
struct ViewWeights {
    const T* rows = nullptr;
    const T* columns = nullptr;
};

// x̂ of the branch is formed from the kept input x with the branch's shift and inv_std, as the
// forward formed it; g = γ ⊙ dy is formed in registers by the kernels (the same products an
// array of g held).
template <class T>
BranchGrad<T> branch_grad(const T* dy, ViewWeights<T> weights, const T* x, const T* shift,
                          const std::vector<BranchCall>& calls, const BlnBranch<T>& b, T coef,
                          std::size_t num_sets) {
    BranchGrad<T> out;
    out.cg.resize(num_sets);
    const bool projects = b.mean_from_input || b.var_from_input;
    SetValues<double> sum_g, sum_gx;
    if (projects) {
        sum_g.resize(num_sets);
        sum_gx.resize(num_sets);
        out.c1.resize(num_sets);
        out.cx.resize(num_sets);
        for_each_call(calls, [&](const BranchCall& call) {
            const kernels::XhatSource<T> xhat(x + call.offset, shift + call.first_set,
                                              b.inv_std.data() + call.first_set);
            double* set_sum_g = sum_g.data() + call.first_set;
            double* set_sum_gx = sum_gx.data() + call.first_set;
            // A set per column of the call's view (the batch branch; the feature branch with
            // trailing dimensions): the column sums are the set sums, with no per-set copy.
            if (call.sets.across_batch && call.sets.channels_per_set == 1) {
                if (weights.rows || weights.columns)
                    kernels::weighted_column_sums(dy + call.offset, xhat, call.view, call.sets,
                                                  weights.rows, weights.columns, set_sum_g,
                                                  set_sum_gx);
                else
                    kernels::channel_sums(dy + call.offset, xhat, call.view, set_sum_g, set_sum_gx,
                                          &call.sets);
            } else {
                kernels::backward_reduce(dy + call.offset, xhat, call.view, call.sets,
                                         weights.columns, set_sum_g, set_sum_gx, nullptr, nullptr);
            }
        });
    }
    const double inv_m = 1.0 / double(calls.front().sets.set_size(calls.front().view));
    const T* delta = b.delta.empty() ? nullptr : b.delta.data();
    with_flags(
        [&](auto mean_in, auto var_in) {
            kernels::for_each_set_range(num_sets, [&](std::size_t begin, std::size_t end) {
                set_coefficients<T, decltype(mean_in)::value, decltype(var_in)::value>(
                    coef, b.inv_std.data(), projects ? sum_g.data() : nullptr, sum_gx.data(), inv_m,
                    delta, begin, end, out.cg.data(), out.c1.data(), out.cx.data());
            });
        },
        b.mean_from_input, b.var_from_input);
    return out;
}

// Calls f(i, count, c) for every run of values of one channel c of the [N][C][S] view, with the
// runs split between the OpenMP threads: the runs are of length S, or, without trailing
// dimensions, of length 1 gathered into rows (then c is the row's first channel, 0, and the
// channel advances with the value). The elementwise passes of this layer are loops over them.
template <class F>
void for_each_channel_run(const NcsView& v, F&& f) {
    const std::size_t runs = v.s == 1 ? v.n : v.n * v.c;
    kernels::parallel_for(runs, v.size() >= kernels::kParallelMin, [&](std::size_t r) {
        if (v.s == 1)
            f(r * v.c, v.c, std::size_t{0});
        else
            f(r * v.s, v.s, r % v.c);
    });
}

// Values of one position piece in a run, for the passes that read per-(c, s) coefficients.
constexpr std::size_t kPieceValues = 1024;

// A channel's S positions cut into pieces of at most kPieceValues, for the passes that read the
// batch branch's per-(c, s) coefficients (arrays the size of a sample): each piece is done for
// every sample before the next, so that its coefficients are read from memory once, not once
// per sample.
struct PositionPieces {
    std::size_t per_channel, length, count;
    explicit PositionPieces(const NcsView& v)
        : per_channel((v.s + kPieceValues - 1) / kPieceValues),
          length((v.s + per_channel - 1) / per_channel),
          count(v.c * per_channel) {}
};

// f(p, c, s0, count) for every piece p of channel c at positions [s0, s0 + count), the pieces
// split between the threads (v.s > 1).
template <class F>
void for_each_piece(const NcsView& v, F&& f) {
    const PositionPieces pieces(v);
    kernels::parallel_for(pieces.count, v.size() >= kernels::kParallelMin, [&](std::size_t p) {
        const std::size_t s0 = (p % pieces.per_channel) * pieces.length;
        f(p, p / pieces.per_channel, s0, std::min(pieces.length, v.s - s0));
    });
}

// for_each_channel_run, piece by piece (for_each_piece) with trailing dimensions: f(i, count, c)
// as for for_each_channel_run (a run may start within a channel's positions); the same values,
// in another order. Without trailing dimensions the coefficients are C values, and rows are runs.
template <class F>
void for_each_piece_across_samples(const NcsView& v, F&& f) {
    if (v.s == 1) {
        for_each_channel_run(v, f);
        return;
    }
    for_each_piece(v, [&](std::size_t, std::size_t c, std::size_t s0, std::size_t count) {
        for (std::size_t n = 0; n < v.n; ++n)
            f((n * v.c + c) * v.s + s0, count, c);
    });
}

// One branch's standardization: x̂ = (x − shift_k)·inv_std_k for the set k of every value.
template <class T>
struct BranchScale {
    const T* shift;
    const T* inv_std;
};

// Each branch's set of the first value of a run that starts at element i (for_each_channel_run):
// the batch set advances with every value (a position, or in a row a channel); the feature set
// with every position, and is one for a row.
struct RunSets {
    std::size_t batch, feature;
    RunSets(const NcsView& v, std::size_t i)
        : batch(i % (v.c * v.s)), feature(i / (v.c * v.s) * v.s + i % v.s) {}
};

// Both branches' x̂ of the values of a run, formed by the forward and again, from the kept
// input, by the backward: the same float operations, so the backward sees the forward's x̂ bit
// for bit.
template <class T>
struct RunXhat {
    const T* mb;
    const T* sb;
    const T* mf;
    const T* sf;

    // batch.shift is null where the batch branch vanishes (BlnBranch::vanishes).
    RunXhat(RunSets k, BranchScale<T> batch, BranchScale<T> feature)
        : mb(batch.shift ? batch.shift + k.batch : nullptr),
          sb(batch.shift ? batch.inv_std + k.batch : nullptr),
          mf(feature.shift + k.feature),
          sf(feature.inv_std + k.feature) {}
    __attribute__((always_inline)) T batch(T x, std::size_t j) const {
        return kernels::standardized(x, mb[j], sb[j]);
    }
    // The value's own feature set: runs of one channel (a row's one set is read once by the
    // loops instead).
    __attribute__((always_inline)) T feature(T x, std::size_t j) const {
        return kernels::standardized(x, mf[j], sf[j]);
    }
};

// The mixing pass over one run (standardize_and_mix), in every ISA clone. Where the batch branch
// vanishes its x̂ is the 0 that (x − x)·inv_std is for a finite x, still weighed by cb, so that y
// has the bits of the general formula (but for the sign of a zero y where x is −0).
template <class T, bool rows, bool keeps, bool batch_vanishes>
NORMLAB_ISA_CLONES void mix_run(const T* x, std::size_t count, RunXhat<T> run, const T* gc,
                                const T* bc, T cf, T cb, T* kept, T* y) {
    // What stays the same over the run (a row's one feature set; otherwise the channel's γ and
    // β) is read once here: read through the pointers in the loop, it was loaded again for every
    // vector, since the stores might alias it.
    const T row_shift = run.mf[0], row_scale = run.sf[0], channel_gamma = gc[0],
            channel_beta = bc[0];
#pragma omp simd
    for (std::size_t j = 0; j < count; ++j) {
        const T hb = batch_vanishes ? T(0) : run.batch(x[j], j);
        const T hf =
            rows ? kernels::standardized(x[j], row_shift, row_scale) : run.feature(x[j], j);
        const T gj = rows ? gc[j] : channel_gamma;
        const T bj = rows ? bc[j] : channel_beta;
        if constexpr (keeps) kept[j] = x[j];
        y[j] = (cf * hf + cb * hb) * gj + bj;
    }
}

// Both branches standardized and mixed in one pass over x: x̂_B = (x − m_B)·s_B per (c, s),
// x̂_F = (x − m_F)·s_F per (n, s), y = γ_c·(cf·x̂_F + cb·x̂_B) + β_c with cf = w_F/√C and
// cb = w_B/√C. x is read once and y written once; `kept`, when not null, receives a copy of x
// for the backward, which forms both x̂ from it again (writing the two x̂ instead took twice the
// stores, and two arrays' reads in the backward). The same float operations, in the same order,
// as standardizing each branch into an array and then mixing the arrays.
template <class T>
void standardize_and_mix(const T* x, const NcsView& v, BranchScale<T> batch, BranchScale<T> feature,
                         T cf, T cb, const T* gamma, const T* beta, T* kept, T* y) {
    std::vector<T> ones, zeros;
    const T* g = kernels::or_constant(gamma, ones, v.c, T(1));
    const T* b = kernels::or_constant(beta, zeros, v.c, T(0));
    // Specialized on whether the run is a row (per-element γ, β and batch set, one feature set),
    // on whether x is copied and on whether the batch branch vanishes (batch.shift null), so that
    // each loop vectorizes.
    const auto pass = [&](auto rows, auto keeps, auto batch_vanishes) {
        for_each_piece_across_samples(v, [&](std::size_t i, std::size_t count, std::size_t c) {
            mix_run<T, decltype(rows)::value, decltype(keeps)::value,
                    decltype(batch_vanishes)::value>(
                x + i, count, RunXhat<T>(RunSets(v, i), batch, feature), g + c, b + c, cf, cb,
                keeps ? kept + i : nullptr, y + i);
        });
    };
    with_flags(pass, v.s == 1, kept != nullptr, batch.shift == nullptr);
}

// One branch's backward coefficients at a run's first set.
template <class T>
struct RunGrad {
    const T* cg;
    const T* c1;
    const T* cx;
};

// What the backward's pass over a run writes besides dx: nothing (no γ); the mixed x̂, for the
// pass over dy that takes dγ (rows); or, on a run of one channel, its Σdy and Σdy·x̂ (the run's
// terms of dβ and dγ), read from dy and formed in registers, so that dγ takes no pass of its own.
enum class Extra { none, mixed, affine_sums };

// What the batch branch adds to dx: nothing, where it vanishes (BlnBranch::vanishes: a set of
// one value, whose dx_B = cg·(g − ḡ − cx·x̂) is a zero of either sign, ḡ being g itself and x̂
// 0); cg·g, where its statistics were population constants; cg·(g − c1 − cx·x̂) otherwise.
enum class BatchTerms { vanish, scaled, projected };

template <class F>
void with_batch_terms(BatchTerms terms, F&& f) {
    using T = BatchTerms;
    if (terms == T::vanish)
        f(std::integral_constant<T, T::vanish>{});
    else if (terms == T::scaled)
        f(std::integral_constant<T, T::scaled>{});
    else
        f(std::integral_constant<T, T::projected>{});
}

// The backward's pass over one run (apply_and_mix), in every ISA clone. g = γ ⊙ dy is formed from
// dy in registers: with the run's γ (`gamma`, Extra::affine_sums) or a row's γ per value
// (`gammas`, Extra::mixed); without γ (Extra::none) g is dy.
template <class T, bool rows, BatchTerms batch_terms, bool feature_xhat, Extra extra>
NORMLAB_ISA_CLONES void apply_run(const T* dy, const T* x, std::size_t count, RunXhat<T> run,
                                  RunGrad<T> batch, RunGrad<T> feature, T cf, T cb, T gamma,
                                  const T* gammas, T* dx, T* mixed, double* sums) {
    constexpr bool sums_run = extra == Extra::affine_sums;
    // A row's one feature set, read once here (as in mix_run).
    const T row_shift = run.mf[0], row_scale = run.sf[0], row_cg = feature.cg[0];
    T row_c1 = 0, row_cx = 0;
    if constexpr (feature_xhat) {
        row_c1 = feature.c1[0];
        row_cx = feature.cx[0];
    }
    double sum_dy = 0, sum_dy_xhat = 0;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
    for (std::size_t j = 0; j < count; ++j) {
        const T g = sums_run ? dy[j] * gamma : extra == Extra::mixed ? dy[j] * gammas[j] : dy[j];
        constexpr bool vanishes = batch_terms == BatchTerms::vanish;
        const T hb = vanishes ? T(0) : run.batch(x[j], j);
        const T hf =
            rows ? kernels::standardized(x[j], row_shift, row_scale) : run.feature(x[j], j);
        const T fcg = rows ? row_cg : feature.cg[j];
        T df;
        if constexpr (feature_xhat)
            df = kernels::applied(fcg, T(1), g, rows ? row_c1 : feature.c1[j],
                                  rows ? row_cx : feature.cx[j], hf);
        else
            df = kernels::applied(fcg, T(1), g, T(0));
        if constexpr (batch_terms == BatchTerms::projected)
            dx[j] = kernels::applied(batch.cg[j], T(1), g, batch.c1[j], batch.cx[j], hb) + df;
        else if constexpr (batch_terms == BatchTerms::scaled)
            dx[j] = kernels::applied(batch.cg[j], T(1), g, T(0)) + df;
        else
            dx[j] = df;
        if constexpr (extra == Extra::mixed) mixed[j] = cf * hf + cb * hb;
        if constexpr (sums_run) {
            sum_dy += double(dy[j]);
            sum_dy_xhat += double(dy[j] * (cf * hf + cb * hb));
        }
    }
    if constexpr (sums_run) {
        sums[0] += sum_dy;
        sums[1] += sum_dy_xhat;
    }
}

// The backward's elementwise pass: dx = dx_B + dx_F from each branch's coefficients (as
// kernels::backward_apply would write each branch, then added), in one pass over dy (weighed by
// γ in registers) and the kept input x. With γ also dγ's and dβ's raw sums per channel, Σdy and
// Σdy·x̂ with the mixed x̂ = cf·x̂_F + cb·x̂_B: with trailing dimensions in this same pass, each
// piece's runs added in sample order and a channel's pieces in order, so the sums do not depend
// on the number of threads; on rows, the pass writes the mixed x̂ over x and a pass over dy takes
// the sums. dx may be x where no mixed x̂ is written: each value is written after its last read.
template <class T>
void apply_and_mix(const T* dy, T* x, const NcsView& v, BranchScale<T> batch_scale,
                   BranchScale<T> feature_scale, const BranchGrad<T>& batch,
                   const BranchGrad<T>& feature, T cf, T cb, const T* gamma, T* dx, double* sum_dy,
                   double* sum_dy_xhat) {
    const bool sums = gamma != nullptr;
    const BatchTerms batch_terms = batch.cg.empty()   ? BatchTerms::vanish
                                   : batch.cx.empty() ? BatchTerms::scaled
                                                      : BatchTerms::projected;
    const auto run_at = [&](auto rows, auto terms, auto feature_xhat, auto extra, std::size_t i,
                            std::size_t count, T gamma_c, double* run_sums) {
        const RunSets k(v, i);
        const auto at = [](const SetValues<T>& values, bool present, std::size_t set) {
            return present ? values.data() + set : nullptr;
        };
        constexpr Extra e = decltype(extra)::value;
        constexpr BatchTerms bt = decltype(terms)::value;
        apply_run<T, decltype(rows)::value, bt, decltype(feature_xhat)::value, e>(
            dy + i, x + i, count, RunXhat<T>(k, batch_scale, feature_scale),
            RunGrad<T>{at(batch.cg, bt != BatchTerms::vanish, k.batch),
                       at(batch.c1, bt == BatchTerms::projected, k.batch),
                       at(batch.cx, bt == BatchTerms::projected, k.batch)},
            RunGrad<T>{feature.cg.data() + k.feature, at(feature.c1, feature_xhat, k.feature),
                       at(feature.cx, feature_xhat, k.feature)},
            cf, cb, gamma_c, e == Extra::mixed ? gamma : nullptr, dx + i,
            e == Extra::mixed ? x + i : nullptr, run_sums);
    };
    if (sums && v.s > 1) {
        const PositionPieces pieces(v);
        std::vector<double> piece_sums(2 * pieces.count);
        with_batch_terms(batch_terms, [&](auto terms) {
            with_flags(
                [&](auto feature_xhat) {
                    for_each_piece(
                        v, [&](std::size_t p, std::size_t c, std::size_t s0, std::size_t count) {
                            for (std::size_t n = 0; n < v.n; ++n)
                                run_at(std::false_type{}, terms, feature_xhat,
                                       std::integral_constant<Extra, Extra::affine_sums>{},
                                       (n * v.c + c) * v.s + s0, count, gamma[c],
                                       piece_sums.data() + 2 * p);
                        });
                },
                !feature.cx.empty());
        });
        for (std::size_t c = 0; c < v.c; ++c) {
            sum_dy[c] = sum_dy_xhat[c] = 0;
            for (std::size_t q = 0; q < pieces.per_channel; ++q) {
                sum_dy[c] += piece_sums[2 * (c * pieces.per_channel + q)];
                sum_dy_xhat[c] += piece_sums[2 * (c * pieces.per_channel + q) + 1];
            }
        }
        return;
    }
    with_batch_terms(batch_terms, [&](auto terms) {
        with_flags(
            [&](auto rows, auto feature_xhat, auto mixes) {
                // Only rows get here with γ (the mixed x̂ then): no clones for runs that mix.
                constexpr bool writes_mixed = decltype(rows)::value && decltype(mixes)::value;
                using E = std::integral_constant<Extra, writes_mixed ? Extra::mixed : Extra::none>;
                for_each_piece_across_samples(
                    v, [&](std::size_t i, std::size_t count, std::size_t) {
                        run_at(rows, terms, feature_xhat, E{}, i, count, T(1), nullptr);
                    });
            },
            v.s == 1, !feature.cx.empty(), sums);
    });
    if (sums) kernels::channel_sums(dy, static_cast<const T*>(x), v, sum_dy, sum_dy_xhat);
}

std::string flag_list(const BatchLayerNormOptions& o) {
    std::string s;
    auto add = [&](bool on, const char* name) {
        if (on) s += (s.empty() ? "" : ", ") + std::string(name) + "=true";
    };
    add(o.batch_moving_mean, "batch_moving_mean");
    add(o.batch_moving_var, "batch_moving_var");
    add(o.feature_moving_mean, "feature_moving_mean");
    add(o.feature_moving_var, "feature_moving_var");
    return s;
}

}  // namespace

BlnWeights bln_weights(double batch_size) {
    return {1.0 / batch_size - 1e-4, 1.0 - (1.0 / batch_size + 1e-4)};
}

template <class T>
BatchLayerNorm<T>::BatchLayerNorm(std::size_t num_features, Options options)
    : NormalizerBase<T, SavedBln<T>>(kName, canonical_spec(kName, options), num_features,
                                     options.affine, options.affine),
      options_(std::move(options)) {
    const std::string who = this->label() + ": ";
    const Options& o = options_;
    if (!(o.eps > 0)) throw OptionError(who + "eps must be > 0, got " + format_value(o.eps));
    if (o.batch_size < 0)
        throw OptionError(who + "batch_size must be >= 1, or 0 for the first call's, got " +
                          format_value(o.batch_size));
    if (o.positions < 0)
        throw OptionError(who + "positions must be >= 1, or 0 for the first call's, got " +
                          format_value(o.positions));
    if (o.weights != "configured" && o.weights != "actual")
        throw OptionError(who + "weights must be 'configured' or 'actual', got '" + o.weights +
                          "'");
    const std::string flags = flag_list(o);
    if (!o.track_running_stats && !flags.empty())
        throw OptionError(who +
                          "track_running_stats=false keeps no population statistics, so "
                          "eval cannot use them; got " +
                          flags);
    // B/(B−1) is a division by zero for B = 1: the published layer's population variances are
    // NaN (batch) and Inf (feature) there.
    if (o.batch_size == 1 && o.track_running_stats && (o.batch_moving_var || o.feature_moving_var))
        throw OptionError(who +
                          "batch_size=1 leaves the population variances undefined (they "
                          "carry the factor B/(B-1)); set batch_moving_var=false and "
                          "feature_moving_var=false, got " +
                          flags);
    allocate_buffers();
}

template <class T>
void BatchLayerNorm<T>::allocate_buffers() {
    if (!options_.track_running_stats) return;
    const std::size_t c = this->num_features();
    const auto b = std::size_t(options_.batch_size);
    const auto s = std::size_t(options_.positions);
    moving_batch_mean_ = xt::zeros<T>({c, s});
    moving_batch_var_ = xt::ones<T>({c, s});
    moving_feature_mean_ = xt::zeros<T>({b, s});
    moving_feature_var_ = xt::ones<T>({b, s});
    clear_sums();
}

template <class T>
void BatchLayerNorm<T>::clear_sums() {
    if (!options_.track_running_stats) return;
    sum_batch_mean_ = xt::zeros<T>(moving_batch_mean_.shape());
    sum_batch_var_ = xt::zeros<T>(moving_batch_mean_.shape());
    sum_feature_mean_ = xt::zeros<T>(moving_feature_mean_.shape());
    sum_feature_var_ = xt::zeros<T>(moving_feature_mean_.shape());
    epoch_steps_ = 0;
}

template <class T>
BlnWeights BatchLayerNorm<T>::weights_for(std::size_t n) const {
    const bool configured = options_.weights == "configured" && options_.batch_size > 0;
    return bln_weights(configured ? double(options_.batch_size) : double(n));
}

template <class T>
void BatchLayerNorm<T>::check_call(const Array<T>& x, const NcsView& v, bool train,
                                   std::size_t batch, std::size_t positions) const {
    const Options& o = options_;
    const bool uses_batch_population = !train && (o.batch_moving_mean || o.batch_moving_var);
    const bool uses_feature_population = !train && (o.feature_moving_mean || o.feature_moving_var);
    const std::string got = ", got input of shape " + format_shape(shape_of(x));
    const std::string geometry = "batch_size=" + std::to_string(batch) +
                                 " samples with positions=" + std::to_string(positions) +
                                 " values per channel";
    if (o.track_running_stats && train && (v.n != batch || v.s != positions))
        throw ShapeError(this->label() + ": training with running statistics needs batches of " +
                         geometry +
                         " (the published layer keeps its feature statistics per slot of a "
                         "fixed-size batch)" +
                         got + "; drop the last partial batch, or use track_running_stats=false");
    if (uses_batch_population || uses_feature_population) {
        if (population_steps_ == 0)
            throw StateError(this->label() + ": eval with " + flag_list(o) +
                             " needs population statistics, but no training epoch has ended "
                             "yet: call end_epoch() after training, or set those flags to false");
        if (v.s != positions)
            throw ShapeError(this->label() +
                             ": the population statistics are kept per position, for positions=" +
                             std::to_string(positions) + " values per channel" + got);
        if (uses_feature_population && v.n != batch)
            throw ShapeError(this->label() +
                             ": eval with feature_moving_mean or feature_moving_var needs the "
                             "training batch size, because the population feature statistics "
                             "are kept per slot of the batch: expected " +
                             geometry + got);
    }
    if (o.track_running_stats && batch == 1 && (o.batch_moving_var || o.feature_moving_var))
        throw OptionError(this->label() + ": batch_size=1 (taken from the first input, of shape " +
                          format_shape(shape_of(x)) +
                          ") leaves the population variances undefined (they carry the factor "
                          "B/(B-1)); set batch_moving_var=false and feature_moving_var=false, "
                          "got " +
                          flag_list(o));
}

template <class T>
Array<T> BatchLayerNorm<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    return run_forward(x, mode, grad, false);
}

template <class T>
Array<T> BatchLayerNorm<T>::forward(Array<T>&& x, Mode mode, Grad grad) {
    // A context saved from a handed-over input has no copy of it: it takes this one.
    return this->forward_keeping_input(
        x, [&](const Array<T>& input) { return run_forward(input, mode, grad, true); },
        [](const SavedBln<T>& ctx) { return shape_of(ctx.input) != ctx.shape; });
}

template <class T>
Array<T> BatchLayerNorm<T>::run_forward(const Array<T>& x, Mode mode, Grad grad, bool handed_over) {
    const NcsView v = this->check_input(x);
    const bool train = mode == Mode::train;
    const bool tracking = options_.track_running_stats;
    // The geometry this call fixes if the options left it open; committed only after every check.
    const std::size_t batch = options_.batch_size > 0 ? std::size_t(options_.batch_size) : v.n;
    const std::size_t positions = options_.positions > 0 ? std::size_t(options_.positions) : v.s;
    check_call(x, v, train, batch, positions);

    const bool batch_mean_in = train || !options_.batch_moving_mean;
    const bool batch_var_in = train || !options_.batch_moving_var;
    const bool feature_mean_in = train || !options_.feature_moving_mean;
    const bool feature_var_in = train || !options_.feature_moving_var;
    // At a batch of one the batch branch has sets of one value: their means are x itself and
    // their variances exactly 0. Shifted by its own mean, each x̂ is 0 (BlnBranch::vanishes,
    // whatever the variance); shifted by the population mean, every set has the same inv_std.
    const bool batch_vanishes = v.n == 1 && batch_mean_in;
    const auto b_calls = batch_calls(v);
    const auto f_calls = feature_calls(v);
    const std::size_t b_sets = v.c * v.s, f_sets = v.n * v.s;
    Moments<T> b_cur, f_cur;
    if ((batch_mean_in || batch_var_in) && !batch_vanishes)
        b_cur = branch_moments(x, b_calls, b_sets);
    if (feature_mean_in || feature_var_in) f_cur = branch_moments(x, f_calls, f_sets);
    // make_branch checks the current moments in its pass over the sets; the search for the
    // first non-finite set runs only on failure. (var null: the variances are 0, a vanishing
    // batch branch's.)
    auto refuse_non_finite = [&](const T* mean, const T* var, std::size_t n, const char* branch) {
        if (const std::size_t k = kernels::first_non_finite(mean, var, n); k < n)
            throw NonFiniteError(
                this->label() + ": " + branch + " statistics of the input are not finite (set " +
                std::to_string(k) + " of " + std::to_string(n) + "): the input of shape " +
                format_shape(shape_of(x)) + " contains NaN or Inf; nothing was updated");
    };
    // The population statistics a branch reads exist (check_call): in training, where the first
    // call may still allocate them below, both branches take the input's.
    SavedBln<T> ctx;
    // Each branch is shifted by its current mean, or by the population mean.
    // (A vanishing batch branch has none: null.)
    const T* b_shift = batch_vanishes  ? nullptr
                       : batch_mean_in ? b_cur.mean.data()
                                       : moving_batch_mean_.data();
    const T* f_shift = feature_mean_in ? f_cur.mean.data() : moving_feature_mean_.data();
    bool finite = true;
    const bool keeps = grad == Grad::keep;
    if (batch_vanishes) {
        ctx.batch.vanishes = true;
        ctx.batch.var_from_input = batch_var_in;
        refuse_non_finite(x.data(), nullptr, b_sets, "batch");
    } else {
        ctx.batch = make_branch(b_cur,
                                BranchSource<T>{b_shift, moving_batch_var_.data(), batch_mean_in,
                                                batch_var_in, v.n == 1},
                                b_sets, options_.eps, keeps, finite);
        if (!finite) refuse_non_finite(b_cur.mean.data(), b_cur.var.data(), b_sets, "batch");
    }
    ctx.feature = make_branch(f_cur,
                              BranchSource<T>{f_shift, moving_feature_var_.data(), feature_mean_in,
                                              feature_var_in, false},
                              f_sets, options_.eps, keeps, finite);
    if (!finite) refuse_non_finite(f_cur.mean.data(), f_cur.var.data(), f_sets, "feature");

    // Every check passed: fix what the first call decides.
    const bool fixes_buffers = tracking && (options_.batch_size == 0 || options_.positions == 0);
    if (options_.batch_size == 0 && (tracking || options_.weights == "configured"))
        options_.batch_size = std::int64_t(batch);
    if (tracking) options_.positions = std::int64_t(positions);
    if (fixes_buffers) allocate_buffers();

    const BlnWeights w = weights_for(v.n);
    const double root_c = std::sqrt(double(v.c));
    ctx.coef_batch = T(w.batch / root_c);
    ctx.coef_feature = T(w.feature / root_c);
    // The backward forms both x̂ again from the input: a handed-over input is kept as it is,
    // another is copied by the pass below.
    const bool copies = keeps && !handed_over;
    if (copies) ctx.input = Array<T>::from_shape(x.shape());
    Array<T> y = Array<T>::from_shape(x.shape());
    standardize_and_mix(
        x.data(), v, BranchScale<T>{b_shift, batch_vanishes ? nullptr : ctx.batch.inv_std.data()},
        BranchScale<T>{f_shift, ctx.feature.inv_std.data()}, ctx.coef_feature, ctx.coef_batch,
        this->gamma(), this->beta(), copies ? ctx.input.data() : nullptr, y.data());

    if (train && tracking) {
        const auto accumulate = [](Array<T>& sum_mean, Array<T>& sum_var,
                                   const Moments<T>& current) {
            kernels::for_each_set_range(current.mean.size(),
                                        [&](std::size_t begin, std::size_t end) {
                                            add_sets(current.mean.data(), current.var.data(), begin,
                                                     end, sum_mean.data(), sum_var.data());
                                        });
        };
        if (batch_vanishes)
            // The means are x; adding the variances, +0, would change no sum.
            kernels::for_each_set_range(b_sets, [&](std::size_t begin, std::size_t end) {
                add_sets(x.data(), static_cast<const T*>(nullptr), begin, end,
                         sum_batch_mean_.data(), sum_batch_var_.data());
            });
        else
            accumulate(sum_batch_mean_, sum_batch_var_, b_cur);
        accumulate(sum_feature_mean_, sum_feature_var_, f_cur);
        ++epoch_steps_;
    }
    if (grad == Grad::keep) {
        // The current means were last read above; the context takes them over.
        if (!batch_vanishes)
            ctx.shift_batch = kept_shift(b_cur, moving_batch_mean_.data(), batch_mean_in, b_sets);
        ctx.shift_feature = kept_shift(f_cur, moving_feature_mean_.data(), feature_mean_in, f_sets);
        ctx.shape = shape_of(x);
        this->save(std::move(ctx), grad);
    }
    return y;
}

template <class T>
Array<T> BatchLayerNorm<T>::backward(const Array<T>& dy) {
    SavedBln<T> ctx = this->take(dy);
    if (shape_of(ctx.input) != ctx.shape)
        throw StateError(this->label() +
                         ": the saved context is missing the input its forward was to keep");
    const NcsView v = this->view_of(ctx.shape);
    const T* gamma = this->gamma();
    // Both branches see g = γ ⊙ dy, which the kernels form from dy in registers: γ per channel
    // is a column of the batch branch's view (per channel and position with trailing
    // dimensions: γ repeated over the positions) and of the feature branch's on rows, and a row
    // of the feature branch's per-sample view. No array of g is written.
    SetValues<T> gamma_by_set;
    ViewWeights<T> batch_weights, feature_weights;
    if (gamma && v.s > 1) {
        if (!ctx.batch.vanishes) {
            gamma_by_set.resize(v.c * v.s);
            for (std::size_t c = 0; c < v.c; ++c)
                std::fill_n(gamma_by_set.begin() + std::ptrdiff_t(c * v.s), v.s, gamma[c]);
            batch_weights.columns = gamma_by_set.data();
        }
        feature_weights.rows = gamma;
    } else if (gamma) {
        batch_weights.columns = feature_weights.columns = gamma;
    }

    T* const x = ctx.input.data();
    const BranchGrad<T> batch =
        ctx.batch.vanishes ? BranchGrad<T>{}
                           : branch_grad(dy.data(), batch_weights, x, ctx.shift_batch.data(),
                                         batch_calls(v), ctx.batch, ctx.coef_batch, v.c * v.s);
    const BranchGrad<T> feature =
        branch_grad(dy.data(), feature_weights, x, ctx.shift_feature.data(), feature_calls(v),
                    ctx.feature, ctx.coef_feature, v.n * v.s);
    // dx is written over the spent input, except on rows with γ, where the pass writes dγ's
    // mixed x̂ there.
    Array<T> dx = gamma && v.s == 1 ? Array<T>::from_shape(dy.shape()) : std::move(ctx.input);
    std::vector<double> sum_dy(v.c), sum_dy_xhat(v.c);
    apply_and_mix(dy.data(), x, v, BranchScale<T>{ctx.shift_batch.data(), ctx.batch.inv_std.data()},
                  BranchScale<T>{ctx.shift_feature.data(), ctx.feature.inv_std.data()}, batch,
                  feature, ctx.coef_feature, ctx.coef_batch, gamma, dx.data(), sum_dy.data(),
                  sum_dy_xhat.data());
    if (gamma) this->add_affine_grads(sum_dy_xhat.data(), sum_dy.data());
    return dx;
}

template <class T>
void BatchLayerNorm<T>::begin_epoch() {
    clear_sums();
}

template <class T>
void BatchLayerNorm<T>::end_epoch() {
    if (!options_.track_running_stats || epoch_steps_ == 0) return;
    const double inv_steps = 1.0 / double(epoch_steps_);
    const double b = double(options_.batch_size);
    // The published update_mm_mv applies B/(B−1) to the feature variance too, although that
    // variance is over C values; kept as published. For B = 1 the factor does not exist and the
    // variances keep their previous values (the options then forbid using them).
    const bool has_bessel = options_.batch_size > 1;
    const double bessel = has_bessel ? b / (b - 1.0) : 0.0;
    auto finish = [&](Array<T>& mean, Array<T>& var, const Array<T>& sum_mean,
                      const Array<T>& sum_var) {
        for (std::size_t k = 0; k < mean.size(); ++k) {
            mean.data()[k] = T(double(sum_mean.data()[k]) * inv_steps);
            if (has_bessel) var.data()[k] = T(double(sum_var.data()[k]) * inv_steps * bessel);
        }
    };
    finish(moving_batch_mean_, moving_batch_var_, sum_batch_mean_, sum_batch_var_);
    finish(moving_feature_mean_, moving_feature_var_, sum_feature_mean_, sum_feature_var_);
    population_steps_ = epoch_steps_;
    clear_sums();
}

template <class T>
std::vector<BufferRef<T>> BatchLayerNorm<T>::buffers() {
    if (!options_.track_running_stats) return {};
    return {{"moving_batch_mean", &moving_batch_mean_},
            {"moving_batch_var", &moving_batch_var_},
            {"moving_feature_mean", &moving_feature_mean_},
            {"moving_feature_var", &moving_feature_var_},
            {"epoch_sum_batch_mean", &sum_batch_mean_},
            {"epoch_sum_batch_var", &sum_batch_var_},
            {"epoch_sum_feature_mean", &sum_feature_mean_},
            {"epoch_sum_feature_var", &sum_feature_var_}};
}

template <class T>
std::vector<CounterRef> BatchLayerNorm<T>::counters() {
    if (!options_.track_running_stats) return {};
    // The geometry is part of the state: the buffers' shapes follow from it, and a layer whose
    // geometry was left open until the first input must learn it when its state is restored.
    return {{"epoch_steps", &epoch_steps_},
            {"population_steps", &population_steps_},
            {"batch_size", &options_.batch_size},
            {"positions", &options_.positions}};
}

template class BatchLayerNorm<float>;
template class BatchLayerNorm<double>;

}  // namespace normlab
