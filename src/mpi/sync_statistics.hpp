#pragma once
// What the synchronized layers share: per-channel statistics of the union of every rank's
// batch (forward) and the global Σdy, Σdy·x̂ that the projection in the backward needs. Local
// sums come from the shared kernels; one all-reduce per pass combines them.

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "kernels/moments.hpp"
#include "kernels/set_backward.hpp"
#include "normlab/mpi/communicator.hpp"
#include "normlab/tensor.hpp"

namespace normlab::mpi {

// BatchNorm's reduction sets: one per channel, over the batch and the trailing dims.
inline constexpr SetSpec kChannelSets{true, 1};

// Checks that shape is (N, C, ...) with C = channels; N = 0 is allowed (a rank whose shard of
// the global batch is empty still takes part in the collectives). Throws ShapeError.
NcsView sync_view(const std::string& label, const Shape& shape, std::size_t channels);

// Statistics of one channel over every rank's values.
struct GlobalMoments {
    std::int64_t count = 0;  // values per channel on all ranks together (N_total · S)
    std::vector<double> mean;
    std::vector<double> var;  // biased (divided by count)
};

// Local count, mean and M2 per channel (collect_moments), then one all-reduce that merges them
// with Chan et al.'s pairwise formula, exact for any split of the batch (ranks with 0 or 1
// examples included). Before it, agree() checks channels, trailing size, scalar type and the
// call number; a local failure (bad shape, NaN/Inf) is raised on every rank. Throws ShapeError
// on every rank when the global count is ≤ 1. `call` numbers the layer's synchronized forwards.
template <class T>
GlobalMoments allreduce_moments(const Communicator& comm, const std::string& label,
                                const Array<T>& x, std::size_t channels, std::int64_t call);

// The agreement step of a backward pass: channels, trailing size, whether the forward used
// batch statistics, and the call number must match; a local failure (no saved context, dy of the
// wrong shape) is raised on every rank.
void agree_backward(const Communicator& comm, const std::string& label, std::size_t channels,
                    std::size_t trailing, bool batch_stats, std::int64_t call,
                    std::exception_ptr local_failure);

// dx = scale[c]·(γ·dy − coef_1[c] − coef_xhat[c]·x̂) where the coefficients come from the global
// means mean_g = γ·ΣdyG/M and mean_g_xhat = γ·Σ(dy·x̂)G/M: one all-reduce of the 2·C local sums.
// coefficients(c, mean_g, mean_g_xhat, coef_1, coef_xhat) is the layer's rule (as in
// kernels::set_backward). local_sum_dy, local_sum_dy_xhat receive this rank's sums, the
// contributions to dβ, dγ (gradient averaging across ranks comes later, with the other layers').
template <class T, class Coefficients>
Array<T> sync_backward(const Communicator& comm, const Array<T>& dy, const Array<T>& xhat,
                       const NcsView& v, const T* gamma, const std::vector<T>& scale,
                       std::int64_t global_count, Coefficients&& coefficients,
                       std::vector<double>& local_sum_dy, std::vector<double>& local_sum_dy_xhat) {
    const std::size_t channels = v.c;
    std::vector<double> sums(2 * channels, 0.0);  // [Σdy | Σdy·x̂]
    if (v.n > 0)
        kernels::channel_sums(dy.data(), xhat.data(), v, sums.data(), sums.data() + channels);
    local_sum_dy.assign(sums.begin(), sums.begin() + std::ptrdiff_t(channels));
    local_sum_dy_xhat.assign(sums.begin() + std::ptrdiff_t(channels), sums.end());
    comm.allreduce_sum(std::span<double>(sums));

    std::vector<T> coef_1(channels), coef_xhat(channels);
    const double inv_m = 1.0 / double(global_count);
    for (std::size_t c = 0; c < channels; ++c) {
        const double g = gamma ? double(gamma[c]) : 1.0;
        coefficients(c, g * sums[c] * inv_m, g * sums[channels + c] * inv_m, coef_1[c],
                     coef_xhat[c]);
    }
    Array<T> dx = Array<T>::from_shape(dy.shape());
    if (v.n > 0)
        kernels::backward_apply(dy.data(), xhat.data(), v, kChannelSets, gamma, scale.data(),
                                coef_1.data(), coef_xhat.data(), dx.data());
    return dx;
}

// The whole backward of a synchronized channel normalizer after its context was taken (or
// taking it failed: local_failure): agreement with the other ranks, then sync_backward when the
// forward used batch statistics, a local per-channel rescale when it used running statistics
// (constants: nothing to communicate), zeros for an empty shard. Fills the local Σdy, Σdy·x̂.
template <class T, class Coefficients>
Array<T> sync_channel_backward(const Communicator& comm, const std::string& label,
                               std::size_t channels, const Shape& saved_shape,
                               std::exception_ptr local_failure, bool batch_stats,
                               std::int64_t call, const Array<T>& dy, const Array<T>& xhat,
                               const T* gamma, const std::vector<T>& scale,
                               std::int64_t global_count, Coefficients&& coefficients,
                               std::vector<double>& sum_dy, std::vector<double>& sum_dy_xhat) {
    const NcsView v =
        local_failure ? NcsView{0, channels, 0} : sync_view(label, saved_shape, channels);
    agree_backward(comm, label, v.c, v.s, batch_stats, call, local_failure);
    if (batch_stats)
        return sync_backward(comm, dy, xhat, v, gamma, scale, global_count,
                             std::forward<Coefficients>(coefficients), sum_dy, sum_dy_xhat);
    if (v.n > 0)
        return kernels::set_backward(
            dy, xhat.data(), v, kChannelSets, gamma, scale, false,
            [](std::size_t, double, double, T&, T&) {}, sum_dy, sum_dy_xhat);
    sum_dy.assign(v.c, 0.0);
    sum_dy_xhat.assign(v.c, 0.0);
    return Array<T>::from_shape(dy.shape());
}

}  // namespace normlab::mpi
