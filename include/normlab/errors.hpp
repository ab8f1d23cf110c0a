#pragma once
// Exception types. Every message names the layer (or file) and what was expected versus what came.

#include <stdexcept>
#include <string>

namespace normlab {

// Wrong rank, wrong channel count, empty tensor, dy that does not match the saved forward.
struct ShapeError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Unknown variant, unknown option, impossible option value (e.g. groups not dividing channels).
struct OptionError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Calls in the wrong order: backward without a matching forward, loading mismatched state.
struct StateError : std::logic_error {
    using std::logic_error::logic_error;
};

// Statistics computed from the input are NaN or Inf; the layer's state is left untouched.
struct NonFiniteError : std::domain_error {
    using std::domain_error::domain_error;
};

// Unreadable, truncated or malformed files.
struct IoError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace normlab
