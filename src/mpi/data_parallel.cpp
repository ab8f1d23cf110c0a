#include "normlab/mpi/data_parallel.hpp"

#include <algorithm>
#include <string>

#include "agreement.hpp"
#include "normlab/data/dataset.hpp"

namespace normlab::mpi {
namespace {

// What every replica must share: parameter names, shapes and the scalar type.
template <class Ref>
std::int64_t structure_fingerprint(const std::vector<Ref>& refs, std::int64_t seed) {
    std::int64_t h = seed;
    for (const auto& r : refs) {
        h = fingerprint(r.name.data(), r.name.size(), h);
        const Shape shape = shape_of(*r.value);
        h = fingerprint(shape.data(), shape.size() * sizeof(std::size_t), h);
    }
    return h;
}

template <class Ref>
std::int64_t value_fingerprint(const std::vector<Ref>& refs) {
    std::int64_t h = 0;
    for (const auto& r : refs)
        h = fingerprint(r.value->data(), r.value->size() * sizeof(*r.value->data()), h);
    return h;
}

template <class Ref>
std::size_t total_size(const std::vector<Ref>& refs) {
    std::size_t n = 0;
    for (const auto& r : refs)
        n += r.value->size();
    return n;
}

template <class T>
void allreduce_gradients(model::Sequential<T>& model, const Communicator& comm, bool average,
                         const char* who) {
    const std::vector<model::ModelParam<T>> params = model.parameters();
    const std::size_t total = total_size(params);
    std::vector<AgreementField> fields = {
        {"number of parameter tensors", std::int64_t(params.size())},
        {"number of parameter values", std::int64_t(total)},
        {"fingerprint of the parameter names and shapes (the model differs)",
         structure_fingerprint(params, 1)},
        {"scalar size in bytes", std::int64_t(sizeof(T))},
    };
#ifndef NDEBUG
    // Debug builds: the replicas must still be identical when their gradients meet.
    fields.push_back({"checksum of the parameter values (the replicas have diverged)",
                      value_fingerprint(params)});
#endif
    agree(comm, who, fields, nullptr);

    std::vector<T> packed(total);
    std::size_t at = 0;
    for (const auto& p : params) {
        std::copy(p.grad->begin(), p.grad->end(), packed.begin() + std::ptrdiff_t(at));
        at += p.grad->size();
    }
    comm.allreduce_sum(std::span<T>(packed));
    const T scale = average ? T(1) / T(comm.size()) : T(1);
    at = 0;
    for (const auto& p : params) {
        for (auto& g : *p.grad)
            g = packed[at++] * scale;
    }
}

}  // namespace

Shard shard_of(std::size_t global_batch, int rank, int ranks) {
    if (ranks <= 0 || rank < 0 || rank >= ranks)
        throw ShapeError("shard_of: expected 0 <= rank < ranks, got rank " + std::to_string(rank) +
                         " of " + std::to_string(ranks));
    const data::RowRange rows =
        data::shard_rows(global_batch, std::size_t(rank), std::size_t(ranks));
    return {rows.begin, rows.end, global_batch};
}

Shard shard_of(std::span<const std::size_t> sizes, int rank) {
    if (rank < 0 || std::size_t(rank) >= sizes.size())
        throw ShapeError("shard_of: expected one shard size per rank and 0 <= rank < " +
                         std::to_string(sizes.size()) + ", got rank " + std::to_string(rank));
    Shard s;
    for (std::size_t r = 0; r < sizes.size(); ++r) {
        if (r == std::size_t(rank)) s.begin = s.global;
        s.global += sizes[r];
        if (r == std::size_t(rank)) s.end = s.global;
    }
    return s;
}

template <class T>
Array<T> rows_of(const Array<T>& batch, const Shard& shard) {
    const Shape shape = shape_of(batch);
    if (shape.empty() || shard.end > shape[0] || shard.begin > shard.end)
        throw ShapeError("rows_of: expected a batch with at least " + std::to_string(shard.end) +
                         " rows for the shard [" + std::to_string(shard.begin) + ", " +
                         std::to_string(shard.end) + "), got " + format_shape(shape));
    Shape out_shape = shape;
    out_shape[0] = shard.size();
    Array<T> out = Array<T>::from_shape(out_shape);
    const std::size_t row = shape[0] == 0 ? 0 : batch.size() / shape[0];
    std::copy_n(batch.data() + shard.begin * row, shard.size() * row, out.data());
    return out;
}

template <class T>
void average_gradients(model::Sequential<T>& model, const Communicator& comm) {
    allreduce_gradients(model, comm, true, "average_gradients");
}

template <class T>
void sum_gradients(model::Sequential<T>& model, const Communicator& comm) {
    allreduce_gradients(model, comm, false, "sum_gradients");
}

namespace {

template <class T>
void broadcast_state(model::Sequential<T>& model, const Communicator& comm, int root,
                     bool with_parameters, const char* who) {
    std::vector<model::ModelParam<T>> params;
    if (with_parameters) params = model.parameters();
    const auto buffers = model.buffers();
    const auto counters = model.counters();
    std::int64_t counter_names = 3;
    for (const auto& c : counters)
        counter_names = fingerprint(c.name.data(), c.name.size(), counter_names);
    agree(comm, who,
          {{"fingerprint of the parameter names and shapes (the model differs)",
            structure_fingerprint(params, 1)},
           {"fingerprint of the buffer names and shapes (the model differs)",
            structure_fingerprint(buffers, 2)},
           {"fingerprint of the counter names (the model differs)", counter_names},
           {"scalar size in bytes", std::int64_t(sizeof(T))},
           {"root rank", root}},
          nullptr);

    std::vector<T> packed;
    packed.reserve(total_size(params) + total_size(buffers));
    for (const auto& p : params)
        packed.insert(packed.end(), p.value->begin(), p.value->end());
    for (const auto& b : buffers)
        packed.insert(packed.end(), b.value->begin(), b.value->end());
    std::vector<std::int64_t> counts;
    for (const auto& c : counters)
        counts.push_back(*c.value);
    if (!packed.empty()) comm.broadcast(std::span<T>(packed), root);
    if (!counts.empty()) comm.broadcast(std::span<std::int64_t>(counts), root);

    std::size_t at = 0;
    for (const auto& p : params)
        for (auto& v : *p.value)
            v = packed[at++];
    for (const auto& b : buffers)
        for (auto& v : *b.value)
            v = packed[at++];
    for (std::size_t i = 0; i < counters.size(); ++i)
        *counters[i].value = counts[i];
}

}  // namespace

template <class T>
void broadcast_parameters(model::Sequential<T>& model, const Communicator& comm, int root) {
    broadcast_state(model, comm, root, true, "broadcast_parameters");
}

template <class T>
void broadcast_buffers(model::Sequential<T>& model, const Communicator& comm, int root) {
    broadcast_state(model, comm, root, false, "broadcast_buffers");
}

template <class T>
void check_replicas(model::Sequential<T>& model, const Communicator& comm) {
    const auto params = model.parameters();
    const auto buffers = model.buffers();
    const auto counters = model.counters();
    std::vector<std::int64_t> counts;
    for (const auto& c : counters)
        counts.push_back(*c.value);
    agree(comm, "check_replicas",
          {{"fingerprint of the parameter names and shapes (the model differs)",
            structure_fingerprint(params, 1)},
           {"fingerprint of the buffer names and shapes (the model differs)",
            structure_fingerprint(buffers, 2)},
           {"checksum of the parameter values (the replicas have diverged)",
            value_fingerprint(params)},
           {"checksum of the buffer values, e.g. running statistics (the replicas have diverged)",
            value_fingerprint(buffers)},
           {"checksum of the counters (the replicas have diverged)",
            fingerprint(counts.data(), counts.size() * sizeof(std::int64_t))}},
          nullptr);
}

#define NORMLAB_INSTANTIATE_DATA_PARALLEL(T)                                                \
    template Array<T> rows_of<T>(const Array<T>&, const Shard&);                            \
    template void average_gradients<T>(model::Sequential<T>&, const Communicator&);         \
    template void sum_gradients<T>(model::Sequential<T>&, const Communicator&);             \
    template void broadcast_parameters<T>(model::Sequential<T>&, const Communicator&, int); \
    template void broadcast_buffers<T>(model::Sequential<T>&, const Communicator&, int);    \
    template void check_replicas<T>(model::Sequential<T>&, const Communicator&);

NORMLAB_INSTANTIATE_DATA_PARALLEL(float)
NORMLAB_INSTANTIATE_DATA_PARALLEL(double)

}  // namespace normlab::mpi
