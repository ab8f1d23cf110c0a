#include "model/sequence_packing.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "normlab/errors.hpp"

namespace normlab::model {

SequencePacking plan_packing(const std::vector<std::size_t>& lengths, std::size_t steps,
                             std::size_t batch, const std::string& layer) {
    SequencePacking p;
    p.steps = steps;
    p.batch = batch;
    p.lengths = lengths.empty() ? std::vector<std::size_t>(batch, steps) : lengths;
    if (p.lengths.size() != batch)
        throw ShapeError(layer + ": expected " + std::to_string(batch) +
                         " sequence lengths (one per sequence of the batch), got " +
                         std::to_string(p.lengths.size()));
    for (std::size_t n = 0; n < batch; ++n)
        if (p.lengths[n] > steps)
            throw ShapeError(layer + ": sequence " + std::to_string(n) + " has length " +
                             std::to_string(p.lengths[n]) + ", more than the " +
                             std::to_string(steps) + " steps of the input");
    p.order.resize(batch);
    std::iota(p.order.begin(), p.order.end(), std::size_t(0));
    std::stable_sort(p.order.begin(), p.order.end(),
                     [&](std::size_t a, std::size_t b) { return p.lengths[a] > p.lengths[b]; });
    p.rows.assign(steps, 0);
    for (std::size_t len : p.lengths)
        for (std::size_t t = 0; t < len; ++t)
            ++p.rows[t];
    p.offset.assign(steps + 1, 0);
    for (std::size_t t = 0; t < steps; ++t)
        p.offset[t + 1] = p.offset[t] + p.rows[t];
    return p;
}

template <class T>
Array<T> pack_steps(const Array<T>& padded, const SequencePacking& plan) {
    const std::size_t features = padded.shape()[2];
    Array<T> packed = Array<T>::from_shape({plan.total(), features});
    for (std::size_t t = 0; t < plan.steps; ++t)
        for (std::size_t r = 0; r < plan.rows[t]; ++r)
            std::memcpy(packed.data() + (plan.offset[t] + r) * features,
                        padded.data() + (t * plan.batch + plan.order[r]) * features,
                        features * sizeof(T));
    return packed;
}

template <class T>
Array<T> unpack_steps(const Array<T>& packed, const SequencePacking& plan) {
    const std::size_t features = packed.shape()[1];
    Array<T> padded = xt::zeros<T>({plan.steps, plan.batch, features});
    for (std::size_t t = 0; t < plan.steps; ++t)
        for (std::size_t r = 0; r < plan.rows[t]; ++r)
            std::memcpy(padded.data() + (t * plan.batch + plan.order[r]) * features,
                        packed.data() + (plan.offset[t] + r) * features, features * sizeof(T));
    return padded;
}

template Array<float> pack_steps<float>(const Array<float>&, const SequencePacking&);
template Array<double> pack_steps<double>(const Array<double>&, const SequencePacking&);
template Array<float> unpack_steps<float>(const Array<float>&, const SequencePacking&);
template Array<double> unpack_steps<double>(const Array<double>&, const SequencePacking&);

}  // namespace normlab::model
