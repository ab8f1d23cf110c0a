#pragma once
// Packing a padded time-major batch (T, N, F) into the valid rows of each step, one block per
// step, like PyTorch's pack_padded_sequence: the sequences are ordered by decreasing length
// (stably, so equal lengths keep the batch order), which makes the sequences still running at
// step t the first rows[t] of that order and lets step t read the state of step t−1 as a prefix.

#include <string>
#include <vector>

#include "normlab/tensor.hpp"

namespace normlab::model {

struct SequencePacking {
    std::size_t steps = 0, batch = 0;
    std::vector<std::size_t> lengths;  // per sequence, in batch order
    std::vector<std::size_t> order;    // row r of every step block is sequence order[r]
    std::vector<std::size_t> rows;     // rows[t]: sequences with more than t valid steps
    std::vector<std::size_t> offset;   // first packed row of step t; offset[steps] = total
    std::size_t total() const { return offset.back(); }
};

// lengths empty: every sequence has `steps` valid steps. ShapeError (naming `layer`) for a
// count other than `batch` or a length above `steps`.
SequencePacking plan_packing(const std::vector<std::size_t>& lengths, std::size_t steps,
                             std::size_t batch, const std::string& layer);

// (T, N, F) → (total, F): the valid rows, step by step.
template <class T>
Array<T> pack_steps(const Array<T>& padded, const SequencePacking& plan);

// (total, F) → (T, N, F) with zeros at the padded positions.
template <class T>
Array<T> unpack_steps(const Array<T>& packed, const SequencePacking& plan);

}  // namespace normlab::model
