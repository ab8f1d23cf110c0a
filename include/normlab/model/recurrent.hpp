#pragma once
// Recurrent layers with normalizer slots at the three published places: the input
// pre-activation W_x·x_t, the recurrent pre-activation W_h·h_{t−1} (normalized separately, each
// with its own γ, β) and, for the LSTM, the cell state before the output tanh:
//
//   (f, i, o, g) = N_h(W_h h_{t−1}) + N_x(W_x x_t) + b
//   c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g),   h_t = σ(o) ⊙ tanh(N_c(c_t))
//
// LN-LSTM (Ba, Kiros & Hinton 2016, arXiv:1607.06450, supplementary Eqs. 17–22; spec §3.3) and
// BN-LSTM (Cooijmans et al. 2016, arXiv:1603.09025; spec §7) are two configurations of this
// one layer. A slot whose normalizer uses batch statistics is wrapped in PerStepNormalizer, so
// every time step keeps its own statistics (steps beyond max_steps reuse the last at inference).
//
// Input is time-major (T, N, F). Sequences may be shorter than T: lengths[n] valid steps, the
// rest padding. Padding takes no part in anything — each step gathers its valid rows into a
// smaller batch before the normalizers and scatters the results back — so a padded batch gives
// the same outputs, statistics and gradients as the unpadded sequences. Outputs at padded
// positions are zero; dy at padded positions is ignored.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "normlab/model/layer.hpp"

namespace normlab::model {

// The normalizer spec of each slot ("none" or "" = no normalizer there) and how the slot
// parameters start.
struct RecurrentNorms {
    std::string input = "none";      // on W_x·x_t
    std::string recurrent = "none";  // on W_h·h_{t−1}
    std::string cell = "none";       // LSTM only: on c_t before the output tanh
    // Initial γ of every slot. BN-LSTM uses 0.1: unit γ saturates the tanh (spec §7.1).
    double gamma = 1.0;
    // false: the β of the input and recurrent slots is held at 0 and is not a parameter, as in
    // BN-LSTM — the LSTM bias b already plays that role.
    bool gate_beta = true;

    // LN-LSTM: the spec on all three slots, γ = 1, learned β (Ba et al.).
    static RecurrentNorms layer_norm_lstm(const std::string& spec = "layer_norm");
    // BN-LSTM: the spec on all three slots, γ = 0.1, β_x = β_h = 0 (Cooijmans et al.).
    static RecurrentNorms batch_norm_lstm(const std::string& spec = "batch_norm");
    // The BN-LSTM recipe when the spec uses batch statistics, the LN-LSTM recipe otherwise;
    // "identity" or "none" gives a plain LSTM. What the "lstm" workloads use. OptionError for
    // a spec that cannot normalize the 4·hidden_size gate pre-activations.
    static RecurrentNorms recipe_for(const std::string& spec, std::size_t hidden_size);
};

enum class RecurrentCell { lstm, tanh_rnn };
enum class SequenceOutput {
    all_steps,  // (T, N, H), zero at padded positions
    last_step,  // (N, H): h at each sequence's last valid step (zero for an empty sequence)
};

struct RecurrentOptions {
    std::size_t input_size = 0;
    std::size_t hidden_size = 0;
    // T_max of the per-step statistics of batch-statistics slots: training on a longer sequence
    // is a ShapeError, inference beyond it reuses the statistics of step max_steps − 1.
    std::size_t max_steps = 0;
    RecurrentNorms norms;
    SequenceOutput output = SequenceOutput::last_step;
    // Initial bias of the LSTM forget gate (1: remember by default, Jozefowicz et al. 2015).
    double forget_bias = 1.0;
};

// One recurrent layer, LSTM or tanh RNN, trained by backpropagation through time. Parameters:
// weight_ih (G·H, F), weight_hh (G·H, H), bias (G·H) with G = 4 gates (f, i, o, g) for the LSTM
// and 1 for the RNN, then the slots' "input_norm.*", "recurrent_norm.*", "cell_norm.*".
// weight_ih is Xavier-uniform, each H×H gate block of weight_hh orthogonal.
template <class T>
class RecurrentLayer : public Layer<T> {
  public:
    // OptionError for zero sizes, a bad slot spec, or a cell slot on the RNN.
    RecurrentLayer(RecurrentCell cell, RecurrentOptions options, std::mt19937& rng);
    ~RecurrentLayer() override;

    std::string name() const override;
    // x: (T, N, F). Uses the lengths of set_sequence_lengths() (none: every sequence has T).
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    // The same, with the lengths given here (empty: all T).
    Array<T> forward(const Array<T>& x, const std::vector<std::size_t>& lengths, Mode mode,
                     Grad grad = Grad::keep);
    Array<T> backward(const Array<T>& dy) override;

    std::vector<ParamRef<T>> parameters() override;
    std::vector<BufferRef<T>> buffers() override;
    std::vector<CounterRef> counters() override;
    void clear_saved() override;
    bool is_normalizer_parameter(const std::string& name) const override;
    void set_sequence_lengths(const std::vector<std::size_t>& lengths) override;
    void begin_epoch() override;
    void end_epoch() override;

    // The normalizer of a slot (a PerStepNormalizer for batch-statistics specs), or nullptr.
    enum class Slot { input, recurrent, cell };
    BasicNormalizer<T>* slot_normalizer(Slot slot);
    const RecurrentOptions& options() const { return options_; }

  private:
    struct Impl;
    RecurrentCell cell_;
    RecurrentOptions options_;
    std::unique_ptr<Impl> impl_;
};

template <class T>
class Lstm : public RecurrentLayer<T> {
  public:
    Lstm(RecurrentOptions options, std::mt19937& rng)
        : RecurrentLayer<T>(RecurrentCell::lstm, std::move(options), rng) {}
};

// h_t = tanh(N_x(W_x x_t) + N_h(W_h h_{t−1}) + b) (LN paper Eq. 4 when both slots are LN).
template <class T>
class TanhRnn : public RecurrentLayer<T> {
  public:
    TanhRnn(RecurrentOptions options, std::mt19937& rng)
        : RecurrentLayer<T>(RecurrentCell::tanh_rnn, std::move(options), rng) {}
};

// Batch-first (N, T, F) → time-major (T, N, F), the input the recurrent layers take; the
// workloads use it to read a (N, 28, 28) image as 28 steps of 28 pixels.
template <class T>
class TimeMajor : public Layer<T> {
  public:
    std::string name() const override { return "time_major"; }
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    void clear_saved() override { shapes_.clear(); }

  private:
    std::vector<Shape> shapes_;
};

}  // namespace normlab::model
