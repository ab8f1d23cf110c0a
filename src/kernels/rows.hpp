#pragma once
// The innermost loops of the statistics kernel, one per job, each over one contiguous run.
// Compiled for AVX-512, AVX2 and the baseline ISA, picked at load time (GCC target_clones), so
// portable binaries still use the host's vector width. Sums are kept in kLanes independent
// double accumulators — enough parallel chains to hide add latency, and a fixed order, so the
// result does not depend on how runs are split across threads.

#include <cstddef>

#define NORMLAB_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace normlab::kernels::rows {

constexpr std::size_t kLanes = 16;

// s1 += Σ(p − shift), s2 += Σ(p − shift)².
template <class T>
NORMLAB_ISA_CLONES void shifted_sums(const T* p, std::size_t n, double shift, double& s1,
                                     double& s2) {
    double a[kLanes] = {}, q[kLanes] = {};
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t j = 0; j < kLanes; ++j) {
            const double d = double(p[i + j]) - shift;
            a[j] += d;
            q[j] += d * d;
        }
    for (std::size_t j = 0; i < n; ++i, ++j) {
        const double d = double(p[i]) - shift;
        a[j] += d;
        q[j] += d * d;
    }
    for (std::size_t j = 0; j < kLanes; ++j) {
        s1 += a[j];
        s2 += q[j];
    }
}

// s1 += Σ w·dy, s2 += Σ w·dy·x̂ with w = gamma[i] (or 1 when gamma is null); xhat may be null.
template <class T>
NORMLAB_ISA_CLONES void grad_sums(const T* dy, const T* xhat, const T* gamma, std::size_t n,
                                  double& s1, double& s2) {
    double a[kLanes] = {}, q[kLanes] = {};
    auto step = [&](std::size_t i, std::size_t j) {
        const double g = gamma ? double(gamma[i]) * double(dy[i]) : double(dy[i]);
        a[j] += g;
        if (xhat) q[j] += g * double(xhat[i]);
    };
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t j = 0; j < kLanes; ++j) step(i + j, j);
    for (std::size_t j = 0; i < n; ++i, ++j) step(i, j);
    for (std::size_t j = 0; j < kLanes; ++j) {
        s1 += a[j];
        s2 += q[j];
    }
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
