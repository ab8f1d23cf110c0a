#pragma once
// The LIFO contexts of model layers: backward takes the most recent forward's context.

#include <string>
#include <vector>

#include "normlab/errors.hpp"
#include "normlab/tensor.hpp"

namespace normlab::model {

template <class Context>
Context take_saved(std::vector<Context>& stack, const std::string& layer) {
    if (stack.empty())
        throw StateError(layer +
                         ": backward() called without a matching forward() (no saved "
                         "context; was forward run with Grad::none?)");
    Context c = std::move(stack.back());
    stack.pop_back();
    return c;
}

inline void check_dy(const Shape& expected, const Shape& got, const std::string& layer) {
    if (expected != got)
        throw ShapeError(layer + ": expected dy of shape " + format_shape(expected) +
                         " (the shape of the last forward output), got " + format_shape(got));
}

inline void check_rank(const Shape& got, std::size_t rank, const std::string& expected,
                       const std::string& layer) {
    if (got.size() != rank)
        throw ShapeError(layer + ": expected input of shape " + expected + ", got " +
                         format_shape(got));
}

}  // namespace normlab::model
