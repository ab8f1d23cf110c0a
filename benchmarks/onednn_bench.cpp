// oneDNN's batch and layer normalization primitives on the same shapes and passes as
// normalizer_bench, each in the plain channel-first layout our users pass ("onednn_plain") and
// in oneDNN's own fastest layout ("onednn_blocked": nChw16c with AVX-512, nChw8c with AVX2, for 4-D
// batch norm). Memory is allocated and primitives are created once, outside the timed loop —
// oneDNN's best case. Layer normalization in oneDNN normalizes over the last dimension, so 4-D
// shapes are given to it as (N, C·H·W) rows (its scale and shift are then per element, ours per
// channel: the same traffic, a slightly different layer).
#include <oneapi/dnnl/dnnl.hpp>

#include <vector>

#include "bench_common.hpp"

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

template <class Fwd, class Bwd>
void run(benchmark::State& state, const ShapeCase& shape, Pass pass, bool layer, bool blocked) {
    dnnl::stream stream(cpu());
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
    std::unordered_map<int, memory> fwd_args = {{DNNL_ARG_SRC, src},     {DNNL_ARG_DST, dst},
                                                {DNNL_ARG_MEAN, mean},   {DNNL_ARG_VARIANCE, var},
                                                {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}};
    Fwd fwd(fwd_pd);
    fwd.execute(stream, fwd_args);
    stream.wait();
    // The input a training pass is handed anew each call, as normlab's is (copy_by_threads).
    float* src_data = static_cast<float*>(src.get_data_handle());
    const std::vector<float> input(src_data,
                                   src_data + fwd_pd.src_desc().get_size() / sizeof(float));
    const auto hand_over_input = [&] { copy_by_threads(input.data(), src_data, input.size()); };

    CallTimes calls;
    const auto run_forward = [&] {
        fwd.execute(stream, fwd_args);
        stream.wait();
    };
    if (pass == Pass::fwd_train) {
        time_calls(state, calls, hand_over_input, run_forward);
    } else if (pass == Pass::fwd_eval) {
        // Inference reads the same input call after call, in every implementation.
        time_calls(
            state, calls, [] {}, run_forward);
    } else {
        typename Bwd::desc bwd_desc(prop_kind::backward, md, md, eps, scale_shift);
        typename Bwd::primitive_desc bwd_pd(bwd_desc, cpu(), fwd_pd);
        memory diff_dst = filled(bwd_pd.diff_dst_desc(), 0.1f),
               diff_src(bwd_pd.diff_src_desc(), cpu());
        memory diff_scale(param_md, cpu()), diff_shift(param_md, cpu());
        std::unordered_map<int, memory> bwd_args = {{DNNL_ARG_SRC, src},
                                                    {DNNL_ARG_MEAN, mean},
                                                    {DNNL_ARG_VARIANCE, var},
                                                    {DNNL_ARG_DIFF_DST, diff_dst},
                                                    {DNNL_ARG_SCALE, scale},
                                                    {DNNL_ARG_SHIFT, shift},
                                                    {DNNL_ARG_DIFF_SRC, diff_src},
                                                    {DNNL_ARG_DIFF_SCALE, diff_scale},
                                                    {DNNL_ARG_DIFF_SHIFT, diff_shift}};
        Bwd bwd(bwd_pd);
        // Each backward follows an untimed training forward on a freshly handed-over input.
        const auto forward_before = [&] {
            hand_over_input();
            run_forward();
        };
        time_calls(state, calls, forward_before, [&] {
            bwd.execute(stream, bwd_args);
            stream.wait();
        });
    }
    add_traffic_counters(state, minimal_bytes(shape, pass), calls);
}

void register_all() {
    for (const auto& shape : shape_suite()) {
        for (Pass pass : {Pass::fwd_train, Pass::fwd_eval, Pass::bwd}) {
            for (bool blocked : {false, true}) {
                if (blocked && shape.dims.size() != 4) continue;  // dense shapes have one layout
                const std::string impl = blocked ? "onednn_blocked" : "onednn_plain";
                benchmark::RegisterBenchmark(
                    (impl + "/batch_norm/" + shape.name + "/" + pass_name(pass)).c_str(),
                    [shape, pass, blocked](benchmark::State& s) {
                        run<dnnl::batch_normalization_forward, dnnl::batch_normalization_backward>(
                            s, shape, pass, false, blocked);
                    })
                    ->UseManualTime()
                    ->Unit(benchmark::kMicrosecond)
                    ->MinTime(0.1);
            }
            benchmark::RegisterBenchmark(
                ("onednn_plain/layer_norm/" + shape.name + "/" + pass_name(pass)).c_str(),
                [shape, pass](benchmark::State& s) {
                    run<dnnl::layer_normalization_forward, dnnl::layer_normalization_backward>(
                        s, shape, pass, true, false);
                })
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond)
                ->MinTime(0.1);
        }
    }
}

}  // namespace
}  // namespace normlab::bench

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    normlab::bench::lock_memory();
    benchmark::AddCustomContext(
        "onednn_blocked_layout",
        normlab::bench::blocked_tag() == dnnl::memory::format_tag::nChw16c ? "nChw16c" : "nChw8c");
    normlab::bench::register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
