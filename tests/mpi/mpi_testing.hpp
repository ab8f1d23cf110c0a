#pragma once
// Helpers of the MPI tests: every rank builds the same global batch from the same seed, takes
// its shard for the distributed computation and keeps the whole batch for the single-process
// reference.

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "normlab/mpi/communicator.hpp"
#include "normlab/mpi/data_parallel.hpp"
#include "normlab/tensor.hpp"

namespace normlab::mpi::testing {

inline Communicator world() {
    return Communicator(MPI_COMM_WORLD);
}

template <class T = float>
Array<T> random_batch(const Shape& shape, unsigned seed, double mean = 0.0, double stddev = 1.0) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> dist(mean, stddev);
    Array<T> a = Array<T>::from_shape(shape);
    for (auto& v : a)
        v = T(dist(gen));
    return a;
}

// max |a − b| / max(1, max |b|): errors of sums that grow with the batch are judged relative.
template <class A, class B>
double scaled_difference(const A& a, const B& b) {
    double diff = 0, scale = 1;
    auto ia = a.begin();
    for (auto ib = b.begin(); ib != b.end(); ++ib, ++ia) {
        diff = std::max(diff, std::abs(double(*ia) - double(*ib)));
        scale = std::max(scale, std::abs(double(*ib)));
    }
    return diff / scale;
}

// Splits of a global batch of `global` examples over `ranks` ranks in which some rank holds
// exactly one example and some rank holds none (for one rank: the whole batch).
inline std::vector<std::vector<std::size_t>> uneven_splits(std::size_t global, int ranks) {
    if (ranks == 1) return {{global}};
    std::vector<std::vector<std::size_t>> splits;
    std::vector<std::size_t> one_then_rest(std::size_t(ranks), 0);  // {1, 0, …, 0, global − 1}
    one_then_rest[0] = 1;
    one_then_rest.back() = global - 1;
    splits.push_back(one_then_rest);
    std::vector<std::size_t> empty_first(std::size_t(ranks),
                                         0);  // {0, global} / {0, global − 1, 1, 0…}
    empty_first[1] = ranks > 2 ? global - 1 : global;
    if (ranks > 2) empty_first[2] = 1;
    splits.push_back(empty_first);
    return splits;
}

}  // namespace normlab::mpi::testing
