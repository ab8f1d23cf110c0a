#include "normlab/model/layer.hpp"

namespace normlab::model {

template <class T>
Array<T> Sequential<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    if (length_rule_) return forward(x, length_rule_(x), mode, grad);
    return run_layers(x, mode, grad);
}

template <class T>
Array<T> Sequential<T>::run_layers(const Array<T>& x, Mode mode, Grad grad) {
    Array<T> h = x;
    try {
        // Each layer is handed the previous output: nothing else reads it, so a normalizer
        // can keep it for backward instead of writing x̂.
        for (auto& layer : layers_)
            h = layer->forward(std::move(h), mode, grad);
    } catch (...) {
        clear_saved();  // a half-run forward would leave contexts no backward will consume
        throw;
    }
    return h;
}

template <class T>
Array<T> Sequential<T>::forward(const Array<T>& x, const std::vector<std::size_t>& lengths,
                                Mode mode, Grad grad) {
    // The lengths belong to this batch only: a later forward without them must not see them.
    struct Reset {
        Sequential& model;
        ~Reset() {
            for (auto& layer : model.layers_)
                layer->set_sequence_lengths({});
        }
    } reset{*this};
    for (auto& layer : layers_)
        layer->set_sequence_lengths(lengths);
    return run_layers(x, mode, grad);
}

template <class T>
Array<T> Sequential<T>::backward(const Array<T>& dy) {
    Array<T> g = dy;
    for (std::size_t i = layers_.size(); i-- > 0;)
        g = layers_[i]->backward(g);
    return g;
}

template <class T>
std::vector<ModelParam<T>> Sequential<T>::parameters() {
    std::vector<ModelParam<T>> out;
    for (std::size_t i = 0; i < layers_.size(); ++i)
        for (auto& p : layers_[i]->parameters())
            out.push_back({"layers." + std::to_string(i) + "." + p.name, p.value, p.grad,
                           layers_[i]->is_normalizer_parameter(p.name)});
    return out;
}

template <class T>
std::vector<BufferRef<T>> Sequential<T>::buffers() {
    std::vector<BufferRef<T>> out;
    for (std::size_t i = 0; i < layers_.size(); ++i)
        for (auto& b : layers_[i]->buffers())
            out.push_back({"layers." + std::to_string(i) + "." + b.name, b.value});
    return out;
}

template <class T>
std::vector<CounterRef> Sequential<T>::counters() {
    std::vector<CounterRef> out;
    for (std::size_t i = 0; i < layers_.size(); ++i)
        for (auto& c : layers_[i]->counters())
            out.push_back({"layers." + std::to_string(i) + "." + c.name, c.value});
    return out;
}

template <class T>
void Sequential<T>::zero_grad() {
    for (auto& p : parameters())
        p.grad->fill(T(0));
}

template <class T>
void Sequential<T>::clear_saved() {
    for (auto& layer : layers_)
        layer->clear_saved();
}

template <class T>
void Sequential<T>::begin_epoch() {
    for (auto& layer : layers_)
        layer->begin_epoch();
}

template <class T>
void Sequential<T>::end_epoch() {
    for (auto& layer : layers_)
        layer->end_epoch();
}

template <class T>
std::string Sequential<T>::describe() const {
    std::string out;
    for (std::size_t i = 0; i < layers_.size(); ++i)
        out += std::to_string(i) + " " + layers_[i]->name() + "\n";
    return out;
}

template class Sequential<float>;
template class Sequential<double>;

}  // namespace normlab::model
