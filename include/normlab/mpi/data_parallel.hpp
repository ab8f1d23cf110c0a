#pragma once
// Data-parallel training over MPI: every rank holds a replica of the model, takes its shard of
// each global batch, runs forward and backward on it, and the gradients are combined with one
// all-reduce per step, so that the optimizer step is the same on every rank and the replicas stay
// identical. With sync_batch_norm in the model, K ranks × b examples train exactly like one
// process with batch K·b (docs/distributed.md).
//
//   normlab::mpi::Session session(argc, argv);
//   auto comm = session.world();
//   auto model = build_model<float>("relu_mlp", "sync_batch_norm", seed);  // same seed everywhere
//   broadcast_parameters(model, comm);                  // or rely on the shared seed
//   const Shard shard = shard_of(global_batch, comm);   // this rank's rows of each batch
//   ... logits = model.forward(rows_of(x, shard), Mode::train); loss, dlogits; model.backward(..)
//   average_gradients(model, comm);                     // one all-reduce
//   optimizer.step(lr);

#include <cstddef>
#include <span>
#include <vector>

#include "normlab/model/layer.hpp"
#include "normlab/mpi/communicator.hpp"

namespace normlab::mpi {

// Rows [begin, end) of a global batch of `global` examples.
struct Shard {
    std::size_t begin = 0;
    std::size_t end = 0;
    std::size_t global = 0;
    std::size_t size() const { return end - begin; }
    // This shard's share of the global batch: the factor for its loss gradient when shards are
    // uneven (see sum_gradients).
    double weight() const { return global == 0 ? 0.0 : double(size()) / double(global); }
};

// Balanced split: the first global % ranks ranks get one example more.
Shard shard_of(std::size_t global_batch, int rank, int ranks);
inline Shard shard_of(std::size_t global_batch, const Communicator& comm) {
    return shard_of(global_batch, comm.rank(), comm.size());
}
// Explicit split: rank r takes sizes[r] rows (zeros allowed); sizes must have one entry per rank.
Shard shard_of(std::span<const std::size_t> sizes, int rank);

// Rows [shard.begin, shard.end) along axis 0 (an empty (0, ...) array for an empty shard).
template <class T>
Array<T> rows_of(const Array<T>& batch, const Shard& shard);
template <class L>
std::vector<L> rows_of(const std::vector<L>& labels, const Shard& shard) {
    return {labels.begin() + std::ptrdiff_t(shard.begin),
            labels.begin() + std::ptrdiff_t(shard.end)};
}

// Replaces every gradient by its mean over the ranks: right when every rank's loss is the mean
// over an equal shard. One agreement all-reduce (parameter count, sizes, shapes and — in debug
// builds — a checksum of the parameter values, so diverged replicas are reported) and one sum
// all-reduce of all gradients packed into one buffer.
template <class T>
void average_gradients(model::Sequential<T>& model, const Communicator& comm);
// Replaces every gradient by its sum over the ranks: right when each rank scaled its loss
// gradient by shard.weight() (uneven shards), so the sum is the gradient of the global mean.
template <class T>
void sum_gradients(model::Sequential<T>& model, const Communicator& comm);

// Copies root's parameters, buffers (running statistics) and counters to every rank: one
// agreement all-reduce and two broadcasts.
template <class T>
void broadcast_parameters(model::Sequential<T>& model, const Communicator& comm, int root = 0);

// Copies root's buffers (running statistics) and counters to every rank, not the parameters:
// what PyTorch's DistributedDataParallel broadcasts before each forward. One agreement
// all-reduce and up to two broadcasts.
template <class T>
void broadcast_buffers(model::Sequential<T>& model, const Communicator& comm, int root = 0);

// Throws RankMismatchError on every rank unless parameters, buffers and counters are bitwise
// identical on all ranks (one all-reduce of checksums). average_gradients runs the parameter
// part of this check by itself in debug builds.
template <class T>
void check_replicas(model::Sequential<T>& model, const Communicator& comm);

}  // namespace normlab::mpi
