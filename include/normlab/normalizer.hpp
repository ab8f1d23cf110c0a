#pragma once
// The interface every normalization layer implements (DESIGN.md, "The interface").

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "normlab/tensor.hpp"

namespace normlab {

// train: batch statistics, running statistics updated. eval: running statistics where the
// variant keeps them (otherwise the same computation as train, without updating anything).
enum class Mode { train, eval };

// keep: forward saves what backward needs (one saved context per call, consumed LIFO).
// none: nothing is saved — for evaluation loops that never call backward.
enum class Grad { keep, none };

// A trainable tensor and its gradient, owned by the layer.
template <class T>
struct ParamRef {
    std::string name;
    Array<T>* value;
    Array<T>* grad;
};

// A non-trainable tensor saved with the layer (running statistics, schedules).
template <class T>
struct BufferRef {
    std::string name;
    Array<T>* value;
};

// A non-trainable integer saved with the layer (num_batches_tracked, step counters).
struct CounterRef {
    std::string name;
    std::int64_t* value;
};

template <class T>
class BasicNormalizer {
  public:
    using value_type = T;

    virtual ~BasicNormalizer() = default;

    // Registry name, e.g. "batch_norm".
    virtual std::string name() const = 0;
    // Canonical spec with every option spelled out; make_normalizer(spec(), num_features())
    // builds an identical, freshly initialized layer.
    virtual std::string spec() const = 0;
    virtual std::size_t num_features() const = 0;

    // x is (N, C, ...) with C = num_features(). Returns y of the same shape.
    virtual Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) = 0;
    // The same, handing x over: a layer that would write x̂ for its backward may keep x itself
    // instead (x̂ is then recomputed from x in backward, as PyTorch does with its saved input),
    // which saves writing a tensor the size of x. Same y, same gradients, bit for bit. Callers
    // that no longer need x pass it with std::move; the default copies nothing and keeps x̂.
    virtual Array<T> forward(Array<T>&& x, Mode mode, Grad grad = Grad::keep) {
        return forward(static_cast<const Array<T>&>(x), mode, grad);
    }
    // dy must have the shape of the most recent unconsumed forward; returns dx and adds the
    // parameter gradients to grad (call zero_grad() to reset them).
    virtual Array<T> backward(const Array<T>& dy) = 0;

    virtual std::vector<ParamRef<T>> parameters() = 0;
    virtual std::vector<BufferRef<T>> buffers() { return {}; }
    virtual std::vector<CounterRef> counters() { return {}; }

    void zero_grad() {
        for (auto& p : parameters())
            p.grad->fill(T(0));
    }

    // Forwards whose backward has not been called yet; clear_saved() drops them.
    virtual std::size_t saved_contexts() const = 0;
    virtual void clear_saved() = 0;

    // Whether a training-mode output of one sample depends on the other samples of the batch.
    virtual bool uses_batch_statistics() const = 0;

    // Epoch boundaries, for variants whose population statistics are per epoch; others ignore.
    virtual void begin_epoch() {}
    virtual void end_epoch() {}
};

using Normalizer = BasicNormalizer<float>;

}  // namespace normlab
