// Measures what data-parallel training costs in communication per step, on the BN paper's MLP
// (784 → 3 × [linear 100 → norm → ReLU] → linear 10, workload relu_mlp) with a per-rank batch b:
//
//   local        batch_norm, no communication at all (each rank trains alone)
//   averaged     batch_norm + average_gradients (one all-reduce of every gradient per step)
//   synchronized sync_batch_norm + average_gradients (+ 2 all-reduces per normalizer layer)
//
// and times the bare collectives of the same sizes. Prints a Markdown table (docs/distributed.md).
//   mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1 build/tests/mpi/normlab_mpi_step_overhead
//          [steps=300] [per-rank batch=32]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "normlab/model/training.hpp"
#include "normlab/mpi/mpi.hpp"

namespace {

using normlab::Array;
using normlab::Mode;
namespace mpi = normlab::mpi;
namespace model = normlab::model;

struct Timing {
    double median_ms;
    double p90_ms;
};

Timing summarize(std::vector<double> ms) {
    std::sort(ms.begin(), ms.end());
    return {ms[ms.size() / 2], ms[ms.size() * 9 / 10]};
}

// Per-step wall time as the slowest rank sees it (the step ends for everyone when the slowest
// rank's all-reduce completes): the maximum over ranks of each step's time.
template <class Step>
double time_one(const mpi::Communicator& comm, Step&& step) {
    comm.barrier();
    const double start = MPI_Wtime();
    step();
    double elapsed = (MPI_Wtime() - start) * 1e3;
    comm.allreduce_max(std::span<double>(&elapsed, 1));
    return elapsed;
}

// One replica of relu_mlp training on random data of this rank.
class Trainer {
  public:
    Trainer(const mpi::Communicator& comm, const std::string& normalizer, bool average,
            std::size_t batch)
        : comm_(comm),
          average_(average),
          net_(model::build_model<float>("relu_mlp", normalizer, 1)),
          opt_(model::Optimizer<float>::sgd(net_.parameters(), {})),
          gen_(unsigned(comm.rank()) + 1),
          x_(Array<float>::from_shape({batch, 784})),
          labels_(batch) {}

    void step() {
        std::normal_distribution<float> pixel(0.f, 1.f);
        std::uniform_int_distribution<int> label(0, 9);
        for (auto& v : x_)
            v = pixel(gen_);
        for (auto& l : labels_)
            l = label(gen_);
        const double t0 = MPI_Wtime();
        net_.zero_grad();
        const Array<float> logits = net_.forward(x_, Mode::train);
        Array<float> dlogits;
        model::softmax_cross_entropy(logits, labels_, &dlogits);
        net_.backward(dlogits);
        const double t1 = MPI_Wtime();
        if (average_) mpi::average_gradients(net_, comm_);
        const double t2 = MPI_Wtime();
        opt_.step(0.01);
        compute_ms = (t1 - t0) * 1e3;
        average_ms = (t2 - t1) * 1e3;
        update_ms = (MPI_Wtime() - t2) * 1e3;
    }

    // The last step's phases on this rank: forward + backward, average_gradients, SGD update.
    double compute_ms = 0, average_ms = 0, update_ms = 0;

  private:
    mpi::Communicator comm_;
    bool average_;
    model::Sequential<float> net_;
    model::Optimizer<float> opt_;
    std::mt19937 gen_;
    Array<float> x_;
    std::vector<int> labels_;
};

}  // namespace

int main(int argc, char** argv) {
    mpi::Session session(argc, argv);
    const mpi::Communicator comm = session.world();
    const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
    const std::size_t batch = argc > 2 ? std::size_t(std::atoi(argv[2])) : 32;
    if (steps < 1 || batch < 2) {
        if (comm.rank() == 0)
            std::fprintf(stderr, "usage: step_overhead [steps >= 1] [per-rank batch >= 2]\n");
        return 2;
    }

    auto probe = model::build_model<float>("relu_mlp", "batch_norm", 1);
    std::size_t params = 0;
    for (const auto& p : probe.parameters())
        params += p.value->size();
    const std::size_t norm_layers = 3, channels = 100;

    // The three modes take turns step by step, so that load from other programs on the machine
    // falls on all of them alike.
    Trainer local_net(comm, "batch_norm", false, batch);
    Trainer averaged_net(comm, "batch_norm", true, batch);
    Trainer synced_net(comm, "sync_batch_norm", true, batch);
    std::vector<double> local_ms, averaged_ms, synced_ms, compute_ms, average_call_ms, update_ms;
    std::vector<double> grad_ms, fwd_ms, bwd_ms, check_ms;
    std::vector<float> grad_buffer(params, 1.f);
    std::vector<double> fwd_buffer(3 * channels, 1.0), bwd_buffer(2 * channels, 1.0);
    std::vector<std::int64_t> check_buffer(12, 1);
    for (int i = 0; i < steps + 10; ++i) {
        const double l = time_one(comm, [&] { local_net.step(); });
        const double a = time_one(comm, [&] { averaged_net.step(); });
        const double s = time_one(comm, [&] { synced_net.step(); });
        double phases[3] = {averaged_net.compute_ms, averaged_net.average_ms,
                            averaged_net.update_ms};
        comm.allreduce_max(std::span<double>(phases, 3));
        const double g = time_one(comm, [&] { comm.allreduce_sum(std::span<float>(grad_buffer)); });
        const double f = time_one(comm, [&] { comm.allreduce_sum(std::span<double>(fwd_buffer)); });
        const double b = time_one(comm, [&] { comm.allreduce_sum(std::span<double>(bwd_buffer)); });
        const double c =
            time_one(comm, [&] { comm.allreduce_max(std::span<std::int64_t>(check_buffer)); });
        if (i < 10) continue;  // warm-up
        local_ms.push_back(l);
        averaged_ms.push_back(a);
        synced_ms.push_back(s);
        compute_ms.push_back(phases[0]);
        average_call_ms.push_back(phases[1]);
        update_ms.push_back(phases[2]);
        grad_ms.push_back(g);
        fwd_ms.push_back(f);
        bwd_ms.push_back(b);
        check_ms.push_back(c);
    }
    const Timing local = summarize(local_ms), averaged = summarize(averaged_ms),
                 synced = summarize(synced_ms), average_call = summarize(average_call_ms),
                 compute = summarize(compute_ms), update = summarize(update_ms);
    const Timing grads = summarize(grad_ms), bn_fwd = summarize(fwd_ms), bn_bwd = summarize(bwd_ms),
                 check = summarize(check_ms);

    if (comm.rank() == 0) {
        std::printf(
            "relu_mlp, %d ranks x batch %zu (global %zu), %d timed steps, "
            "OMP_NUM_THREADS=%s\n\n",
            comm.size(), batch, batch * std::size_t(comm.size()), steps,
            std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "unset");
        std::printf("| per step | median ms | p90 ms |\n|---|---:|---:|\n");
        auto row = [](const char* what, const Timing& t) {
            std::printf("| %s | %.3f | %.3f |\n", what, t.median_ms, t.p90_ms);
        };
        row("local: batch_norm, no communication", local);
        row("averaged: batch_norm + average_gradients", averaged);
        row("synchronized: sync_batch_norm + average_gradients", synced);
        row("averaged steps, phase: forward + backward (slowest rank)", compute);
        row("averaged steps, phase: average_gradients (slowest rank)", average_call);
        row("averaged steps, phase: SGD update (slowest rank)", update);
        std::printf(
            "\n| one collective | bytes per rank | median ms | p90 ms |\n"
            "|---|---:|---:|---:|\n");
        auto coll = [](const char* what, std::size_t bytes, const Timing& t) {
            std::printf("| %s | %zu | %.4f | %.4f |\n", what, bytes, t.median_ms, t.p90_ms);
        };
        coll("gradient all-reduce (float sum)", params * 4, grads);
        coll("BN forward: count, mean, M2 of 100 channels", 3 * channels * 8, bn_fwd);
        coll("BN backward: sum dy, sum dy*xhat of 100 channels", 2 * channels * 8, bn_bwd);
        coll("agreement check (int64 max)", 12 * 8, check);
        std::printf(
            "\ncommunication overhead per step: %.3f ms (synchronized - local), of which "
            "gradient averaging %.3f ms and %zu synchronized normalizer layers %.3f ms\n",
            synced.median_ms - local.median_ms, averaged.median_ms - local.median_ms, norm_layers,
            synced.median_ms - averaged.median_ms);
    }
    return 0;
}
