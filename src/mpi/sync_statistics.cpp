#include "sync_statistics.hpp"

#include <cmath>

#include "agreement.hpp"
#include "normlab/errors.hpp"

namespace normlab::mpi {
namespace {

// One channel's statistics on a subset of the ranks.
struct Partial {
    double count;
    double mean;
    double m2;  // Σ(x − mean)²
};

// Chan, Golub & LeVeque's pairwise update, written symmetrically: merge(a, b) and merge(b, a)
// give the same bits, so every rank ends with identical statistics whatever order MPI's
// reduction tree combines them in (and the running statistics stay identical across ranks).
Partial merge(const Partial& a, const Partial& b) {
    const double n = a.count + b.count;
    if (n == 0) return {0, 0, 0};
    const double delta = b.mean - a.mean;
    return {n, (a.count * a.mean + b.count * b.mean) / n,
            a.m2 + b.m2 + delta * delta * (a.count * b.count / n)};
}

void merge_partials(void* in, void* inout, int* len, MPI_Datatype*) {
    const auto* a = static_cast<const Partial*>(in);
    auto* b = static_cast<Partial*>(inout);
    for (int i = 0; i < *len; ++i)
        b[i] = merge(a[i], b[i]);
}

// A datatype of one whole Partial, so MPI never splits a triple between pipeline segments, and
// the merge operation; created on first use (MPI is initialized by then) and kept until exit.
struct ChanReduction {
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_Op op = MPI_OP_NULL;

    ChanReduction() {
        static_assert(sizeof(Partial) == 3 * sizeof(double));
        check(MPI_Type_contiguous(3, MPI_DOUBLE, &type), "MPI_Type_contiguous");
        check(MPI_Type_commit(&type), "MPI_Type_commit");
        check(MPI_Op_create(&merge_partials, /*commute=*/1, &op), "MPI_Op_create");
    }
};

const ChanReduction& chan_reduction() {
    static const ChanReduction reduction;
    return reduction;
}

}  // namespace

NcsView sync_view(const std::string& label, const Shape& shape, std::size_t channels) {
    if (shape.size() < 2 || shape[1] != channels)
        throw ShapeError(label + ": expected input of shape (N, " + std::to_string(channels) +
                         ", ...) with N >= 0, got " + format_shape(shape));
    NcsView v{shape[0], shape[1], 1};
    for (std::size_t i = 2; i < shape.size(); ++i)
        v.s *= shape[i];
    if (v.s == 0)
        throw ShapeError(label + ": expected non-empty trailing dimensions, got " +
                         format_shape(shape));
    return v;
}

template <class T>
GlobalMoments allreduce_moments(const Communicator& comm, const std::string& label,
                                const Array<T>& x, std::size_t channels, std::int64_t call) {
    const Shape shape = shape_of(x);
    std::vector<Partial> partials(channels, Partial{0, 0, 0});
    NcsView v{0, channels, 0};
    std::exception_ptr failure;
    try {
        v = sync_view(label, shape, channels);
        if (v.n > 0) {
            std::vector<T> mean(channels), var(channels);
            std::vector<double> residual(channels);
            kernels::collect_moments(x.data(), v, kChannelSets, true, mean.data(), var.data(),
                                     residual.data());
            if (const std::size_t c = kernels::first_non_finite(mean.data(), var.data(), channels);
                c < channels)
                throw NonFiniteError(label +
                                     ": statistics of this rank's input are not "
                                     "finite (channel " +
                                     std::to_string(c) + "): the input of shape " +
                                     format_shape(shape) +
                                     " contains NaN or Inf; nothing was updated");
            const double count = double(v.n * v.s);
            for (std::size_t c = 0; c < channels; ++c)
                partials[c] = {count, double(mean[c]) + residual[c], double(var[c]) * count};
        }
    } catch (...) {
        failure = std::current_exception();
    }
    agree(
        comm, label + " forward",
        {{"synchronized operation (1 = forward, 2 = backward)", 1},
         {"number of channels", std::int64_t(channels)},
         {"values per channel and sample (product of the trailing dimensions)", std::int64_t(v.s)},
         {"scalar size in bytes", std::int64_t(sizeof(T))},
         {"number of this layer's synchronized forward calls", call}},
        failure);

    const ChanReduction& chan = chan_reduction();
    comm.allreduce(partials.data(), channels, chan.type, chan.op, "count, mean and M2");

    GlobalMoments out;
    out.count = std::int64_t(partials.empty() ? 0 : partials[0].count);
    if (out.count <= 1)
        throw ShapeError(label + ": expected more than 1 value per channel across the " +
                         std::to_string(comm.size()) + " ranks when training, got " +
                         std::to_string(out.count) + " (this rank's input has shape " +
                         format_shape(shape) + ")");
    out.mean.resize(channels);
    out.var.resize(channels);
    for (std::size_t c = 0; c < channels; ++c) {
        out.mean[c] = partials[c].mean;
        out.var[c] = partials[c].m2 / partials[c].count;
        if (!std::isfinite(out.mean[c]) || !std::isfinite(out.var[c]))
            throw NonFiniteError(label + ": statistics of channel " + std::to_string(c) +
                                 " over all ranks are not finite (overflow); nothing was updated");
    }
    return out;
}

void agree_backward(const Communicator& comm, const std::string& label, std::size_t channels,
                    std::size_t trailing, bool batch_stats, std::int64_t call,
                    std::exception_ptr local_failure) {
    agree(comm, label + " backward",
          {{"synchronized operation (1 = forward, 2 = backward)", 2},
           {"number of channels", std::int64_t(channels)},
           {"values per channel and sample (product of the trailing dimensions)",
            std::int64_t(trailing)},
           {"mode of the matching forward (1 = batch statistics, 0 = running statistics)",
            batch_stats ? 1 : 0},
           {"number of this layer's backward calls", call}},
          local_failure);
}

template GlobalMoments allreduce_moments<float>(const Communicator&, const std::string&,
                                                const Array<float>&, std::size_t, std::int64_t);
template GlobalMoments allreduce_moments<double>(const Communicator&, const std::string&,
                                                 const Array<double>&, std::size_t, std::int64_t);

}  // namespace normlab::mpi
