#include <unistd.h>

#include <chrono>
#include <cstdio>

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

Progress::Progress(std::size_t total_runs)
    : enabled_(::isatty(STDERR_FILENO) != 0), total_(total_runs), started_(now()) {}

void Progress::start_run(std::size_t index, const RunConfig& run) {
    index_ = index;
    run_started_ = now();
    label_ = run.workload + " " + run.normalizer + " b=" + std::to_string(run.batch_size) +
             " seed=" + std::to_string(run.seed);
    update(0.0, -1.0);
}

void Progress::update(double fraction, double loss) {
    if (!enabled_) return;
    const double elapsed_run = now() - run_started_;
    // Remaining runs are estimated from the runs finished in this session.
    const double per_run = finished_ ? finished_seconds_ / double(finished_)
                                     : (fraction > 0.05 ? elapsed_run / fraction : 0.0);
    const double eta = per_run * (double(total_ - index_) - fraction);
    char buf[256];
    std::snprintf(buf, sizeof buf, "run %zu/%zu  %s  %3.0f%%%s%s", index_ + 1, total_,
                  label_.c_str(), 100 * fraction,
                  loss >= 0 ? ("  loss " + std::to_string(loss).substr(0, 6)).c_str() : "",
                  per_run > 0 ? ("  ETA " + duration_text(eta)).c_str() : "");
    draw(buf);
}

void Progress::finish_run(const RunResult& result) {
    ++finished_;
    finished_seconds_ += now() - run_started_;
    (void)result;
}

void Progress::done() {
    if (!enabled_) return;
    draw("");
    std::fprintf(stderr, "%zu runs in %s\n", finished_, duration_text(now() - started_).c_str());
}

void Progress::draw(const std::string& text) {
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    std::fflush(stderr);
}

std::size_t run_grid(const std::vector<RunConfig>& runs, ResultStore& store,
                     const RunFunction& run_one, const nlohmann::json& meta) {
    Progress progress(runs.size());
    std::size_t ran = 0;
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const std::string key = runs[i].key();
        if (store.contains(key)) continue;
        progress.start_run(i, runs[i]);
        RunResult result;
        try {
            result = run_one(runs[i], progress);
        } catch (const std::exception& e) {
            result.status = "error";
            result.message = e.what();
        }
        store.append({{"key", key}, {"config", runs[i].to_json()}, {"result", result.to_json()},
                      {"meta", meta}});
        progress.finish_run(result);
        ++ran;
    }
    progress.done();
    return ran;
}

}  // namespace normlab::stress
