#pragma once
// The innermost loops of the statistics kernel, one per job, each over one contiguous run.
// Compiled for AVX-512, AVX2 and the baseline ISA, picked at load time (GCC target_clones), so
// portable binaries still use the host's vector width. Sums are kept in kLanes independent
// double accumulators — enough parallel chains to hide add latency, and a fixed order, so the
// result does not depend on how runs are split across threads (it may differ in the last bits
// between machines whose clones differ).

#include <cstddef>
#include <cstring>
#include <type_traits>

#define NORMLAB_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace normlab::kernels::rows {

constexpr std::size_t kLanes = 16;

// The lane helpers below are always inlined into the ISA clones, so the vector-ABI note GCC
// gives for them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// Sixteen lanes as two vectors of eight doubles (GCC vector extensions: one AVX-512 register,
// two AVX2 or four SSE2 registers each), so every ISA clone vectorizes the same fixed order.
using Lanes = double __attribute__((vector_size(64)));
using FloatLanes = float __attribute__((vector_size(32)));

template <class T>
__attribute__((always_inline)) inline Lanes load_lanes(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        FloatLanes f;
        std::memcpy(&f, p, sizeof f);
        return __builtin_convertvector(f, Lanes);
    } else {
        Lanes d;
        std::memcpy(&d, p, sizeof d);
        return d;
    }
}

__attribute__((always_inline)) inline double sum_lanes(Lanes a, Lanes b) {
    double s = 0;
    for (int j = 0; j < 8; ++j) s += a[j] + b[j];
    return s;
}

// s1 += Σ(p − shift), s2 += Σ(p − shift)².
template <class T>
NORMLAB_ISA_CLONES void shifted_sums(const T* p, std::size_t n, double shift, double& s1,
                                     double& s2) {
    Lanes a0 = {}, a1 = {}, q0 = {}, q1 = {};
    const Lanes sh = Lanes{} + shift;
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        const Lanes d0 = load_lanes(p + i) - sh, d1 = load_lanes(p + i + 8) - sh;
        a0 += d0;
        a1 += d1;
        q0 += d0 * d0;
        q1 += d1 * d1;
    }
    double ta = sum_lanes(a0, a1), tq = sum_lanes(q0, q1);
    for (; i < n; ++i) {
        const double d = double(p[i]) - shift;
        ta += d;
        tq += d * d;
    }
    s1 += ta;
    s2 += tq;
}

// s1 += Σ w·dy, s2 += Σ w·dy·x̂ with w = gamma[i] (or 1 when gamma is null); xhat may be null.
template <class T>
NORMLAB_ISA_CLONES void grad_sums(const T* dy, const T* xhat, const T* gamma, std::size_t n,
                                  double& s1, double& s2) {
    Lanes a0 = {}, a1 = {}, q0 = {}, q1 = {};
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        Lanes g0 = load_lanes(dy + i), g1 = load_lanes(dy + i + 8);
        if (gamma) {
            g0 *= load_lanes(gamma + i);
            g1 *= load_lanes(gamma + i + 8);
        }
        a0 += g0;
        a1 += g1;
        if (xhat) {
            q0 += g0 * load_lanes(xhat + i);
            q1 += g1 * load_lanes(xhat + i + 8);
        }
    }
    double ta = sum_lanes(a0, a1), tq = sum_lanes(q0, q1);
    for (; i < n; ++i) {
        const double g = gamma ? double(gamma[i]) * double(dy[i]) : double(dy[i]);
        ta += g;
        if (xhat) tq += g * double(xhat[i]);
    }
    s1 += ta;
    s2 += tq;
}

// Column sums down a dense block: s1[i] += Σ_rows (x[i] − shift[i]), s2[i] += its square.
template <class T>
NORMLAB_ISA_CLONES void column_shifted_sums(const T* x, std::size_t n, const double* shift,
                                            double* s1, double* s2) {
#pragma omp simd
    for (std::size_t i = 0; i < n; ++i) {
        const double d = double(x[i]) - shift[i];
        s1[i] += d;
        s2[i] += d * d;
    }
}

// s1[i] += dy[i], s2[i] += dy[i]·x̂[i] (xhat may be null).
template <class T>
NORMLAB_ISA_CLONES void column_grad_sums(const T* dy, const T* xhat, std::size_t n, double* s1,
                                         double* s2) {
    if (xhat) {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) {
            s1[i] += double(dy[i]);
            s2[i] += double(dy[i]) * double(xhat[i]);
        }
    } else {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) s1[i] += double(dy[i]);
    }
}

// x̂ = (x − m)·sc + off, y = x̂·g + b, with g, b per element (g_step 1) or one value (g_step 0).
template <class T>
NORMLAB_ISA_CLONES void affine(const T* x, std::size_t n, T m, T sc, T off, const T* g,
                               const T* b, std::size_t g_step, T* xhat, T* y) {
    if (g_step == 0) {
        // y = (x − m)·a + c with a = sc·g, c = off·g + b: one multiply-add per element.
        const T gs = g[0], a = sc * gs, c = off * gs + b[0];
        if (xhat) {
#pragma omp simd
            for (std::size_t i = 0; i < n; ++i) {
                const T h = (x[i] - m) * sc + off;
                xhat[i] = h;
                y[i] = h * gs + b[0];
            }
        } else {
#pragma omp simd
            for (std::size_t i = 0; i < n; ++i) y[i] = (x[i] - m) * a + c;
        }
        return;
    }
    if (xhat) {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) {
            const T h = (x[i] - m) * sc + off;
            xhat[i] = h;
            y[i] = h * g[i] + b[i];
        }
    } else {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) y[i] = ((x[i] - m) * sc + off) * g[i] + b[i];
    }
}

// The dense form: every coefficient per element.
template <class T>
NORMLAB_ISA_CLONES void affine_columns(const T* x, std::size_t n, const T* m, const T* sc,
                                       const T* off, const T* g, const T* b, T* xhat, T* y) {
    if (xhat) {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) {
            const T h = (x[i] - m[i]) * sc[i] + off[i];
            xhat[i] = h;
            y[i] = h * g[i] + b[i];
        }
    } else {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) y[i] = ((x[i] - m[i]) * sc[i] + off[i]) * g[i] + b[i];
    }
}

// dx = cg·(g·dy − c1 − cx·x̂), g per element (g_step 1) or one value (g_step 0); null xhat:
// cx = 0. The bracket is formed before scaling so that a set of one value (g·dy = c1, x̂ = 0)
// gets exactly 0 however large cg = 1/σ is.
template <class T>
NORMLAB_ISA_CLONES void apply(const T* dy, const T* xhat, std::size_t n, T cg, const T* g,
                              std::size_t g_step, T c1, T cx, T* dx) {
    if (g_step == 0) {
        const T gs = g[0];
        if (xhat) {
#pragma omp simd
            for (std::size_t i = 0; i < n; ++i) dx[i] = cg * (gs * dy[i] - c1 - cx * xhat[i]);
        } else {
#pragma omp simd
            for (std::size_t i = 0; i < n; ++i) dx[i] = cg * (gs * dy[i] - c1);
        }
        return;
    }
    if (xhat) {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) dx[i] = cg * (g[i] * dy[i] - c1 - cx * xhat[i]);
    } else {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) dx[i] = cg * (g[i] * dy[i] - c1);
    }
}

// The dense form, every coefficient per element.
template <class T>
NORMLAB_ISA_CLONES void apply_columns(const T* dy, const T* xhat, std::size_t n, const T* cg,
                                      const T* g, const T* c1, const T* cx, T* dx) {
    if (xhat) {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) dx[i] = cg[i] * (g[i] * dy[i] - c1[i] - cx[i] * xhat[i]);
    } else {
#pragma omp simd
        for (std::size_t i = 0; i < n; ++i) dx[i] = cg[i] * (g[i] * dy[i] - c1[i]);
    }
}

}  // namespace normlab::kernels::rows
