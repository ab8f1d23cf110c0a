#pragma once
// The backward pass of any standardize-then-affine layer in terms of the kernel stages: with
// constant statistics a rescale, otherwise stage 3 (per-set Σg, Σg·x̂) followed by stage 4 with
// per-set coefficients that the layer derives from the two means (spec §0 for plain
// standardization, the r/d-corrected form for Batch Renormalization).

#include <vector>

#include "kernels/moments.hpp"

namespace normlab::kernels {

// coefficients(k, mean_g, mean_g_xhat, coef_1, coef_xhat) fills stage 4's per-set terms;
// dx = scale[k]·(γ·dy − coef_1 − coef_xhat·x̂). Writes the per-channel Σdy and Σdy·x̂.
//
// spent: the saved x̂, or the kept input x̂ is formed from, when nothing reads it after this
// backward. Where the stages allow it (dx_may_overwrite_xhat), dx is written over it: its lines
// are in cache from the reads just before, where a new array's would first be fetched from
// memory to be written, and no new memory is taken. Otherwise (or when spent is empty or not
// dy's shape) dx is a new array.
template <class T, class Coefficients>
Array<T> set_backward(const Array<T>& dy, XhatArg<T> xhat, const NcsView& v, const SetSpec& sets,
                      const T* gamma, const std::vector<T>& scale, bool batch_stats,
                      Coefficients&& coefficients, std::vector<double>& sum_dy,
                      std::vector<double>& sum_dy_xhat, Array<T>&& spent = Array<T>()) {
    sum_dy.assign(v.c, 0.0);
    sum_dy_xhat.assign(v.c, 0.0);
    Array<T> dx =
        spent.shape() == dy.shape() && dx_may_overwrite_xhat(v, sets, xhat.xhat != nullptr)
            ? std::move(spent)
            : Array<T>::from_shape(dy.shape());
    if (!batch_stats) {
        channel_sums(dy.data(), xhat, v, sum_dy.data(), sum_dy_xhat.data(), &sets);
        backward_apply(dy.data(), xhat, v, sets, gamma, scale.data(),
                       static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), dx.data());
        return dx;
    }
    if (can_fuse_backward<T>(v, sets)) {
        backward_fused<T>(dy.data(), xhat, v, sets, gamma, scale.data(), coefficients, dx.data(),
                          sum_dy.data(), sum_dy_xhat.data());
        return dx;
    }
    const std::size_t k = sets.num_sets(v);
    const double inv_m = 1.0 / double(sets.set_size(v));
    std::vector<double> sum_g(k), sum_gx(k);
    backward_reduce(dy.data(), xhat, v, sets, gamma, sum_g.data(), sum_gx.data(), sum_dy.data(),
                    sum_dy_xhat.data());
    std::vector<T> coef_1(k), coef_xhat(k);
    for (std::size_t i = 0; i < k; ++i)
        coefficients(i, sum_g[i] * inv_m, sum_gx[i] * inv_m, coef_1[i], coef_xhat[i]);
    backward_apply(dy.data(), xhat, v, sets, gamma, scale.data(), coef_1.data(), coef_xhat.data(),
                   dx.data());
    return dx;
}

}  // namespace normlab::kernels
