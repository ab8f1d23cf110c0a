#include "model/recurrent_slot.hpp"

#include "normlab/errors.hpp"
#include "normlab/per_step.hpp"
#include "normlab/registry.hpp"

namespace normlab::model {
namespace {

bool is_none(const std::string& spec) {
    return spec.empty() || spec == "none";
}

// Rethrows e with the slot and step in front of its message, keeping its type.
template <class Call>
auto with_context(const std::string& where, Call&& call) -> decltype(call()) {
    try {
        return call();
    } catch (const ShapeError& e) {
        throw ShapeError(where + e.what());
    } catch (const OptionError& e) {
        throw OptionError(where + e.what());
    } catch (const StateError& e) {
        throw StateError(where + e.what());
    } catch (const NonFiniteError& e) {
        throw NonFiniteError(where + e.what());
    }
}

}  // namespace

template <class T>
RecurrentSlot<T>::RecurrentSlot(const std::string& spec, std::size_t features,
                                std::size_t max_steps, double gamma, bool learn_beta,
                                std::string label)
    : learn_beta_(learn_beta), label_(std::move(label)) {
    if (is_none(spec)) return;
    with_context(label_ + ": ", [&] {
        norm_ = make_normalizer<T>(spec, features);
        if (norm_->uses_batch_statistics()) {
            if (max_steps == 0)
                throw OptionError("'" + spec +
                                  "' uses batch statistics, which are kept per time step: "
                                  "max_steps must be at least 1, got 0");
            norm_ = std::make_unique<PerStepNormalizer<T>>(spec, features, max_steps);
            per_step_ = true;
        }
        return 0;
    });
    for (auto& p : norm_->parameters()) {
        if (p.name == "weight") p.value->fill(T(gamma));
        if (p.name == "bias") p.value->fill(T(0));
    }
}

template <class T>
Array<T> RecurrentSlot<T>::forward(const Array<T>& x, std::size_t step, std::size_t full_batch,
                                   Mode mode, Grad grad) {
    if (!norm_) return x;
    if (per_step_) static_cast<PerStepNormalizer<T>&>(*norm_).set_step(step);
    const bool lone_row = per_step_ && mode == Mode::train && x.shape()[0] == 1 && full_batch > 1;
    return with_context(label_ + " at step " + std::to_string(step) + ": ",
                        [&] { return norm_->forward(x, lone_row ? Mode::eval : mode, grad); });
}

template <class T>
Array<T> RecurrentSlot<T>::backward(const Array<T>& dy) {
    if (!norm_) return dy;
    return with_context(label_ + ": ", [&] { return norm_->backward(dy); });
}

template <class T>
std::vector<ParamRef<T>> RecurrentSlot<T>::parameters() {
    std::vector<ParamRef<T>> out;
    if (!norm_) return out;
    for (auto& p : norm_->parameters())
        if (learn_beta_ || p.name != "bias")
            out.push_back({label_ + "." + p.name, p.value, p.grad});
    return out;
}

template <class T>
std::vector<BufferRef<T>> RecurrentSlot<T>::buffers() {
    std::vector<BufferRef<T>> out;
    if (norm_)
        for (auto& b : norm_->buffers())
            out.push_back({label_ + "." + b.name, b.value});
    return out;
}

template <class T>
std::vector<CounterRef> RecurrentSlot<T>::counters() {
    std::vector<CounterRef> out;
    if (norm_)
        for (auto& c : norm_->counters())
            out.push_back({label_ + "." + c.name, c.value});
    return out;
}

template <class T>
void RecurrentSlot<T>::clear_saved() {
    if (norm_) norm_->clear_saved();
}

template <class T>
void RecurrentSlot<T>::begin_epoch() {
    if (norm_) norm_->begin_epoch();
}

template <class T>
void RecurrentSlot<T>::end_epoch() {
    if (norm_) norm_->end_epoch();
}

template class RecurrentSlot<float>;
template class RecurrentSlot<double>;

}  // namespace normlab::model
