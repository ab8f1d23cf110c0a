// The normlab command-line program.
//   normlab list                      the registered normalizers and their options
//   normlab stress [--preset quick]   the small-batch stress test (docs/stress-test.md)
//   mpirun -np K normlab stress ...   the same grid data-parallel over K ranks
//                                     (docs/distributed.md; builds with normlab_mpi)
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "normlab/bandwidth.hpp"
#include "normlab/errors.hpp"
#include "normlab/registry.hpp"
#include "normlab/runtime.hpp"
#include "normlab/stress.hpp"
#include "normlab_commit.hpp"

#ifdef NORMLAB_CLI_MPI
#include "mpi/agreement.hpp"
#include "normlab/mpi/mpi.hpp"
#endif

namespace {

using normlab::stress::GridOptions;

// The default normalizers: every variant. group_norm at 4 groups divides the MLP's 100 hidden
// units and the CNN's 16, 32 and 64 channels. batch_renorm keeps the paper's r, d clipping and
// relaxation schedule in shape but scaled to runs of a few thousand steps (warm-up 100 steps,
// rmax and dmax at their final values after 1000), and uses batch_norm's moving-average rate,
// so that the two differ only by the r, d correction (docs/stress-test.md).
const std::vector<std::string> kDefaultNormalizers = {
    "identity",
    "batch_norm",
    "batch_renorm(momentum=0.1,warmup=100,rmax_steps=1000,dmax_steps=1000)",
    "layer_norm",
    "instance_norm",
    "group_norm(groups=4)",
    "batch_layer_norm",
    "rms_norm"};

// Splits "a,b(x=1,y=2),c" at the commas outside parentheses, so specs keep their options.
std::vector<std::string> split_specs(const std::vector<std::string>& args) {
    std::vector<std::string> out;
    for (const auto& arg : args) {
        std::string current;
        int depth = 0;
        for (char ch : arg) {
            if (ch == '(') ++depth;
            if (ch == ')') --depth;
            if (ch == ',' && depth == 0) {
                if (!current.empty()) out.push_back(current);
                current.clear();
            } else {
                current += ch;
            }
        }
        if (!current.empty()) out.push_back(current);
    }
    return out;
}

std::string machine_description() {
    std::string model = "unknown CPU";
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);)
        if (line.rfind("model name", 0) == 0) {
            model = line.substr(line.find(':') + 2);
            break;
        }
    long mem_kb = 0;
    std::ifstream meminfo("/proc/meminfo");
    for (std::string line; std::getline(meminfo, line);)
        if (line.rfind("MemTotal:", 0) == 0) mem_kb = std::atol(line.c_str() + 9);
    return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " cores, " +
           std::to_string(mem_kb / (1024 * 1024)) + " GiB";
}

std::string utc_now() {
    const std::time_t t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

std::string report_script() {
    for (const auto& p : {std::filesystem::path(NORMLAB_SOURCE_DIR) / "scripts/stress_report.py",
                          std::filesystem::path("scripts/stress_report.py")})
        if (std::filesystem::exists(p)) return p.string();
    return "";
}

// Presets fill the options the user did not give.
void apply_preset(const std::string& preset, GridOptions& o, const CLI::App& cmd) {
    auto unset = [&](const char* name) { return cmd.get_option(name)->count() == 0; };
    if (preset == "quick") {
        // A minute and a half on 2 cores: the BN paper's MLP, every normalizer, batch 1 to 64,
        // 3 seeds, one pass over 12000 training examples, the whole test set.
        if (unset("--workloads")) o.workloads = {"mlp"};
        if (unset("--seeds")) o.seeds = {0, 1, 2};
        if (unset("--train-examples")) o.train_examples = 12000;
        if (unset("--test-examples")) o.test_examples = 10000;
        if (unset("--epochs")) o.epochs = 1;
    } else if (preset == "paper") {
        // The grid behind docs/results/: the MLP and the CNN (where instance and group
        // statistics are meaningful), 3 seeds, one pass over 12000 training examples.
        if (unset("--workloads")) o.workloads = {"mlp", "cnn"};
        if (unset("--seeds")) o.seeds = {0, 1, 2};
        if (unset("--train-examples")) o.train_examples = 12000;
        if (unset("--test-examples")) o.test_examples = 10000;
        if (unset("--epochs")) o.epochs = 1;
    } else if (preset != "none") {
        throw normlab::OptionError("stress: unknown preset '" + preset +
                                   "'; expected quick, paper or none");
    }
}

// A size as NORMLAB_LAST_LEVEL_CACHE takes it: whole MiB where it is one, else KiB.
std::string cache_size_text(std::size_t bytes) {
    return bytes % (1 << 20) == 0 ? std::to_string(bytes >> 20) + "M"
                                  : std::to_string(bytes >> 10) + "K";
}

// `normlab cache`: the probe's measurement, what the kernels plan for now, and the setting that
// plans for the measured size.
void print_cache_probe(const normlab::CacheProbe& probe, std::size_t detected) {
    const auto mib = [](std::size_t bytes) { return double(bytes) / double(1 << 20); };
    std::printf(
        "The kernels plan for a %.1f MiB last-level cache (%s); the CPU reports %.1f "
        "MiB.\n",
        mib(normlab::last_level_cache_bytes()),
        std::string(normlab::last_level_cache_source()).c_str(), mib(detected));
    std::printf(
        "The backward reduces and applies one at a time the sets whose gradient and input fit "
        "together in a %.1f MiB core cache.\n",
        mib(normlab::core_cache_bytes()));
    std::printf(
        "Sweeps between two arrays, each writing one from the other, %d threads "
        "(median GB/s):\n\n",
        omp_get_max_threads());
    std::printf("%12s %15s %17s %9s\n", "working set", "normal stores", "streaming stores",
                "ratio");
    for (const auto& p : probe.points)
        std::printf("%8.1f MiB %15.1f %17.1f %9.2f\n", mib(p.working_set_bytes),
                    p.kept_bytes_per_second / 1e9, p.streamed_bytes_per_second / 1e9,
                    p.streamed_bytes_per_second / p.kept_bytes_per_second);
    if (probe.plan_bytes >= detected)
        std::printf(
            "\nNormal stores were faster up to the reported size: the kernels' default "
            "plan fits this machine.\n");
    else
        std::printf(
            "\nStreaming stores overtake normal ones at %.1f MiB. To plan for that: "
            "export NORMLAB_LAST_LEVEL_CACHE=%s (or =measure, to measure it on each "
            "start).\n",
            mib(probe.plan_bytes), cache_size_text(probe.plan_bytes).c_str());
}

// What `normlab blas` and `normlab stress` say when OpenBLAS fell back to its SSE3 kernels
// (fitting: the OPENBLAS_CORETYPE that gives this CPU wider ones).
std::string blas_fallback_note(const std::string& fitting) {
    return "OpenBLAS runs its SSE3 (Prescott) kernels on this CPU; OPENBLAS_CORETYPE=" + fitting +
           " in the environment gives it the " + fitting + " ones";
}

nlohmann::json run_meta(std::size_t jobs, int threads_per_run, const std::string& command) {
    // The BLAS kernels set the speed figures of the runs (examples_per_second, wall_seconds).
    const std::string blas = normlab::blas_core_name();
    return {{"commit", NORMLAB_GIT_COMMIT},
            {"machine", machine_description()},
            {"blas", blas.empty() ? "not OpenBLAS" : "OpenBLAS " + blas},
            {"threads", threads_per_run},
            {"jobs", jobs},
            {"command", command},
            {"date", utc_now()}};
}

// The report (report.md, results.csv, figures) from out_dir/results.jsonl.
int write_report(const std::string& out_dir) {
    const std::string results = (std::filesystem::path(out_dir) / "results.jsonl").string();
    const std::string script = report_script();
    if (script.empty()) {
        std::fprintf(stderr,
                     "normlab stress: scripts/stress_report.py not found; results are in %s\n",
                     results.c_str());
        return 1;
    }
    // Debian's interpreter, which python3-matplotlib installs into (a python3 earlier on PATH,
    // e.g. a pyenv one, may not have it).
    const std::string python =
        std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
    const std::string cmd = python + " '" + script + "' '" + out_dir + "'";
    const int rc = std::system(cmd.c_str());
    if (rc != 0) {
        std::fprintf(stderr, "normlab stress: the report script failed (%s); results are in %s\n",
                     cmd.c_str(), results.c_str());
        return 1;
    }
    return 0;
}

// The grid in this process, `jobs` configurations at a time.
int run_stress(const GridOptions& options, const std::string& out_dir, bool report, int threads,
               std::size_t jobs, const std::string& command) {
    const auto runs = normlab::stress::expand_grid(options);
    std::filesystem::create_directories(out_dir);
    normlab::stress::ResultStore store((std::filesystem::path(out_dir) / "results.jsonl").string());
    if (threads > 0) omp_set_num_threads(threads);
    if (jobs == 0) jobs = std::max(1u, std::thread::hardware_concurrency());
    const int threads_per_run = jobs > 1 ? 1 : omp_get_max_threads();
    normlab::set_blas_threads(threads_per_run);
    if (threads_per_run > 1 && normlab::openmp_spins_long())
        std::fprintf(stderr,
                     "normlab stress: OpenMP's idle threads spin for milliseconds after each "
                     "parallel region, beside OpenBLAS's threads; GOMP_SPINCOUNT=1000 in the "
                     "environment makes the CNN's training up to 2x faster (see "
                     "include/normlab/runtime.hpp)\n");
    std::size_t done = 0;
    for (const auto& r : runs)
        done += store.contains(r.key()) ? 1 : 0;
    std::fprintf(stderr,
                 "normlab stress: %zu runs (%zu already in %s), %zu at a time, %d thread%s each\n",
                 runs.size(), done, store.path().c_str(), jobs, threads_per_run,
                 threads_per_run == 1 ? "" : "s");
    normlab::stress::run_grid(
        runs, store,
        [](const normlab::stress::RunConfig& run, normlab::stress::Progress& progress) {
            return normlab::stress::run_configuration(run, progress);
        },
        run_meta(jobs, threads_per_run, command), jobs);
    if (!report) {
        std::printf("results: %s\n", store.path().c_str());
        return 0;
    }
    return write_report(out_dir);
}

#ifdef NORMLAB_CLI_MPI
// Whether an MPI launcher (mpirun, mpiexec, srun) started this process: only then does the
// program initialize MPI, so that a plain `normlab stress` never depends on it.
bool launched_by_mpi() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
        if (std::getenv(name)) return true;
    return false;
}

// Every rank expands the grid from its own command line; they must agree before running it.
void check_same_grid(const std::vector<normlab::stress::RunConfig>& runs,
                     const normlab::mpi::Communicator& comm) {
    std::string keys;
    for (const auto& r : runs)
        keys += r.key() + '\n';
    // The maxima over ranks of a value and of its negation are each other's negation everywhere
    // iff every rank has the same value (the 62-bit fingerprint negates without overflow).
    const std::int64_t h = normlab::mpi::fingerprint(keys.data(), keys.size(), 0);
    std::int64_t range[2] = {h, -h};
    comm.allreduce_max(std::span<std::int64_t>(range, 2));
    if (range[0] != -range[1])
        throw std::runtime_error(
            "the ranks expanded different grids (give every rank the same "
            "options and data)");
}

// Data-parallel (mpirun -np K normlab stress): rank 0 owns results.jsonl and decides which runs
// are pending; every rank runs each of them together, one configuration at a time, and rank 0
// records the results and writes the report.
int run_stress_distributed(GridOptions options, const std::string& out_dir, bool report,
                           int threads, std::size_t jobs, const std::string& command,
                           normlab::mpi::MpiReplicas& replicas) {
    const auto& comm = replicas.communicator();
    if (jobs > 1)
        throw normlab::OptionError(
            "stress: --jobs runs several configurations in one process; under mpirun the ranks "
            "run one configuration together (leave --jobs out)");
    // The ranks share the machine's cores: one thread each unless told otherwise.
    const int threads_per_rank = threads > 0 ? threads : 1;
    omp_set_num_threads(threads_per_rank);
    normlab::set_blas_threads(threads_per_rank);
    options.ranks = std::size_t(comm.size());
    const auto runs = normlab::stress::expand_grid(options);
    check_same_grid(runs, comm);
    nlohmann::json meta = run_meta(1, threads_per_rank, command);
    meta["ranks"] = comm.size();

    std::unique_ptr<normlab::stress::ResultStore> store;
    std::vector<std::int64_t> pending;
    std::string failure;
    if (comm.rank() == 0) {
        try {
            std::filesystem::create_directories(out_dir);
            store = std::make_unique<normlab::stress::ResultStore>(
                (std::filesystem::path(out_dir) / "results.jsonl").string());
            for (std::size_t i = 0; i < runs.size(); ++i)
                if (!store->contains(runs[i].key())) pending.push_back(std::int64_t(i));
            std::fprintf(stderr,
                         "normlab stress: %zu runs (%zu already in %s) on %d ranks, "
                         "data-parallel, %d thread%s each\n",
                         runs.size(), runs.size() - pending.size(), store->path().c_str(),
                         comm.size(), threads_per_rank, threads_per_rank == 1 ? "" : "s");
        } catch (const std::exception& e) {
            failure = e.what();
        }
    }
    std::int64_t header[2] = {std::int64_t(pending.size()), failure.empty() ? 0 : 1};
    comm.broadcast(std::span<std::int64_t>(header, 2), 0);
    if (header[1] != 0)
        throw normlab::IoError(comm.rank() == 0 ? failure : "rank 0 could not open the results");
    pending.resize(std::size_t(header[0]));
    if (!pending.empty()) comm.broadcast(std::span<std::int64_t>(pending), 0);

    normlab::stress::run_pending(
        runs, std::vector<std::size_t>(pending.begin(), pending.end()),
        [&](const normlab::stress::RunConfig& run, normlab::stress::Progress& progress) {
            return normlab::stress::run_configuration(run, progress, &replicas);
        },
        [&](std::size_t i, const normlab::stress::RunResult& result) {
            if (store) store->append(normlab::stress::result_line(runs[i], result, meta));
        },
        1,
        comm.rank() == 0 ? normlab::stress::Progress::Style::lines
                         : normlab::stress::Progress::Style::off);
    if (comm.rank() != 0) return 0;
    if (!report) {
        std::printf("results: %s\n", store->path().c_str());
        return 0;
    }
    return write_report(out_dir);
}
#endif

}  // namespace

int main(int argc, char** argv) {
    normlab::reuse_freed_memory();
#ifdef NORMLAB_CLI_MPI
    // Under an MPI launcher: one replica per rank, and the synchronized normalizers registered.
    std::unique_ptr<normlab::mpi::Session> session;
    std::unique_ptr<normlab::mpi::MpiReplicas> replicas;
    if (launched_by_mpi()) {
        session = std::make_unique<normlab::mpi::Session>(argc, argv);
        replicas = std::make_unique<normlab::mpi::MpiReplicas>(session->world());
    }
    const int rank = replicas ? replicas->rank() : 0, ranks = replicas ? replicas->size() : 1;
#else
    const int rank = 0, ranks = 1;
#endif
    CLI::App app{"normlab: normalization layers, compared on small batches"};
    app.require_subcommand(1);

    auto* list = app.add_subcommand("list", "List the registered normalizers and their options");

    auto* blas = app.add_subcommand(
        "blas",
        "Say which kernels OpenBLAS runs here and whether OPENBLAS_CORETYPE would give "
        "the CPU wider ones");
    bool coretype_only = false;
    blas->add_flag("--coretype", coretype_only,
                   "Print only the OPENBLAS_CORETYPE to set (nothing when none is needed), for "
                   "scripts");

    auto* cache = app.add_subcommand(
        "cache",
        "Measure where streaming stores overtake normal ones on this machine, and the "
        "NORMLAB_LAST_LEVEL_CACHE that plans the kernels for it (about a second)");
    bool plan_only = false;
    cache->add_flag("--plan-only", plan_only,
                    "Print only the size to set (such as 41984K), for scripts");

    auto* stress = app.add_subcommand(
        "stress",
        "Train every normalizer at every batch size and seed; write results.jsonl, "
        "report.md, results.csv and figures to the output folder (resumable)");
    GridOptions o;
    o.normalizers = kDefaultNormalizers;
    o.batch_sizes = {1, 2, 4, 8, 16, 32, 64};
    o.seeds = {0, 1, 2};
    o.workloads = {"mlp"};
    std::vector<std::string> normalizer_args;
    std::string preset = "quick", out_dir = "stress-out";
    bool no_report = false;
    int threads = 0;
    std::size_t jobs = 0;
    stress
        ->add_option("--preset", preset,
                     "quick (1.5 minutes on 2 cores), paper (docs/results/, 45 minutes) or none")
        ->capture_default_str();
    stress->add_option("--normalizers", normalizer_args,
                       "Normalizer specs, comma-separated (commas inside parentheses belong to "
                       "the spec), e.g. batch_norm,group_norm(groups=8)");
    stress->add_option("--batch-sizes", o.batch_sizes, "Batch sizes")
        ->delimiter(',')
        ->capture_default_str();
    stress->add_option("--seeds", o.seeds, "Seeds (weights and batch order)")->delimiter(',');
    stress->add_option("--workloads", o.workloads, "mlp, cnn, lstm, lstm-varlen")->delimiter(',');
    stress->add_option("--data", o.data, "fashion-mnist or synthetic")->capture_default_str();
    stress->add_option("--data-dir", o.data_dir, "Where the Fashion-MNIST IDX files are")
        ->capture_default_str();
    stress->add_option("--train-examples", o.train_examples,
                       "Training examples per run, the same for every batch size");
    stress->add_option("--test-examples", o.test_examples, "Test examples");
    stress
        ->add_option("--validation-examples", o.validation_examples,
                     "Examples held out of the training set to choose the lr (--lr-sweep)")
        ->capture_default_str();
    stress->add_option("--epochs", o.epochs, "Passes over the training examples");
    stress->add_option("--optimizer", o.optimizer, "sgd (momentum 0.9) or adam")
        ->capture_default_str();
    stress->add_option("--lr", o.base_lr, "Learning rate at --base-batch")->capture_default_str();
    stress->add_option("--base-batch", o.base_batch, "Batch size at which --lr applies")
        ->capture_default_str();
    stress->add_option("--lr-rule", o.lr_rule, "linear, sqrt or none")->capture_default_str();
    stress
        ->add_option("--lr-sweep", o.lr_sweep,
                     "Multipliers of the scaled lr tried on the validation split, e.g. 0.25,1,4")
        ->delimiter(',');
    stress->add_option("--out", out_dir, "Output folder")->capture_default_str();
    stress->add_option("--jobs", jobs,
                       "Runs at a time, each on one thread (default: one per core); 1 runs one "
                       "at a time with --threads threads");
    stress->add_option("--threads", threads,
                       "OpenMP threads of a run when --jobs 1 (default: OMP_NUM_THREADS or all)");
    stress->add_flag("--no-report", no_report, "Write results.jsonl only");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    try {
        if (list->parsed()) {
            if (rank == 0) std::cout << normlab::describe_variants();
            return 0;
        }
        if (blas->parsed()) {
            const std::string fitting = normlab::fitting_blas_coretype();
            if (coretype_only) {
                if (!fitting.empty()) std::cout << fitting << "\n";
                return 0;
            }
            const std::string core = normlab::blas_core_name();
            std::cout << "BLAS kernels: "
                      << (core.empty() ? "not OpenBLAS (no core name to report)" : core) << "\n";
            if (!fitting.empty()) std::cout << blas_fallback_note(fitting) << "\n";
            return 0;
        }
        if (cache->parsed()) {
            const std::size_t detected = normlab::detected_last_level_cache_bytes();
            const normlab::CacheProbe probe = normlab::probe_cache(detected);
            if (plan_only)
                std::cout << cache_size_text(probe.plan_bytes) << "\n";
            else
                print_cache_probe(probe, detected);
            return 0;
        }
        if (stress->parsed()) {
            if (rank == 0)
                if (const std::string fitting = normlab::fitting_blas_coretype(); !fitting.empty())
                    std::cerr << "normlab: " << blas_fallback_note(fitting)
                              << " (scripts/run-main.sh sets it)\n";
            // A malformed NORMLAB_LAST_LEVEL_CACHE is refused here, before any run starts.
            normlab::last_level_cache_bytes();
            if (!normalizer_args.empty()) {
                o.normalizers = split_specs(normalizer_args);
            } else if (ranks > 1) {
                // Data-parallel: per-rank BatchNorm and Batch Renorm against their synchronized
                // versions, beside the batch-independent normalizers.
                o.normalizers.insert(o.normalizers.begin() + 3,
                                     {"sync_batch_norm", "sync_" + o.normalizers[2]});
            }
            apply_preset(preset, o, *stress);
            std::string command =
                ranks > 1 ? "mpirun -np " + std::to_string(ranks) + " normlab" : "normlab";
            for (int i = 1; i < argc; ++i)
                command += std::string(" ") + argv[i];
#ifdef NORMLAB_CLI_MPI
            if (replicas)
                return run_stress_distributed(o, out_dir, !no_report, threads, jobs, command,
                                              *replicas);
#endif
            return run_stress(o, out_dir, !no_report, threads, jobs, command);
        }
    } catch (const normlab::OptionError& e) {
        // Options are checked before anything runs, alike on every rank: rank 0 reports.
        if (rank == 0) std::fprintf(stderr, "normlab: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "normlab%s: %s\n",
                     ranks > 1 ? (" (rank " + std::to_string(rank) + ")").c_str() : "", e.what());
#ifdef NORMLAB_CLI_MPI
        // Other ranks may be waiting in a collective for this one: end the whole job.
        if (ranks > 1) MPI_Abort(MPI_COMM_WORLD, 3);
#endif
        return 3;
    }
    return 0;
}
