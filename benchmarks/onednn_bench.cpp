// oneDNN's batch and layer normalization primitives on the same shapes and passes as
// normalizer_bench, each in the plain channel-first layout our users pass ("onednn_plain") and
// in oneDNN's own fastest layout ("onednn_blocked": nChw16c with AVX-512, nChw8c with AVX2, for 4-D
// batch norm). Memory is allocated and primitives are created once, outside the timed loop —
// oneDNN's best case. Layer normalization in oneDNN normalizes over the last dimension, so 4-D
// shapes are given to it as (N, C·H·W) rows (its scale and shift are then per element, ours per
// channel: the same traffic, a slightly different layer). Every case also runs paired with
// normlab's layer of the same name, the two timed in turn in this process ("paired/...",
// run_paired).
#include <oneapi/dnnl/dnnl.hpp>

#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "bench_common.hpp"
#include "normlab/runtime.hpp"
#include "normlab_case.hpp"

namespace normlab::bench {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

dnnl::engine& cpu() {
    static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
}

memory filled(const memory::desc& md, float value) {
    memory m(md, cpu());
    float* p = static_cast<float*>(m.get_data_handle());
    const std::size_t n = md.get_size() / sizeof(float);
    for (std::size_t i = 0; i < n; ++i)
        p[i] = value + 0.001f * float(i % 977);
    return m;
}

memory::dims dims_of(const ShapeCase& shape, bool rows) {
    if (rows) {
        const auto n = memory::dim(shape.dims[0]);
        return {n, memory::dim(shape.elements()) / n};
    }
    memory::dims d;
    for (auto v : shape.dims)
        d.push_back(memory::dim(v));
    return d;
}

// oneDNN's blocked layout for this machine's vector width: its jit kernels block channels by 16
// with AVX-512 and by 8 with AVX2 (nChw16c on an AVX2 machine falls back to the reference code).
tag blocked_tag() {
    return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core ? tag::nChw16c : tag::nChw8c;
}

tag plain_tag(std::size_t rank) {
    return rank == 2 ? tag::nc : rank == 3 ? tag::ncw : tag::nchw;
}

using dnnl::normalization_flags;
using dnnl::prop_kind;

// oneDNN's primitive for one (shape, pass, layout), created once with its memory: call() times
// one execution after its untimed preparation, as NormlabCase::call times normlab's.
template <class Fwd, class Bwd>
class OnednnCase {
  public:
    OnednnCase(const ShapeCase& shape, Pass pass, bool layer, bool blocked)
        : pass_(pass), stream_(cpu()) {
        const memory::dims dims = dims_of(shape, layer);
        const tag t = blocked ? blocked_tag() : plain_tag(dims.size());
        const memory::desc md(dims, memory::data_type::f32, t);
        const auto scale_shift = normalization_flags::use_scale | normalization_flags::use_shift;
        // Batch norm infers with the running statistics; layer norm computes its statistics in
        // inference as in training, as normlab's layer_norm and PyTorch's do.
        const auto flags = pass == Pass::fwd_eval && !layer
                               ? scale_shift | normalization_flags::use_global_stats
                               : scale_shift;
        const float eps = 1e-5f;
        const auto kind =
            pass == Pass::fwd_eval ? prop_kind::forward_inference : prop_kind::forward_training;
        typename Fwd::primitive_desc fwd_pd(typename Fwd::desc(kind, md, eps, flags), cpu());
        // Per channel for batch norm; per element of the normalized row for layer norm.
        const memory::desc param_md({dims[1]}, memory::data_type::f32, tag::x);
        memory src = filled(fwd_pd.src_desc(), 1.0f), dst(fwd_pd.dst_desc(), cpu());
        memory mean = filled(fwd_pd.mean_desc(), 0.5f), var = filled(fwd_pd.variance_desc(), 1.0f);
        memory scale = filled(param_md, 1.0f), shift = filled(param_md, 0.0f);
        fwd_args_ = {{DNNL_ARG_SRC, src},      {DNNL_ARG_DST, dst},     {DNNL_ARG_MEAN, mean},
                     {DNNL_ARG_VARIANCE, var}, {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}};
        fwd_ = Fwd(fwd_pd);
        run_forward();
        // The input a training pass is handed anew each call, as normlab's is (copy_by_threads).
        src_data_ = static_cast<float*>(src.get_data_handle());
        input_.assign(src_data_, src_data_ + fwd_pd.src_desc().get_size() / sizeof(float));
        if (pass != Pass::bwd) return;
        typename Bwd::desc bwd_desc(prop_kind::backward, md, md, eps, scale_shift);
        typename Bwd::primitive_desc bwd_pd(bwd_desc, cpu(), fwd_pd);
        memory diff_dst = filled(bwd_pd.diff_dst_desc(), 0.1f),
               diff_src(bwd_pd.diff_src_desc(), cpu());
        memory diff_scale(param_md, cpu()), diff_shift(param_md, cpu());
        bwd_args_ = {{DNNL_ARG_SRC, src},
                     {DNNL_ARG_MEAN, mean},
                     {DNNL_ARG_VARIANCE, var},
                     {DNNL_ARG_DIFF_DST, diff_dst},
                     {DNNL_ARG_SCALE, scale},
                     {DNNL_ARG_SHIFT, shift},
                     {DNNL_ARG_DIFF_SRC, diff_src},
                     {DNNL_ARG_DIFF_SCALE, diff_scale},
                     {DNNL_ARG_DIFF_SHIFT, diff_shift}};
        bwd_ = Bwd(bwd_pd);
    }

    // Training passes are handed their input anew; each backward follows an untimed training
    // forward on it. Inference reads the same input call after call, in every implementation.
    double call() {
        if (pass_ != Pass::fwd_eval) hand_over_input();
        if (pass_ == Pass::bwd) run_forward();
        const auto t0 = std::chrono::steady_clock::now();
        if (pass_ == Pass::bwd) {
            bwd_.execute(stream_, bwd_args_);
            stream_.wait();
        } else {
            run_forward();
        }
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }

  private:
    void hand_over_input() { copy_by_threads(input_.data(), src_data_, input_.size()); }
    void run_forward() {
        fwd_.execute(stream_, fwd_args_);
        stream_.wait();
    }

    Pass pass_;
    dnnl::stream stream_;
    std::unordered_map<int, memory> fwd_args_, bwd_args_;
    Fwd fwd_;
    Bwd bwd_;
    float* src_data_ = nullptr;
    std::vector<float> input_;
};

template <class Fwd, class Bwd>
void run(benchmark::State& state, const ShapeCase& shape, Pass pass, bool layer, bool blocked) {
    OnednnCase<Fwd, Bwd> onednn_case(shape, pass, layer, blocked);
    CallTimes calls;
    time_calls(state, calls, [&] { return onednn_case.call(); });
    add_traffic_counters(state, minimal_bytes(shape, pass), calls);
}

// The same case alternated with normlab's layer of the same name on the same shape
// (time_abba), in this one process: the two medians under the same drift of the machine and
// `paired_ratio`, oneDNN's median over normlab's (above 1: normlab is faster). Separate runs of
// separate programs (the `onednn_*` and `normlab/` cases) meet the machine at different moments,
// and on a shared VM the same case moved 1.3-2x between them.
template <class Fwd, class Bwd>
void run_paired(benchmark::State& state, const ShapeCase& shape, Pass pass, bool layer,
                bool blocked) {
    OnednnCase<Fwd, Bwd> onednn_case(shape, pass, layer, blocked);
    NormlabCase normlab_case(layer ? "layer_norm" : "batch_norm", shape);
    time_paired(
        state, "onednn", [&] { return onednn_case.call(); },
        [&] { return normlab_case.call(pass); });
}

// Each case alone (`<impl>/<layer>/<shape>/<pass>`), and paired with normlab's
// (`paired/<impl>/...`, run_paired).
template <class Fwd, class Bwd>
void register_case(const std::string& impl, const std::string& layer_name, const ShapeCase& shape,
                   Pass pass, bool blocked) {
    const bool layer = layer_name == "layer_norm";
    const std::string name = impl + "/" + layer_name + "/" + shape.name + "/" + pass_name(pass);
    for (bool paired : {false, true})
        register_timed(paired ? "paired/" + name : name,
                       [shape, pass, layer, blocked, paired](benchmark::State& s) {
                           if (paired)
                               run_paired<Fwd, Bwd>(s, shape, pass, layer, blocked);
                           else
                               run<Fwd, Bwd>(s, shape, pass, layer, blocked);
                       });
}

void register_all() {
    for (const auto& shape : shape_suite()) {
        for (Pass pass : {Pass::fwd_train, Pass::fwd_eval, Pass::bwd}) {
            for (bool blocked : {false, true}) {
                if (blocked && shape.dims.size() != 4) continue;  // dense shapes have one layout
                register_case<dnnl::batch_normalization_forward,
                              dnnl::batch_normalization_backward>(
                    blocked ? "onednn_blocked" : "onednn_plain", "batch_norm", shape, pass,
                    blocked);
            }
            register_case<dnnl::layer_normalization_forward, dnnl::layer_normalization_backward>(
                "onednn_plain", "layer_norm", shape, pass, false);
        }
    }
}

}  // namespace
}  // namespace normlab::bench

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    normlab::bench::lock_memory();
    // As normalizer_bench, for the paired cases' normlab calls.
    normlab::reuse_freed_memory();
    benchmark::AddCustomContext(
        "onednn_blocked_layout",
        normlab::bench::blocked_tag() == dnnl::memory::format_tag::nChw16c ? "nChw16c" : "nChw8c");
    normlab::bench::register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
