#pragma once
// Tensor aliases and the [N][C][S] view every normalizer works in (DESIGN.md, "Conventions").

#include <cstddef>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

namespace normlab {

template <class T>
using Array = xt::xarray<T>;

// The float tensor of the public interface (row-major, contiguous).
using Tensor = Array<float>;

using Shape = std::vector<std::size_t>;

// An input (N, C, d2, d3, ...) seen as N samples of C channels of S = d2·d3·… values each.
struct NcsView {
    std::size_t n = 0;
    std::size_t c = 0;
    std::size_t s = 1;
    std::size_t size() const { return n * c * s; }
};

// "(8, 64, 5, 5)" — used in every error message about shapes.
std::string format_shape(const Shape& shape);

template <class E>
Shape shape_of(const E& e) {
    return Shape(e.shape().begin(), e.shape().end());
}

}  // namespace normlab
