#pragma once
// Layers of the model toolkit share the Normalizer interface's shape: forward(x, mode, grad)
// saves a context, backward(dy) consumes the most recent one and adds parameter gradients.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "normlab/normalizer.hpp"

namespace normlab::model {

template <class T>
class Layer {
  public:
    virtual ~Layer() = default;
    virtual std::string name() const = 0;
    virtual Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) = 0;
    // The same with x handed over (Sequential hands each layer the previous layer's output):
    // a layer may keep x for its backward instead of a copy or of something derived from it.
    virtual Array<T> forward(Array<T>&& x, Mode mode, Grad grad = Grad::keep) {
        return forward(static_cast<const Array<T>&>(x), mode, grad);
    }
    virtual Array<T> backward(const Array<T>& dy) = 0;
    virtual std::vector<ParamRef<T>> parameters() { return {}; }
    virtual std::vector<BufferRef<T>> buffers() { return {}; }
    virtual std::vector<CounterRef> counters() { return {}; }
    virtual void clear_saved() = 0;
    // Normalizer layers: their parameters can be excluded from weight decay, and they hear
    // about epoch boundaries.
    virtual bool is_normalizer() const { return false; }
    // Whether one of parameters() belongs to a normalizer (layers that hold both kinds, like
    // a recurrent layer with normalizer slots, answer per parameter).
    virtual bool is_normalizer_parameter(const std::string& /*name*/) const {
        return is_normalizer();
    }
    // The number of valid steps of each sequence of the forward calls that follow (empty: every
    // sequence fills the input). Recurrent layers mask the rest; other layers ignore it.
    virtual void set_sequence_lengths(const std::vector<std::size_t>& /*lengths*/) {}
    virtual void begin_epoch() {}
    virtual void end_epoch() {}
};

// A parameter of a whole model: its dotted name ("layers.3.weight") and whether it belongs to
// a normalizer.
template <class T>
struct ModelParam {
    std::string name;
    Array<T>* value;
    Array<T>* grad;
    bool normalizer;
};

template <class T>
class Sequential {
  public:
    Sequential& add(std::unique_ptr<Layer<T>> layer) {
        layers_.push_back(std::move(layer));
        return *this;
    }
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep);
    // A batch of variable-length sequences: every layer hears the lengths for this call only.
    Array<T> forward(const Array<T>& x, const std::vector<std::size_t>& lengths, Mode mode,
                     Grad grad = Grad::keep);
    // For workloads whose examples carry their own lengths (lstm_varlen): the rule reads them
    // from a batch, and forward() without explicit lengths applies it, so every caller —
    // trainer, evaluation, stress test — sees the same task.
    using LengthRule = std::function<std::vector<std::size_t>(const Array<T>& batch)>;
    void set_length_rule(LengthRule rule) { length_rule_ = std::move(rule); }
    bool has_length_rule() const { return bool(length_rule_); }
    Array<T> backward(const Array<T>& dy);
    std::vector<ModelParam<T>> parameters();
    std::vector<BufferRef<T>> buffers();  // dotted names
    std::vector<CounterRef> counters();   // dotted names
    void zero_grad();
    void clear_saved();
    void begin_epoch();
    void end_epoch();
    std::size_t size() const { return layers_.size(); }
    Layer<T>& layer(std::size_t i) { return *layers_.at(i); }
    // One line per layer: "0 linear(784 -> 100)".
    std::string describe() const;

  private:
    Array<T> run_layers(const Array<T>& x, Mode mode, Grad grad);

    std::vector<std::unique_ptr<Layer<T>>> layers_;
    LengthRule length_rule_;
};

}  // namespace normlab::model
