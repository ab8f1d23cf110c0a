#pragma once
// A copy of every buffer (running statistics) and counter (steps, calls) of a normalizer, a
// layer or a whole model, to put back later: a diagnostic pass in train mode, or repeated
// forwards of a gradient check, then leave no trace.

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace normlab {

// Net: anything with buffers() (name, value*) and counters() (name, int64*) in a fixed order:
// BasicNormalizer, model::Layer, model::Sequential.
template <class Net>
class StateSnapshot {
  public:
    explicit StateSnapshot(Net& net) {
        for (auto& b : net.buffers())
            buffers_.push_back(*b.value);
        for (auto& c : net.counters())
            counters_.push_back(*c.value);
    }

    void restore(Net& net) const {
        auto buffers = net.buffers();
        for (std::size_t i = 0; i < buffers.size(); ++i)
            *buffers[i].value = buffers_[i];
        auto counters = net.counters();
        for (std::size_t i = 0; i < counters.size(); ++i)
            *counters[i].value = counters_[i];
    }

  private:
    using Buffer = std::remove_pointer_t<decltype(std::declval<Net&>().buffers().front().value)>;
    std::vector<Buffer> buffers_;
    std::vector<std::int64_t> counters_;
};

}  // namespace normlab
