#include "normlab/per_step.hpp"

#include "normlab/errors.hpp"
#include "normlab/registry.hpp"

namespace normlab {

template <class T>
PerStepNormalizer<T>::PerStepNormalizer(const std::string& spec, std::size_t num_features,
                                        std::size_t max_steps)
    : num_features_(num_features) {
    if (max_steps == 0)
        throw OptionError("per_step(" + spec + "): max_steps must be at least 1, got 0");
    for (std::size_t t = 0; t < max_steps; ++t)
        steps_.push_back(make_normalizer<T>(spec, num_features));
    for (auto& p : steps_.front()->parameters()) {
        param_names_.push_back(p.name);
        shared_values_.push_back(*p.value);
        shared_grads_.push_back(xt::zeros_like(*p.value));
    }
}

template <class T>
std::string PerStepNormalizer<T>::spec() const {
    return "per_step(" + std::to_string(steps_.size()) + " steps) of " + steps_.front()->spec();
}

template <class T>
Array<T> PerStepNormalizer<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    std::size_t step = step_;
    if (step >= steps_.size()) {
        if (mode == Mode::train)
            throw ShapeError("per_step " + steps_.front()->name() + "(" +
                             std::to_string(num_features_) + "): statistics are kept for " +
                             std::to_string(steps_.size()) + " steps, got training step " +
                             std::to_string(step) + " (raise max_steps to the longest sequence)");
        step = steps_.size() - 1;  // beyond T_max at inference: the last step's statistics
    }
    auto& inner = *steps_[step];
    auto params = inner.parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
        *params[i].value = shared_values_[i];
    Array<T> y = inner.forward(x, mode, grad);
    if (grad == Grad::keep) pending_steps_.push_back(step);
    return y;
}

template <class T>
Array<T> PerStepNormalizer<T>::backward(const Array<T>& dy) {
    if (pending_steps_.empty())
        throw StateError("per_step " + steps_.front()->name() + "(" +
                         std::to_string(num_features_) +
                         "): backward() called without a matching forward()");
    const std::size_t step = pending_steps_.back();
    auto& inner = *steps_[step];
    Array<T> dx = inner.backward(dy);  // throws (and keeps the context) on a shape mismatch
    pending_steps_.pop_back();
    auto params = inner.parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
        shared_grads_[i] += *params[i].grad;
        params[i].grad->fill(T(0));
    }
    return dx;
}

template <class T>
std::vector<ParamRef<T>> PerStepNormalizer<T>::parameters() {
    std::vector<ParamRef<T>> out;
    for (std::size_t i = 0; i < param_names_.size(); ++i)
        out.push_back({param_names_[i], &shared_values_[i], &shared_grads_[i]});
    return out;
}

template <class T>
std::vector<BufferRef<T>> PerStepNormalizer<T>::buffers() {
    std::vector<BufferRef<T>> out;
    for (std::size_t t = 0; t < steps_.size(); ++t)
        for (auto& b : steps_[t]->buffers())
            out.push_back({"step" + std::to_string(t) + "." + b.name, b.value});
    return out;
}

template <class T>
std::vector<CounterRef> PerStepNormalizer<T>::counters() {
    std::vector<CounterRef> out;
    for (std::size_t t = 0; t < steps_.size(); ++t)
        for (auto& c : steps_[t]->counters())
            out.push_back({"step" + std::to_string(t) + "." + c.name, c.value});
    return out;
}

template <class T>
void PerStepNormalizer<T>::clear_saved() {
    for (auto& s : steps_)
        s->clear_saved();
    pending_steps_.clear();
}

template <class T>
void PerStepNormalizer<T>::begin_epoch() {
    for (auto& s : steps_)
        s->begin_epoch();
}

template <class T>
void PerStepNormalizer<T>::end_epoch() {
    for (auto& s : steps_)
        s->end_epoch();
}

template class PerStepNormalizer<float>;
template class PerStepNormalizer<double>;

}  // namespace normlab
