#pragma once
// The layers the workloads are built from. Channel-first like the normalizers: dense
// activations are (N, features), images (N, C, H, W).

#include <cstdint>
#include <random>

#include "normlab/model/layer.hpp"

namespace normlab::model {

enum class Init { gaussian, xavier, he };

// y = x·Wᵀ + b with W of shape (out, in), through BLAS (xtensor-blas).
template <class T>
class Linear : public Layer<T> {
  public:
    // gaussian: N(0, stddev²) as in the BN paper's MLP; xavier: U(±sqrt(6/(in+out)));
    // he: N(0, 2/in). The bias starts at zero.
    Linear(std::size_t in, std::size_t out, Init init, std::mt19937& rng, double stddev = 0.01,
           bool bias = true);
    std::string name() const override;
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    std::vector<ParamRef<T>> parameters() override;
    void clear_saved() override { inputs_.clear(); }

  private:
    std::size_t in_, out_;
    bool has_bias_;
    Array<T> weight_, bias_, weight_grad_, bias_grad_;
    std::vector<Array<T>> inputs_;
};

// 2-D convolution, square kernel, im2col + GEMM per sample. Weight (out, in, k, k).
template <class T>
class Conv2d : public Layer<T> {
  public:
    Conv2d(std::size_t in, std::size_t out, std::size_t kernel, std::size_t stride,
           std::size_t padding, Init init, std::mt19937& rng, bool bias = true);
    std::string name() const override;
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    std::vector<ParamRef<T>> parameters() override;
    void clear_saved() override { inputs_.clear(); }

  private:
    std::size_t in_, out_, kernel_, stride_, padding_;
    bool has_bias_;
    Array<T> weight_, bias_, weight_grad_, bias_grad_;
    std::vector<Array<T>> inputs_;
};

enum class Pool { max, average };

// Non-overlapping k×k pooling (stride k); H and W must be multiples of k.
template <class T>
class Pool2d : public Layer<T> {
  public:
    Pool2d(Pool kind, std::size_t kernel) : kind_(kind), kernel_(kernel) {}
    std::string name() const override;
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    void clear_saved() override { saved_.clear(); }

  private:
    struct Saved {
        Shape shape;
        std::vector<std::uint32_t> argmax;  // max pooling: the winning input of each output
    };
    Pool kind_;
    std::size_t kernel_;
    std::vector<Saved> saved_;
};

// (N, C, H, W) -> (N, C): the mean over H·W.
template <class T>
class GlobalAvgPool : public Layer<T> {
  public:
    std::string name() const override { return "global_avg_pool"; }
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    void clear_saved() override { shapes_.clear(); }

  private:
    std::vector<Shape> shapes_;
};

// (N, ...) -> (N, product of the rest).
template <class T>
class Flatten : public Layer<T> {
  public:
    std::string name() const override { return "flatten"; }
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    void clear_saved() override { shapes_.clear(); }

  private:
    std::vector<Shape> shapes_;
};

enum class Activation { relu, sigmoid, tanh };

template <class T>
class Elementwise : public Layer<T> {
  public:
    explicit Elementwise(Activation kind) : kind_(kind) {}
    std::string name() const override;
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    void clear_saved() override { saved_.clear(); }

  private:
    Activation kind_;
    std::vector<Array<T>> saved_;  // relu: the input; sigmoid, tanh: the output
};

// Inverted dropout: in training each value is zeroed with probability p and the rest scaled by
// 1/(1−p); identity in eval. The mask of call k is drawn from (seed, k), and k is a counter
// saved with the model, so a resumed run draws the same masks.
template <class T>
class Dropout : public Layer<T> {
  public:
    Dropout(double p, std::uint64_t seed);
    std::string name() const override;
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override;
    Array<T> backward(const Array<T>& dy) override;
    std::vector<CounterRef> counters() override { return {{"calls", &calls_}}; }
    void clear_saved() override { masks_.clear(); }

  private:
    double p_;
    std::uint64_t seed_;
    std::int64_t calls_ = 0;
    std::vector<Array<T>> masks_;
};

// Any registered normalizer as a layer.
template <class T>
class NormLayer : public Layer<T> {
  public:
    NormLayer(const std::string& spec, std::size_t num_features);
    explicit NormLayer(std::unique_ptr<BasicNormalizer<T>> norm) : norm_(std::move(norm)) {}
    std::string name() const override { return norm_->spec(); }
    Array<T> forward(const Array<T>& x, Mode mode, Grad grad = Grad::keep) override {
        return norm_->forward(x, mode, grad);
    }
    Array<T> forward(Array<T>&& x, Mode mode, Grad grad = Grad::keep) override {
        return norm_->forward(std::move(x), mode, grad);
    }
    Array<T> backward(const Array<T>& dy) override { return norm_->backward(dy); }
    std::vector<ParamRef<T>> parameters() override { return norm_->parameters(); }
    std::vector<BufferRef<T>> buffers() override { return norm_->buffers(); }
    std::vector<CounterRef> counters() override { return norm_->counters(); }
    void clear_saved() override { norm_->clear_saved(); }
    bool is_normalizer() const override { return true; }
    void begin_epoch() override { norm_->begin_epoch(); }
    void end_epoch() override { norm_->end_epoch(); }
    BasicNormalizer<T>& normalizer() { return *norm_; }

  private:
    std::unique_ptr<BasicNormalizer<T>> norm_;
};

}  // namespace normlab::model
