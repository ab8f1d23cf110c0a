#include "kernels/moments.hpp"

#include <algorithm>
#include <vector>

namespace normlab::kernels {
namespace {

// Below this many elements one thread does the whole job: thread start-up would cost more.
constexpr std::size_t kParallelMin = std::size_t{1} << 15;
// Channels handled together when a dense (N, C) input is reduced down its columns.
constexpr std::size_t kChannelChunk = 64;

template <class T>
std::vector<T> ones_if_null(const T* p, std::size_t n, T value) {
    return p ? std::vector<T>{} : std::vector<T>(n, value);
}

// Calls f(k, c0, offset) for every contiguous run of channels_per_set·S values that belong to
// one set: k is the set, c0 its first channel, offset the run's first element.
template <class F>
void for_each_block(const NcsView& v, const SetSpec& sets, F&& f) {
    const std::size_t spp = sets.sets_per_sample(v);
    const std::size_t blocks = v.n * spp;
    const std::size_t block_len = sets.channels_per_set * v.s;
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
    for (std::size_t b = 0; b < blocks; ++b) {
        const std::size_t kk = b % spp;
        f(sets.across_batch ? kk : b, kk * sets.channels_per_set, b * block_len);
    }
}

// Per-channel coefficients for the dense batch case (S = 1, sets across the batch), where a set
// index is a function of the channel alone and every row can be processed with one vector loop.
template <class T, class F>
void for_each_dense_row(const NcsView& v, F&& f) {
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
    for (std::size_t n = 0; n < v.n; ++n) f(n * v.c);
}

}  // namespace

template <class T>
void channel_sums(const T* dy, const T* xhat, const NcsView& v, double* chan_sum_dy,
                  double* chan_sum_dy_xhat) {
    if (v.s == 1) {
        const std::size_t chunks = (v.c + kChannelChunk - 1) / kChannelChunk;
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
        for (std::size_t chunk = 0; chunk < chunks; ++chunk) {
            const std::size_t c0 = chunk * kChannelChunk;
            const std::size_t len = std::min(kChannelChunk, v.c - c0);
            double s1[kChannelChunk] = {};
            double s2[kChannelChunk] = {};
            for (std::size_t n = 0; n < v.n; ++n) {
                const T* d = dy + n * v.c + c0;
                if (xhat) {
                    const T* h = xhat + n * v.c + c0;
#pragma omp simd
                    for (std::size_t i = 0; i < len; ++i) {
                        s1[i] += double(d[i]);
                        s2[i] += double(d[i]) * double(h[i]);
                    }
                } else {
#pragma omp simd
                    for (std::size_t i = 0; i < len; ++i) s1[i] += double(d[i]);
                }
            }
            for (std::size_t i = 0; i < len; ++i) {
                if (chan_sum_dy) chan_sum_dy[c0 + i] = s1[i];
                if (chan_sum_dy_xhat) chan_sum_dy_xhat[c0 + i] = s2[i];
            }
        }
        return;
    }
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
    for (std::size_t c = 0; c < v.c; ++c) {
        double s1 = 0, s2 = 0;
        for (std::size_t n = 0; n < v.n; ++n) {
            const std::size_t off = (n * v.c + c) * v.s;
            double a = 0, b = 0;
            if (xhat) {
#pragma omp simd reduction(+ : a, b)
                for (std::size_t i = 0; i < v.s; ++i) {
                    a += double(dy[off + i]);
                    b += double(dy[off + i]) * double(xhat[off + i]);
                }
            } else {
#pragma omp simd reduction(+ : a)
                for (std::size_t i = 0; i < v.s; ++i) a += double(dy[off + i]);
            }
            s1 += a;
            s2 += b;
        }
        if (chan_sum_dy) chan_sum_dy[c] = s1;
        if (chan_sum_dy_xhat) chan_sum_dy_xhat[c] = s2;
    }
}

template <class T>
void collect_moments(const T* x, const NcsView& v, const SetSpec& sets, bool center, T* mean,
                     T* var) {
    const std::size_t num_sets = sets.num_sets(v);
    const std::size_t cps = sets.channels_per_set;
    const double inv_m = 1.0 / double(sets.set_size(v));
    auto finish = [&](std::size_t k, double shift, double s1, double s2) {
        const double centered_mean = s1 * inv_m;
        mean[k] = center ? T(shift + centered_mean) : T(0);
        const double m2 = center ? s2 - s1 * centered_mean : s2;
        var[k] = T(std::max(m2, 0.0) * inv_m);
    };

    if (sets.across_batch && v.s == 1) {
        // Dense (N, C): walk the rows once, accumulating a chunk of channels at a time.
        std::vector<double> shift(v.c), s1(v.c, 0.0), s2(v.c, 0.0);
        for (std::size_t c = 0; c < v.c; ++c) shift[c] = center ? double(x[(c / cps) * cps]) : 0.0;
        const std::size_t chunks = (v.c + kChannelChunk - 1) / kChannelChunk;
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
        for (std::size_t chunk = 0; chunk < chunks; ++chunk) {
            const std::size_t c0 = chunk * kChannelChunk;
            const std::size_t len = std::min(kChannelChunk, v.c - c0);
            double a[kChannelChunk] = {};
            double b[kChannelChunk] = {};
            const double* sh = shift.data() + c0;
            for (std::size_t n = 0; n < v.n; ++n) {
                const T* row = x + n * v.c + c0;
#pragma omp simd
                for (std::size_t i = 0; i < len; ++i) {
                    const double d = double(row[i]) - sh[i];
                    a[i] += d;
                    b[i] += d * d;
                }
            }
            std::copy(a, a + len, s1.begin() + std::ptrdiff_t(c0));
            std::copy(b, b + len, s2.begin() + std::ptrdiff_t(c0));
        }
        for (std::size_t k = 0; k < num_sets; ++k) {
            double t1 = 0, t2 = 0;
            for (std::size_t c = k * cps; c < (k + 1) * cps; ++c) {
                t1 += s1[c];
                t2 += s2[c];
            }
            finish(k, shift[k * cps], t1, t2);
        }
        return;
    }

    const std::size_t block_len = cps * v.s;
    const std::size_t blocks_per_set = sets.across_batch ? v.n : 1;
    const std::size_t sample_stride = v.c * v.s;
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
    for (std::size_t k = 0; k < num_sets; ++k) {
        // The first run of set k starts at k·block_len in both the per-sample and the
        // across-batch case; across the batch, the set's other runs follow one sample apart.
        const T* first = x + k * block_len;
        const double shift = center ? double(first[0]) : 0.0;
        double s1 = 0, s2 = 0;
        for (std::size_t b = 0; b < blocks_per_set; ++b) {
            const T* p = first + b * sample_stride;
            double a = 0, q = 0;
#pragma omp simd reduction(+ : a, q)
            for (std::size_t i = 0; i < block_len; ++i) {
                const double d = double(p[i]) - shift;
                a += d;
                q += d * d;
            }
            s1 += a;
            s2 += q;
        }
        finish(k, shift, s1, s2);
    }
}

template <class T>
void normalize_affine(const T* x, const NcsView& v, const SetSpec& sets, const T* shift,
                      const T* scale, const T* offset, const T* gamma, const T* beta, T* xhat,
                      T* y) {
    const auto unit = ones_if_null(gamma, v.c, T(1));
    const auto zero_c = ones_if_null(beta, v.c, T(0));
    const auto zero_k = ones_if_null(offset, sets.num_sets(v), T(0));
    const T* g = gamma ? gamma : unit.data();
    const T* bt = beta ? beta : zero_c.data();
    const T* off = offset ? offset : zero_k.data();

    if (sets.across_batch && v.s == 1) {
        // y = (x − m)·a + b per channel, with a = scale·γ and b = offset·γ + β.
        std::vector<T> m(v.c), sc(v.c), a(v.c), b(v.c), o(v.c);
        for (std::size_t c = 0; c < v.c; ++c) {
            const std::size_t k = c / sets.channels_per_set;
            m[c] = shift[k];
            sc[c] = scale[k];
            o[c] = off[k];
            a[c] = scale[k] * g[c];
            b[c] = off[k] * g[c] + bt[c];
        }
        for_each_dense_row<T>(v, [&](std::size_t row) {
            const T* xr = x + row;
            T* yr = y + row;
            if (xhat) {
                T* hr = xhat + row;
#pragma omp simd
                for (std::size_t c = 0; c < v.c; ++c) {
                    const T h = (xr[c] - m[c]) * sc[c] + o[c];
                    hr[c] = h;
                    yr[c] = h * g[c] + bt[c];
                }
            } else {
#pragma omp simd
                for (std::size_t c = 0; c < v.c; ++c) yr[c] = (xr[c] - m[c]) * a[c] + b[c];
            }
        });
        return;
    }

    for_each_block(v, sets, [&](std::size_t k, std::size_t c0, std::size_t start) {
        const T m = shift[k], sc = scale[k], o = off[k];
        for (std::size_t j = 0; j < sets.channels_per_set; ++j) {
            const std::size_t c = c0 + j;
            const std::size_t base = start + j * v.s;
            const T gc = g[c], bc = bt[c];
            if (xhat) {
#pragma omp simd
                for (std::size_t i = 0; i < v.s; ++i) {
                    const T h = (x[base + i] - m) * sc + o;
                    xhat[base + i] = h;
                    y[base + i] = h * gc + bc;
                }
            } else {
#pragma omp simd
                for (std::size_t i = 0; i < v.s; ++i)
                    y[base + i] = ((x[base + i] - m) * sc + o) * gc + bc;
            }
        }
    });
}

template <class T>
void backward_reduce(const T* dy, const T* xhat, const NcsView& v, const SetSpec& sets,
                     const T* gamma, double* set_sum_g, double* set_sum_g_xhat,
                     double* chan_sum_dy, double* chan_sum_dy_xhat) {
    const auto unit = ones_if_null(gamma, v.c, T(1));
    const T* g = gamma ? gamma : unit.data();
    const std::size_t num_sets = sets.num_sets(v);
    const std::size_t cps = sets.channels_per_set;
    auto set_from_channel_sums = [&](const std::vector<double>& r1, const std::vector<double>& r2) {
        for (std::size_t k = 0; k < num_sets; ++k) {
            double a = 0, b = 0;
            for (std::size_t c = k * cps; c < (k + 1) * cps; ++c) {
                a += double(g[c]) * r1[c];
                if (xhat) b += double(g[c]) * r2[c];
            }
            set_sum_g[k] = a;
            if (set_sum_g_xhat) set_sum_g_xhat[k] = b;
        }
    };

    if (v.s == 1 && sets.across_batch) {
        std::vector<double> r1(v.c), r2(v.c);
        channel_sums(dy, xhat, v, r1.data(), xhat ? r2.data() : nullptr);
        set_from_channel_sums(r1, r2);
        if (chan_sum_dy) std::copy(r1.begin(), r1.end(), chan_sum_dy);
        if (chan_sum_dy_xhat) std::copy(r2.begin(), r2.end(), chan_sum_dy_xhat);
        return;
    }
    if (v.s == 1) {
        // Each set is a contiguous run of channels of one sample.
        for_each_block(v, sets, [&](std::size_t k, std::size_t c0, std::size_t start) {
            double a = 0, b = 0;
            const T* d = dy + start;
            const T* gc = g + c0;
            if (xhat) {
                const T* h = xhat + start;
#pragma omp simd reduction(+ : a, b)
                for (std::size_t i = 0; i < cps; ++i) {
                    const double gd = double(gc[i]) * double(d[i]);
                    a += gd;
                    b += gd * double(h[i]);
                }
            } else {
#pragma omp simd reduction(+ : a)
                for (std::size_t i = 0; i < cps; ++i) a += double(gc[i]) * double(d[i]);
            }
            set_sum_g[k] = a;
            if (set_sum_g_xhat) set_sum_g_xhat[k] = b;
        });
        if (chan_sum_dy || chan_sum_dy_xhat)
            channel_sums(dy, xhat, v, chan_sum_dy, xhat ? chan_sum_dy_xhat : nullptr);
        return;
    }

    // S > 1: one pass computes Σdy and Σdy·x̂ per row; sets and channels are sums of rows.
    const std::size_t rows = v.n * v.c;
    std::vector<double> row1(rows), row2(xhat ? rows : 0);
#pragma omp parallel for schedule(static) if (v.size() >= kParallelMin)
    for (std::size_t r = 0; r < rows; ++r) {
        const T* d = dy + r * v.s;
        double a = 0, b = 0;
        if (xhat) {
            const T* h = xhat + r * v.s;
#pragma omp simd reduction(+ : a, b)
            for (std::size_t i = 0; i < v.s; ++i) {
                a += double(d[i]);
                b += double(d[i]) * double(h[i]);
            }
            row2[r] = b;
        } else {
#pragma omp simd reduction(+ : a)
            for (std::size_t i = 0; i < v.s; ++i) a += double(d[i]);
        }
        row1[r] = a;
    }
    for (std::size_t k = 0; k < num_sets; ++k) {
        set_sum_g[k] = 0;
        if (set_sum_g_xhat) set_sum_g_xhat[k] = 0;
    }
    if (chan_sum_dy) std::fill(chan_sum_dy, chan_sum_dy + v.c, 0.0);
    if (chan_sum_dy_xhat) std::fill(chan_sum_dy_xhat, chan_sum_dy_xhat + v.c, 0.0);
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
void backward_apply(const T* dy, const T* xhat, const NcsView& v, const SetSpec& sets,
                    const T* gamma, const T* coef_g, const T* coef_1, const T* coef_xhat, T* dx) {
    const auto unit = ones_if_null(gamma, v.c, T(1));
    const auto zero_k = std::vector<T>(coef_1 && coef_xhat ? 0 : sets.num_sets(v), T(0));
    const T* g = gamma ? gamma : unit.data();
    const T* c1 = coef_1 ? coef_1 : zero_k.data();
    const T* cx = coef_xhat ? coef_xhat : zero_k.data();
    const bool reads_xhat = coef_xhat != nullptr;

    if (sets.across_batch && v.s == 1) {
        // dx = a·dy − b − e·x̂ per channel.
        std::vector<T> a(v.c), b(v.c), e(v.c);
        for (std::size_t c = 0; c < v.c; ++c) {
            const std::size_t k = c / sets.channels_per_set;
            a[c] = coef_g[k] * g[c];
            b[c] = coef_g[k] * c1[k];
            e[c] = coef_g[k] * cx[k];
        }
        for_each_dense_row<T>(v, [&](std::size_t row) {
            const T* d = dy + row;
            T* out = dx + row;
            if (reads_xhat) {
                const T* h = xhat + row;
#pragma omp simd
                for (std::size_t c = 0; c < v.c; ++c) out[c] = a[c] * d[c] - b[c] - e[c] * h[c];
            } else {
#pragma omp simd
                for (std::size_t c = 0; c < v.c; ++c) out[c] = a[c] * d[c] - b[c];
            }
        });
        return;
    }

    for_each_block(v, sets, [&](std::size_t k, std::size_t c0, std::size_t start) {
        const T cg = coef_g[k];
        const T b = cg * c1[k];
        const T e = cg * cx[k];
        for (std::size_t j = 0; j < sets.channels_per_set; ++j) {
            const std::size_t base = start + j * v.s;
            const T a = cg * g[c0 + j];
            if (reads_xhat) {
#pragma omp simd
                for (std::size_t i = 0; i < v.s; ++i)
                    dx[base + i] = a * dy[base + i] - b - e * xhat[base + i];
            } else {
#pragma omp simd
                for (std::size_t i = 0; i < v.s; ++i) dx[base + i] = a * dy[base + i] - b;
            }
        }
    });
}

#define NORMLAB_INSTANTIATE_KERNELS(T)                                                         \
    template void collect_moments<T>(const T*, const NcsView&, const SetSpec&, bool, T*, T*);  \
    template void normalize_affine<T>(const T*, const NcsView&, const SetSpec&, const T*,      \
                                      const T*, const T*, const T*, const T*, T*, T*);         \
    template void backward_reduce<T>(const T*, const T*, const NcsView&, const SetSpec&,       \
                                     const T*, double*, double*, double*, double*);            \
    template void backward_apply<T>(const T*, const T*, const NcsView&, const SetSpec&,        \
                                    const T*, const T*, const T*, const T*, T*);               \
    template void channel_sums<T>(const T*, const T*, const NcsView&, double*, double*);

NORMLAB_INSTANTIATE_KERNELS(float)
NORMLAB_INSTANTIATE_KERNELS(double)

}  // namespace normlab::kernels
