#include "normlab/model/training.hpp"

#include <cmath>
#include <cstring>

#include "normlab/errors.hpp"
#include "normlab/model/recurrent.hpp"

namespace normlab::model {

template <class T>
LossResult softmax_cross_entropy(const Array<T>& logits, const std::vector<int>& labels,
                                 Array<T>* dlogits) {
    const Shape s = shape_of(logits);
    if (s.size() != 2 || s[0] != labels.size() || s[0] == 0)
        throw ShapeError("softmax_cross_entropy: expected logits of shape (" +
                         std::to_string(labels.size()) + ", K) for " +
                         std::to_string(labels.size()) + " labels, got " + format_shape(s));
    const std::size_t n = s[0], k = s[1];
    if (dlogits) *dlogits = Array<T>::from_shape(s);
    LossResult r;
    for (std::size_t i = 0; i < n; ++i) {
        const int label = labels[i];
        if (label < 0 || std::size_t(label) >= k)
            throw ShapeError("softmax_cross_entropy: label " + std::to_string(label) +
                             " is outside [0, " + std::to_string(k) + ")");
        const T* row = logits.data() + i * k;
        std::size_t best = 0;
        for (std::size_t j = 1; j < k; ++j)
            if (row[j] > row[best]) best = j;
        const double top = double(row[best]);
        double sum = 0;
        for (std::size_t j = 0; j < k; ++j)
            sum += std::exp(double(row[j]) - top);
        const double log_sum = std::log(sum) + top;
        r.loss += log_sum - double(row[label]);
        r.correct += best == std::size_t(label);
        if (dlogits)
            for (std::size_t j = 0; j < k; ++j)
                dlogits->data()[i * k + j] =
                    T((std::exp(double(row[j]) - log_sum) - (j == std::size_t(label))) / double(n));
    }
    r.loss /= double(n);
    return r;
}

template <class T>
Optimizer<T> Optimizer<T>::sgd(std::vector<ModelParam<T>> params, SgdOptions options) {
    Optimizer o;
    o.kind_ = "sgd";
    o.sgd_ = options;
    for (auto& p : params)
        o.first_.push_back(xt::zeros_like(*p.value));
    o.params_ = std::move(params);
    return o;
}

template <class T>
Optimizer<T> Optimizer<T>::adam(std::vector<ModelParam<T>> params, AdamOptions options) {
    Optimizer o;
    o.kind_ = "adam";
    o.adam_ = options;
    for (auto& p : params) {
        o.first_.push_back(xt::zeros_like(*p.value));
        o.second_.push_back(xt::zeros_like(*p.value));
    }
    o.params_ = std::move(params);
    return o;
}

template <class T>
void Optimizer<T>::step(double lr) {
    ++steps_;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        T* w = params_[i].value->data();
        const T* g = params_[i].grad->data();
        T* m = first_[i].data();
        const std::size_t n = params_[i].value->size();
        if (kind_ == "sgd") {
            const double wd =
                params_[i].normalizer && !sgd_.decay_normalizers ? 0.0 : sgd_.weight_decay;
            // PyTorch's SGD: v = μ·v + (g + wd·w); w -= lr·v.
            for (std::size_t j = 0; j < n; ++j) {
                m[j] = T(sgd_.momentum * double(m[j]) + double(g[j]) + wd * double(w[j]));
                w[j] = T(double(w[j]) - lr * double(m[j]));
            }
        } else {
            const double wd =
                params_[i].normalizer && !adam_.decay_normalizers ? 0.0 : adam_.weight_decay;
            T* v = second_[i].data();
            const double c1 = 1 - std::pow(adam_.beta1, double(steps_));
            const double c2 = 1 - std::pow(adam_.beta2, double(steps_));
            for (std::size_t j = 0; j < n; ++j) {
                const double grad = double(g[j]) + wd * double(w[j]);
                m[j] = T(adam_.beta1 * double(m[j]) + (1 - adam_.beta1) * grad);
                v[j] = T(adam_.beta2 * double(v[j]) + (1 - adam_.beta2) * grad * grad);
                w[j] = T(double(w[j]) -
                         lr * (double(m[j]) / c1) / (std::sqrt(double(v[j]) / c2) + adam_.eps));
            }
        }
    }
}

template <class T>
std::vector<BufferRef<T>> Optimizer<T>::state() {
    std::vector<BufferRef<T>> out;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        out.push_back({params_[i].name + "." + (kind_ == "sgd" ? "velocity" : "m"), &first_[i]});
        if (kind_ == "adam") out.push_back({params_[i].name + ".v", &second_[i]});
    }
    return out;
}

double Schedule::at(std::size_t step) const {
    if (kind == "step" && every > 0) return base * std::pow(gamma, double(step / every));
    if (kind == "cosine" && total > 0)
        return 0.5 * base * (1 + std::cos(M_PI * double(std::min(step, total)) / double(total)));
    return base;
}

Shape example_shape(const std::string& workload) {
    if (workload == "cnn") return {1, 28, 28};
    if (workload == "lstm" || workload == "lstm_varlen") return {28, 28};
    return {784};
}

template <class T>
std::vector<std::size_t> varlen_lengths(const Array<T>& batch) {
    constexpr std::size_t kMinRows = 7, kRows = 28;
    const std::size_t n = batch.shape()[0], per_example = n ? batch.size() / n : 0;
    std::vector<std::size_t> lengths(n);
    for (std::size_t i = 0; i < n; ++i) {
        // FNV-1a over the float values' bits, then a splitmix64 finish to spread the low bits.
        std::uint64_t h = 0xcbf29ce484222325ULL;
        for (std::size_t j = 0; j < per_example; ++j) {
            const float v = float(batch.data()[i * per_example + j]);
            std::uint32_t bits;
            std::memcpy(&bits, &v, sizeof bits);
            h = (h ^ bits) * 0x100000001b3ULL;
        }
        h ^= h >> 30;
        h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 27;
        h *= 0x94d049bb133111ebULL;
        h ^= h >> 31;
        lengths[i] = kMinRows + std::size_t(h % (kRows - kMinRows + 1));
    }
    return lengths;
}

template <class T>
Sequential<T> build_model(const std::string& workload, const std::string& normalizer,
                          std::uint64_t seed) {
    std::mt19937 rng(std::uint32_t(seed * 2654435761u + 12345u));
    const bool plain = normalizer == "identity";
    Sequential<T> m;
    if (workload == "bn_mlp" || workload == "mlp" || workload == "relu_mlp") {
        const bool relu = workload == "relu_mlp";
        std::size_t in = 784;
        for (int i = 0; i < 3; ++i) {
            m.add(std::make_unique<Linear<T>>(in, 100, relu ? Init::he : Init::gaussian, rng,
                                              1.0 / std::sqrt(double(in)), plain));
            m.add(std::make_unique<NormLayer<T>>(normalizer, 100));
            m.add(std::make_unique<Elementwise<T>>(relu ? Activation::relu : Activation::sigmoid));
            in = 100;
        }
        m.add(std::make_unique<Linear<T>>(100, 10, Init::xavier, rng));
        return m;
    }
    if (workload == "cnn") {
        std::size_t in = 1;
        for (std::size_t out : {16, 32, 64}) {
            m.add(std::make_unique<Conv2d<T>>(in, out, 3, 1, 1, Init::he, rng, plain));
            m.add(std::make_unique<NormLayer<T>>(normalizer, out));
            m.add(std::make_unique<Elementwise<T>>(Activation::relu));
            if (out != 64) m.add(std::make_unique<Pool2d<T>>(Pool::max, 2));
            in = out;
        }
        m.add(std::make_unique<GlobalAvgPool<T>>());
        m.add(std::make_unique<Linear<T>>(64, 10, Init::xavier, rng));
        return m;
    }
    if (workload == "lstm" || workload == "lstm_varlen") {
        constexpr std::size_t kRows = 28, kPixels = 28, kHidden = 128;
        RecurrentOptions o;
        o.input_size = kPixels;
        o.hidden_size = kHidden;
        o.max_steps = kRows;
        o.norms = RecurrentNorms::recipe_for(normalizer, kHidden);
        o.output = SequenceOutput::last_step;
        m.add(std::make_unique<TimeMajor<T>>());
        m.add(std::make_unique<Lstm<T>>(o, rng));
        m.add(std::make_unique<Linear<T>>(kHidden, 10, Init::xavier, rng));
        if (workload == "lstm_varlen") m.set_length_rule(&varlen_lengths<T>);
        return m;
    }
    throw OptionError("build_model: unknown workload '" + workload +
                      "'; expected bn_mlp (= mlp), relu_mlp, cnn, lstm or lstm_varlen");
}

template LossResult softmax_cross_entropy<float>(const Array<float>&, const std::vector<int>&,
                                                 Array<float>*);
template LossResult softmax_cross_entropy<double>(const Array<double>&, const std::vector<int>&,
                                                  Array<double>*);
template class Optimizer<float>;
template class Optimizer<double>;
template std::vector<std::size_t> varlen_lengths<float>(const Array<float>&);
template std::vector<std::size_t> varlen_lengths<double>(const Array<double>&);
template Sequential<float> build_model<float>(const std::string&, const std::string&,
                                              std::uint64_t);
template Sequential<double> build_model<double>(const std::string&, const std::string&,
                                                std::uint64_t);

}  // namespace normlab::model
