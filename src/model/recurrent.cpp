// The recurrent layer: BPTT over packed steps (model/sequence_packing.hpp), normalizer slots
// (model/recurrent_slot.hpp), BLAS for W_x·x (all steps in one product), W_h·h (per step) and
// the weight gradients (one product each after the backward sweep).
#include <cmath>
#include <cstring>

#include <xtensor-blas/xblas.hpp>

#include "model/recurrent_slot.hpp"
#include "model/saved.hpp"
#include "model/sequence_packing.hpp"
#include "normlab/errors.hpp"
#include "normlab/model/layers.hpp"
#include "normlab/model/recurrent.hpp"

namespace normlab::model {

template <class T>
Array<T> init_weight(const Shape& shape, std::size_t fan_in, std::size_t fan_out, Init init,
                     std::mt19937& rng, double stddev);

namespace {

template <class T>
T sigmoid(T v) {
    // Written so that neither branch overflows exp().
    return v >= T(0) ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v));
}

// Rows [first, first + count) of a (rows, cols) array, copied.
template <class T>
Array<T> copy_rows(const Array<T>& a, std::size_t first, std::size_t count) {
    const std::size_t cols = a.shape()[1];
    Array<T> out = Array<T>::from_shape({count, cols});
    std::memcpy(out.data(), a.data() + first * cols, count * cols * sizeof(T));
    return out;
}

template <class T>
void put_rows(Array<T>& dst, std::size_t first, const Array<T>& src) {
    std::memcpy(dst.data() + first * dst.shape()[1], src.data(), src.size() * sizeof(T));
}

// Each H×H block of a (blocks·H, H) matrix orthogonal: Gram–Schmidt on Gaussian rows.
template <class T>
Array<T> orthogonal_blocks(std::size_t blocks, std::size_t h, std::mt19937& rng) {
    std::normal_distribution<double> normal(0.0, 1.0);
    Array<T> w = Array<T>::from_shape({blocks * h, h});
    std::vector<double> q(h * h);
    for (std::size_t b = 0; b < blocks; ++b) {
        for (std::size_t i = 0; i < h; ++i) {
            double* row = q.data() + i * h;
            double norm = 0;
            while (norm < 1e-6) {  // a fresh draw in the (measure-zero) dependent case
                for (std::size_t j = 0; j < h; ++j)
                    row[j] = normal(rng);
                for (std::size_t k = 0; k < i; ++k) {
                    const double* prev = q.data() + k * h;
                    double dot = 0;
                    for (std::size_t j = 0; j < h; ++j)
                        dot += row[j] * prev[j];
                    for (std::size_t j = 0; j < h; ++j)
                        row[j] -= dot * prev[j];
                }
                norm = 0;
                for (std::size_t j = 0; j < h; ++j)
                    norm += row[j] * row[j];
                norm = std::sqrt(norm);
            }
            for (std::size_t j = 0; j < h; ++j)
                row[j] /= norm;
        }
        for (std::size_t i = 0; i < h * h; ++i)
            w.data()[b * h * h + i] = T(q[i]);
    }
    return w;
}

bool is_none(const std::string& spec) {
    return spec.empty() || spec == "none";
}

}  // namespace

template <class T>
struct RecurrentLayer<T>::Impl {
    // What backward needs from one forward, all packed (one block of rows per step).
    struct Context {
        SequencePacking plan;
        Array<T> inputs;     // x_t, (P, F)
        Array<T> h_prev;     // h_{t−1}, (P, H)
        Array<T> c_prev;     // LSTM: c_{t−1}, (P, H)
        Array<T> acts;       // LSTM: σ(f), σ(i), σ(o), tanh(g); RNN: h_t. (P, G·H)
        Array<T> tanh_cell;  // LSTM: tanh(N_c(c_t)), (P, H)
    };

    Impl(const RecurrentOptions& o, std::size_t g, std::mt19937& rng)
        : gates(g),
          w_ih(init_weight<T>({g * o.hidden_size, o.input_size}, o.input_size, o.hidden_size,
                              Init::xavier, rng, 0.0)),
          w_hh(orthogonal_blocks<T>(g, o.hidden_size, rng)),
          bias(xt::zeros<T>({g * o.hidden_size})),
          g_ih(xt::zeros_like(w_ih)),
          g_hh(xt::zeros_like(w_hh)),
          g_bias(xt::zeros_like(bias)),
          input(o.norms.input, g * o.hidden_size, o.max_steps, o.norms.gamma, o.norms.gate_beta,
                "input_norm"),
          recurrent(o.norms.recurrent, g * o.hidden_size, o.max_steps, o.norms.gamma,
                    o.norms.gate_beta, "recurrent_norm"),
          cell(g == 4 ? o.norms.cell : "none", o.hidden_size, o.max_steps, o.norms.gamma, true,
               "cell_norm") {}

    std::size_t gates;
    Array<T> w_ih, w_hh, bias, g_ih, g_hh, g_bias;
    RecurrentSlot<T> input, recurrent, cell;
    std::vector<std::size_t> lengths;  // from set_sequence_lengths
    std::vector<Context> saved;
};

template <class T>
RecurrentLayer<T>::RecurrentLayer(RecurrentCell cell, RecurrentOptions options, std::mt19937& rng)
    : cell_(cell), options_(std::move(options)) {
    const std::string kind = cell_ == RecurrentCell::lstm ? "lstm" : "rnn";
    if (options_.input_size == 0 || options_.hidden_size == 0)
        throw OptionError(kind + ": input_size and hidden_size must be at least 1, got " +
                          std::to_string(options_.input_size) + " and " +
                          std::to_string(options_.hidden_size));
    if (cell_ == RecurrentCell::tanh_rnn && !is_none(options_.norms.cell))
        throw OptionError(
            "rnn: a tanh RNN has no cell state, so its cell slot must be 'none', "
            "got '" +
            options_.norms.cell + "'");
    impl_ = std::make_unique<Impl>(options_, cell_ == RecurrentCell::lstm ? 4 : 1, rng);
    if (cell_ == RecurrentCell::lstm)
        for (std::size_t j = 0; j < options_.hidden_size; ++j)
            impl_->bias(j) = T(options_.forget_bias);
}

template <class T>
RecurrentLayer<T>::~RecurrentLayer() = default;

template <class T>
std::string RecurrentLayer<T>::name() const {
    const auto& n = options_.norms;
    auto slot = [](const std::string& s) { return is_none(s) ? std::string("none") : s; };
    std::string out = std::string(cell_ == RecurrentCell::lstm ? "lstm(" : "rnn(") +
                      std::to_string(options_.input_size) + " -> " +
                      std::to_string(options_.hidden_size) + "; input_norm " + slot(n.input) +
                      ", recurrent_norm " + slot(n.recurrent);
    if (cell_ == RecurrentCell::lstm) out += ", cell_norm " + slot(n.cell);
    return out + ")";
}

template <class T>
Array<T> RecurrentLayer<T>::forward(const Array<T>& x, Mode mode, Grad grad) {
    return forward(x, impl_->lengths, mode, grad);
}

template <class T>
Array<T> RecurrentLayer<T>::forward(const Array<T>& x, const std::vector<std::size_t>& lengths,
                                    Mode mode, Grad grad) {
    const Shape s = shape_of(x);
    if (s.size() != 3 || s[0] == 0 || s[1] == 0 || s[2] != options_.input_size)
        throw ShapeError(name() + ": expected input of shape (T, N, " +
                         std::to_string(options_.input_size) +
                         ") (time-major) with T, N ≥ 1, got " + format_shape(s));
    Impl& m = *impl_;
    const bool lstm = cell_ == RecurrentCell::lstm;
    const std::size_t steps = s[0], batch = s[1], h = options_.hidden_size, gh = m.gates * h;
    typename Impl::Context ctx;
    ctx.plan = plan_packing(lengths, steps, batch, name());
    const SequencePacking& plan = ctx.plan;
    const std::size_t total = plan.total();
    ctx.inputs = pack_steps(x, plan);
    Array<T> ax = Array<T>::from_shape({total, gh});
    if (total > 0) xt::blas::gemm(ctx.inputs, m.w_ih, ax, false, true);
    ctx.h_prev = xt::zeros<T>({total, h});
    ctx.acts = Array<T>::from_shape({total, gh});
    if (lstm) {
        ctx.c_prev = xt::zeros<T>({total, h});
        ctx.tanh_cell = Array<T>::from_shape({total, h});
    }
    Array<T> hidden = Array<T>::from_shape({total, h});

    Array<T> h_state = xt::zeros<T>({plan.rows[0], h}), c_state = h_state;  // of step t − 1
    try {
        for (std::size_t t = 0; t < steps && plan.rows[t] > 0; ++t) {
            const std::size_t rows = plan.rows[t], first = plan.offset[t];
            const Array<T> nx = m.input.forward(copy_rows(ax, first, rows), t, batch, mode, grad);
            const Array<T> h_in = copy_rows(h_state, 0, rows);
            Array<T> ah = xt::zeros<T>({rows, gh});
            if (t > 0) xt::blas::gemm(h_in, m.w_hh, ah, false, true);
            const Array<T> nh = m.recurrent.forward(ah, t, batch, mode, grad);
            put_rows(ctx.h_prev, first, h_in);

            Array<T> h_new = Array<T>::from_shape({rows, h});
            T* act = ctx.acts.data() + first * gh;
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t j = 0; j < gh; ++j) {
                    const T pre = nx(r, j) + nh(r, j) + m.bias(j);
                    act[r * gh + j] = !lstm || j >= 3 * h ? std::tanh(pre) : sigmoid(pre);
                }
            if (lstm) {
                Array<T> c_new = Array<T>::from_shape({rows, h});
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t j = 0; j < h; ++j) {
                        const T* a = act + r * gh;
                        c_new(r, j) = a[j] * c_state(r, j) + a[h + j] * a[3 * h + j];
                    }
                put_rows(ctx.c_prev, first, copy_rows(c_state, 0, rows));
                const Array<T> nc = m.cell.forward(c_new, t, batch, mode, grad);
                T* tc = ctx.tanh_cell.data() + first * h;
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t j = 0; j < h; ++j) {
                        tc[r * h + j] = std::tanh(nc(r, j));
                        h_new(r, j) = act[r * gh + 2 * h + j] * tc[r * h + j];
                    }
                c_state = std::move(c_new);
            } else {
                std::memcpy(h_new.data(), act, rows * h * sizeof(T));
            }
            put_rows(hidden, first, h_new);
            h_state = std::move(h_new);
        }
    } catch (...) {
        clear_saved();  // the slots hold contexts of this half-run forward
        throw;
    }

    Array<T> out;
    if (options_.output == SequenceOutput::all_steps) {
        out = unpack_steps(hidden, plan);
    } else {
        out = xt::zeros<T>({batch, h});
        for (std::size_t r = 0; r < batch; ++r) {
            const std::size_t seq = plan.order[r], len = plan.lengths[seq];
            if (len > 0)
                std::memcpy(out.data() + seq * h, hidden.data() + (plan.offset[len - 1] + r) * h,
                            h * sizeof(T));
        }
    }
    if (grad == Grad::keep) m.saved.push_back(std::move(ctx));
    return out;
}

template <class T>
Array<T> RecurrentLayer<T>::backward(const Array<T>& dy) {
    Impl& m = *impl_;
    if (m.saved.empty()) take_saved(m.saved, name());
    const SequencePacking& plan_ref = m.saved.back().plan;
    const std::size_t h = options_.hidden_size, gh = m.gates * h;
    check_dy(options_.output == SequenceOutput::all_steps ? Shape{plan_ref.steps, plan_ref.batch, h}
                                                          : Shape{plan_ref.batch, h},
             shape_of(dy), name());
    const typename Impl::Context ctx = take_saved(m.saved, name());
    const SequencePacking& plan = ctx.plan;
    const bool lstm = cell_ == RecurrentCell::lstm;
    const std::size_t total = plan.total();

    // ∂loss/∂h_t from above, packed; padded positions of dy are never read.
    Array<T> dhidden;
    if (options_.output == SequenceOutput::all_steps) {
        dhidden = pack_steps(dy, plan);
    } else {
        dhidden = xt::zeros<T>({total, h});
        for (std::size_t r = 0; r < plan.batch; ++r) {
            const std::size_t seq = plan.order[r], len = plan.lengths[seq];
            if (len > 0)
                std::memcpy(dhidden.data() + (plan.offset[len - 1] + r) * h, dy.data() + seq * h,
                            h * sizeof(T));
        }
    }
    Array<T> dax = Array<T>::from_shape({total, gh}), dah = Array<T>::from_shape({total, gh});
    Array<T> dh_next, dc_next;  // ∂loss/∂h_t, ∂loss/∂c_t through step t + 1 (its rows)
    bool have_next = false;
    for (std::size_t t = plan.steps; t-- > 0;) {
        const std::size_t rows = plan.rows[t], first = plan.offset[t];
        if (rows == 0) continue;
        Array<T> dh = copy_rows(dhidden, first, rows);
        Array<T> dc = xt::zeros<T>({rows, h});
        if (have_next) {
            const std::size_t carried = dh_next.shape()[0];  // rows[t + 1] ≤ rows
            for (std::size_t i = 0; i < carried * h; ++i)
                dh.data()[i] += dh_next.data()[i];
            if (lstm) std::memcpy(dc.data(), dc_next.data(), carried * h * sizeof(T));
        }
        const T* act = ctx.acts.data() + first * gh;
        Array<T> dpre = Array<T>::from_shape({rows, gh});
        if (lstm) {
            const T* tc = ctx.tanh_cell.data() + first * h;
            Array<T> dnc = Array<T>::from_shape({rows, h});
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t j = 0; j < h; ++j) {
                    const T o = act[r * gh + 2 * h + j], v = tc[r * h + j];
                    dnc(r, j) = dh(r, j) * o * (T(1) - v * v);
                    dpre(r, 2 * h + j) = dh(r, j) * v * o * (T(1) - o);
                }
            dc += m.cell.backward(dnc);
            dc_next = Array<T>::from_shape({rows, h});
            const T* cp = ctx.c_prev.data() + first * h;
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t j = 0; j < h; ++j) {
                    const T* a = act + r * gh;
                    const T f = a[j], i = a[h + j], g = a[3 * h + j], d = dc(r, j);
                    dpre(r, j) = d * cp[r * h + j] * f * (T(1) - f);
                    dpre(r, h + j) = d * g * i * (T(1) - i);
                    dpre(r, 3 * h + j) = d * i * (T(1) - g * g);
                    dc_next(r, j) = d * f;
                }
        } else {
            for (std::size_t i = 0; i < rows * h; ++i)
                dpre.data()[i] = dh.data()[i] * (T(1) - act[i] * act[i]);
        }
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t j = 0; j < gh; ++j)
                m.g_bias(j) += dpre(r, j);
        const Array<T> dah_t = m.recurrent.backward(dpre);
        put_rows(dah, first, dah_t);
        if (t > 0) {
            dh_next = Array<T>::from_shape({rows, h});
            xt::blas::gemm(dah_t, m.w_hh, dh_next);
            have_next = true;
        }
        put_rows(dax, first, m.input.backward(dpre));
    }
    Array<T> dx_packed = Array<T>::from_shape({total, options_.input_size});
    if (total > 0) {
        xt::blas::gemm(dah, ctx.h_prev, m.g_hh, true, false, T(1), T(1));  // dW_h += Σ dahᵀ·h_{t−1}
        xt::blas::gemm(dax, ctx.inputs, m.g_ih, true, false, T(1), T(1));  // dW_x += Σ daxᵀ·x_t
        xt::blas::gemm(dax, m.w_ih, dx_packed);
    }
    return unpack_steps(dx_packed, plan);
}

template <class T>
std::vector<ParamRef<T>> RecurrentLayer<T>::parameters() {
    Impl& m = *impl_;
    std::vector<ParamRef<T>> out{{"weight_ih", &m.w_ih, &m.g_ih},
                                 {"weight_hh", &m.w_hh, &m.g_hh},
                                 {"bias", &m.bias, &m.g_bias}};
    for (auto* slot : {&m.input, &m.recurrent, &m.cell})
        for (auto& p : slot->parameters())
            out.push_back(p);
    return out;
}

template <class T>
std::vector<BufferRef<T>> RecurrentLayer<T>::buffers() {
    std::vector<BufferRef<T>> out;
    for (auto* slot : {&impl_->input, &impl_->recurrent, &impl_->cell})
        for (auto& b : slot->buffers())
            out.push_back(b);
    return out;
}

template <class T>
std::vector<CounterRef> RecurrentLayer<T>::counters() {
    std::vector<CounterRef> out;
    for (auto* slot : {&impl_->input, &impl_->recurrent, &impl_->cell})
        for (auto& c : slot->counters())
            out.push_back(c);
    return out;
}

template <class T>
void RecurrentLayer<T>::clear_saved() {
    impl_->saved.clear();
    for (auto* slot : {&impl_->input, &impl_->recurrent, &impl_->cell})
        slot->clear_saved();
}

template <class T>
bool RecurrentLayer<T>::is_normalizer_parameter(const std::string& name) const {
    for (const char* prefix : {"input_norm.", "recurrent_norm.", "cell_norm."})
        if (name.rfind(prefix, 0) == 0) return true;
    return false;
}

template <class T>
void RecurrentLayer<T>::set_sequence_lengths(const std::vector<std::size_t>& lengths) {
    impl_->lengths = lengths;
}

template <class T>
void RecurrentLayer<T>::begin_epoch() {
    for (auto* slot : {&impl_->input, &impl_->recurrent, &impl_->cell})
        slot->begin_epoch();
}

template <class T>
void RecurrentLayer<T>::end_epoch() {
    for (auto* slot : {&impl_->input, &impl_->recurrent, &impl_->cell})
        slot->end_epoch();
}

template <class T>
BasicNormalizer<T>* RecurrentLayer<T>::slot_normalizer(Slot slot) {
    switch (slot) {
        case Slot::input:
            return impl_->input.normalizer();
        case Slot::recurrent:
            return impl_->recurrent.normalizer();
        case Slot::cell:
            return impl_->cell.normalizer();
    }
    return nullptr;
}

template class RecurrentLayer<float>;
template class RecurrentLayer<double>;

}  // namespace normlab::model
