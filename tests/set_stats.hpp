#pragma once
// Independent per-set statistics of a tensor, computed with plain two-pass loops in double, for
// checking the "zero mean, unit variance over each reduction set" invariants.

#include <vector>

#include "normlab/set_spec.hpp"
#include "normlab/tensor.hpp"

namespace normlab::testing {

struct SetStats {
    std::vector<double> mean;
    std::vector<double> var;  // biased
};

template <class T>
SetStats set_stats(const Array<T>& y, const SetSpec& sets) {
    NcsView v{y.shape()[0], y.shape()[1], 1};
    for (std::size_t i = 2; i < y.dimension(); ++i)
        v.s *= y.shape()[i];
    const std::size_t k = sets.num_sets(v);
    SetStats out{std::vector<double>(k, 0.0), std::vector<double>(k, 0.0)};
    std::vector<double> count(k, 0.0);
    auto each = [&](auto&& f) {
        for (std::size_t n = 0; n < v.n; ++n)
            for (std::size_t c = 0; c < v.c; ++c)
                for (std::size_t s = 0; s < v.s; ++s)
                    f(sets.set_of(n, c, v), double(y.data()[(n * v.c + c) * v.s + s]));
    };
    each([&](std::size_t set, double value) {
        out.mean[set] += value;
        count[set] += 1;
    });
    for (std::size_t i = 0; i < k; ++i)
        out.mean[i] /= count[i];
    each([&](std::size_t set, double value) {
        out.var[set] += (value - out.mean[set]) * (value - out.mean[set]);
    });
    for (std::size_t i = 0; i < k; ++i)
        out.var[i] /= count[i];
    return out;
}

}  // namespace normlab::testing
