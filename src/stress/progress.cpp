#include <unistd.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <thread>

#include "normlab/stress.hpp"

namespace normlab::stress {
namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::string duration_text(double seconds) {
    char buf[32];
    if (seconds < 90)
        std::snprintf(buf, sizeof buf, "%.0fs", seconds);
    else if (seconds < 5400)
        std::snprintf(buf, sizeof buf, "%.0fm", seconds / 60);
    else
        std::snprintf(buf, sizeof buf, "%.1fh", seconds / 3600);
    return buf;
}

}  // namespace

Progress::Progress(std::size_t total_runs, std::size_t jobs, Style style)
    : enabled_(style == Style::terminal && ::isatty(STDERR_FILENO) != 0),
      lines_(style == Style::lines),
      total_(total_runs),
      jobs_(std::max<std::size_t>(jobs, 1)),
      started_(now()) {}

void Progress::start_run(std::size_t index, const RunConfig& run) {
    const std::lock_guard lock(mutex_);
    index_ = index;
    run_started_ = now();
    label_ = run.workload + " " + run.normalizer + " b=" + std::to_string(run.batch_size) +
             " seed=" + std::to_string(run.seed);
    update_locked(0.0, -1.0);
}

void Progress::update(double fraction, double loss) {
    const std::lock_guard lock(mutex_);
    update_locked(fraction, loss);
}

void Progress::update_locked(double fraction, double loss) {
    if (!enabled_) return;
    const double elapsed_run = now() - run_started_;
    // Remaining runs are estimated from the runs finished in this session.
    const double per_run = finished_ ? finished_seconds_ / double(finished_)
                                     : (fraction > 0.05 ? elapsed_run / fraction : 0.0);
    const double eta = per_run * (double(total_ - index_) - fraction) / double(jobs_);
    char buf[256];
    std::snprintf(buf, sizeof buf, "run %zu/%zu  %s  %3.0f%%%s%s", index_ + 1, total_,
                  label_.c_str(), 100 * fraction,
                  loss >= 0 ? ("  loss " + std::to_string(loss).substr(0, 6)).c_str() : "",
                  per_run > 0 ? ("  ETA " + duration_text(eta)).c_str() : "");
    draw(buf);
}

void Progress::finish_run(const RunResult& result) {
    const std::lock_guard lock(mutex_);
    ++finished_;
    finished_seconds_ += now() - run_started_;
    if (lines_) {
        std::fprintf(stderr, "run %zu/%zu  %s  %s  test accuracy %.4f  %.1fs\n", index_ + 1, total_,
                     label_.c_str(), result.status.c_str(), result.test_accuracy,
                     result.wall_seconds);
        std::fflush(stderr);
    }
}

void Progress::done() {
    const std::lock_guard lock(mutex_);
    if (!enabled_) return;
    draw("");
    std::fprintf(stderr, "%zu runs in %s\n", finished_, duration_text(now() - started_).c_str());
}

void Progress::draw(const std::string& text) {
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    std::fflush(stderr);
}

nlohmann::json result_line(const RunConfig& run, const RunResult& result,
                           const nlohmann::json& meta) {
    return {{"key", run.key()},
            {"config", run.to_json()},
            {"result", result.to_json()},
            {"meta", meta}};
}

void run_pending(const std::vector<RunConfig>& runs, const std::vector<std::size_t>& pending,
                 const RunFunction& run_one, const RecordFunction& record, std::size_t jobs,
                 Progress::Style style) {
    jobs = std::clamp<std::size_t>(jobs, 1, std::max<std::size_t>(pending.size(), 1));
    Progress progress(runs.size(), jobs, style);
    std::mutex record_mutex;
    auto run_at = [&](std::size_t i) {
        progress.start_run(i, runs[i]);
        RunResult result;
        try {
            result = run_one(runs[i], progress);
        } catch (const std::exception& e) {
            result.status = "error";
            result.message = e.what();
        }
        {
            const std::lock_guard lock(record_mutex);
            record(i, result);
        }
        progress.finish_run(result);
    };

    if (jobs == 1) {
        for (std::size_t i : pending)
            run_at(i);
    } else {
        std::atomic<std::size_t> next{0};
        std::exception_ptr failure;
        std::mutex failure_mutex;
        std::vector<std::thread> workers;
        for (std::size_t w = 0; w < jobs; ++w)
            workers.emplace_back([&] {
                omp_set_num_threads(1);  // this thread's OpenMP regions: one run, one core
                for (std::size_t k = next++; k < pending.size(); k = next++) {
                    try {
                        run_at(pending[k]);
                    } catch (...) {  // not a run's failure (e.g. the results file): stop all
                        const std::lock_guard lock(failure_mutex);
                        if (!failure) failure = std::current_exception();
                        next = pending.size();
                        return;
                    }
                }
            });
        for (auto& t : workers)
            t.join();
        if (failure) std::rethrow_exception(failure);
    }
    progress.done();
}

std::size_t run_grid(const std::vector<RunConfig>& runs, ResultStore& store,
                     const RunFunction& run_one, const nlohmann::json& meta, std::size_t jobs) {
    std::vector<std::size_t> pending;
    for (std::size_t i = 0; i < runs.size(); ++i)
        if (!store.contains(runs[i].key())) pending.push_back(i);
    run_pending(
        runs, pending, run_one,
        [&](std::size_t i, const RunResult& result) {
            store.append(result_line(runs[i], result, meta));
        },
        jobs);
    return pending.size();
}

}  // namespace normlab::stress
