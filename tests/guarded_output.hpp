// Outputs written into a buffer between guards: a pattern no kernel writes (a NaN payload) fills
// the buffer before the call, so a value the kernel skips shows as that pattern, and a store past
// either end of the output as a changed guard.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace normlab::testing {

inline constexpr std::size_t kGuardFloats = 32;
inline constexpr std::uint32_t kUnwritten = 0x7fa5a5a5;

// Room for n floats starting `at` floats past the first guard, all of it unwritten.
class GuardedOutput {
  public:
    GuardedOutput(std::size_t at, std::size_t n)
        : at_(at), store_(kGuardFloats + at + n + kGuardFloats, kUnwritten) {}
    float* values() { return reinterpret_cast<float*>(store_.data() + kGuardFloats + at_); }
    // The output's bits, guards left out.
    std::vector<std::uint32_t> bits() const {
        return {store_.begin() + std::ptrdiff_t(kGuardFloats + at_),
                store_.end() - std::ptrdiff_t(kGuardFloats)};
    }
    // Whether both guards (and the `at` floats before the output) are as they were.
    ::testing::AssertionResult guards_intact() const {
        const auto unwritten = [](std::uint32_t v) { return v == kUnwritten; };
        if (!std::all_of(store_.begin(), store_.begin() + std::ptrdiff_t(kGuardFloats + at_),
                         unwritten))
            return ::testing::AssertionFailure() << "written before the output";
        if (!std::all_of(store_.end() - std::ptrdiff_t(kGuardFloats), store_.end(), unwritten))
            return ::testing::AssertionFailure() << "written after the output";
        return ::testing::AssertionSuccess();
    }

  private:
    std::size_t at_;
    std::vector<std::uint32_t> store_;
};

}  // namespace normlab::testing
