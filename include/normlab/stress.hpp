#pragma once
// The small-batch stress test: a grid of normalizer × batch size × seed × workload runs under one
// fair protocol (docs/stress-test.md), each result written as one JSON line the moment it
// finishes, so an interrupted grid resumes where it stopped.

#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace normlab::train {
class Replicas;
}

namespace normlab::stress {

struct GridOptions {
    std::vector<std::string> normalizers;
    std::vector<std::size_t> batch_sizes;
    std::vector<unsigned> seeds;
    std::vector<std::string> workloads;  // mlp, cnn, lstm, lstm-varlen
    std::string data = "fashion-mnist";  // or synthetic
    std::string data_dir = "/usr/share/datasets/fashion-mnist";
    std::size_t train_examples = 6000;  // every run sees this many, whatever its batch size
    std::size_t test_examples = 2000;
    std::size_t validation_examples = 0;  // held out of the training set, for --lr-sweep
    std::size_t epochs = 1;
    std::string optimizer = "sgd";  // sgd (momentum 0.9) or adam
    double base_lr = 0.05;          // at base_batch
    std::size_t base_batch = 32;
    std::string lr_rule = "linear";  // linear, sqrt or none (GN paper: linear)
    std::vector<double> lr_sweep;    // multipliers tried on the validation split; empty: none
    bool skip_undefined = true;      // drop (normalizer, workload) pairs that cannot work
    // Data-parallel replicas (mpirun -np K normlab stress): batch_sizes are per replica, the
    // global batch is ranks·b, and the lr rule scales with the global batch.
    std::size_t ranks = 1;
};

// One cell of the grid, fully determined: rerunning it reproduces the result.
struct RunConfig {
    std::string workload;
    std::string data;
    std::string normalizer;
    std::size_t batch_size = 0;
    unsigned seed = 0;
    double lr = 0;
    std::size_t train_examples = 0;
    std::size_t test_examples = 0;
    std::size_t validation_examples = 0;
    std::size_t epochs = 1;
    std::string optimizer;
    std::vector<double> lr_sweep;
    std::string data_dir;
    std::size_t ranks = 1;  // data-parallel replicas; batch_size is each one's batch

    std::size_t global_batch() const { return batch_size * ranks; }
    // Identifies the run in results.jsonl (everything that changes the result).
    std::string key() const;
    nlohmann::json to_json() const;
};

struct RunResult {
    std::string status = "ok";  // ok | diverged | error
    std::string message;        // why, when not ok
    double lr = 0;              // the learning rate used (after a sweep, the chosen one)
    double test_accuracy = 0;   // eval mode (running statistics where kept)
    double test_loss = 0;
    double test_accuracy_train_mode = 0;  // batch statistics, batches of the run's size
    double final_train_loss = 0;
    std::vector<double> loss_curve;  // mean training loss per tenth of the run
    double examples_per_second = 0;
    double wall_seconds = 0;
    nlohmann::json to_json() const;
};

// Lr for a batch size under the rule: linear base·b/B, sqrt base·sqrt(b/B), none base.
double scaled_lr(const GridOptions& options, std::size_t batch_size);

// Expands and validates the grid before anything runs: unknown normalizers or options, batch
// size 0, unknown workloads or data, and normalizers undefined for a workload are OptionErrors
// (undefined pairs are dropped instead when skip_undefined, e.g. instance_norm on the MLP).
std::vector<RunConfig> expand_grid(const GridOptions& options);

// The model builder's name of a stress workload ("lstm-varlen" -> "lstm_varlen").
std::string model_workload(const std::string& workload);

// Whether `normalizer` can run on `workload` at all, and if not, why.
std::string undefined_reason(const std::string& normalizer, const std::string& workload);

// Appends one JSON object per line and flushes it to disk before returning. A last line cut
// short by a crash is ignored on loading and cut off before the next append.
class ResultStore {
  public:
    explicit ResultStore(std::string path);
    bool contains(const std::string& key) const;
    void append(const nlohmann::json& line);
    const std::vector<nlohmann::json>& lines() const { return lines_; }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
    std::vector<nlohmann::json> lines_;
    std::optional<std::size_t> truncate_to_;  // an incomplete last line starts here
};

// Progress of a grid on a terminal: "run k/n  spec b=8 seed=1  epoch 1/2  loss 0.53  ETA 3m".
// Safe to call from several threads (with
// concurrent runs it shows the one that reported last, and the ETA divides by `jobs`).
class Progress {
  public:
    // terminal: one redrawn status line when standard error is a terminal, else nothing.
    // lines: one line per finished run (logs, mpirun's forwarded output). off: nothing.
    enum class Style { terminal, lines, off };
    explicit Progress(std::size_t total_runs, std::size_t jobs = 1, Style style = Style::terminal);
    void start_run(std::size_t index, const RunConfig& run);
    void update(double fraction_of_run, double loss);
    void finish_run(const RunResult& result);
    void done();

  private:
    void draw(const std::string& text);
    void update_locked(double fraction_of_run, double loss);
    std::mutex mutex_;
    bool enabled_;
    bool lines_;
    std::size_t total_;
    std::size_t jobs_;
    std::size_t index_ = 0;
    std::string label_;
    double started_ = 0;  // seconds, steady clock
    double run_started_ = 0;
    std::size_t finished_ = 0;
    double finished_seconds_ = 0;
};

using RunFunction = std::function<RunResult(const RunConfig&, Progress&)>;

// Trains and evaluates one cell of the grid (the protocol of docs/stress-test.md): the first
// train_examples of the training set (the next validation_examples are the validation split of
// an lr sweep), the first test_examples of the test set, the seed for weights and batch order.
// A run that diverges or cannot train (BatchNorm at batch 1) is a result, not an exception.
// Data sets are loaded once per process and shared by later runs. With replicas (as many as
// run.ranks), the run is data-parallel and every replica must call this with the same run; all
// of them return the same result.
RunResult run_configuration(const RunConfig& run, Progress& progress,
                            train::Replicas* replicas = nullptr);

// Runs every configuration whose key is not in the store yet, appending each result as it
// finishes; returns how many ran. `meta` (commit, machine, command) is stored with each line.
// jobs > 1 runs that many configurations at once, each on one thread (small models at small
// batches use cores better side by side than split across threads); lines are then appended in
// the order runs finish. run_one must be safe to call concurrently (run_configuration is).
std::size_t run_grid(const std::vector<RunConfig>& runs, ResultStore& store,
                     const RunFunction& run_one, const nlohmann::json& meta, std::size_t jobs = 1);

// The core of run_grid: runs the configurations at the indices `pending` and hands each result
// to `record` (serialized; a throw from it stops the grid). Data-parallel grids call it on every
// replica with the same pending list, and only replica 0 records.
using RecordFunction = std::function<void(std::size_t index, const RunResult&)>;
void run_pending(const std::vector<RunConfig>& runs, const std::vector<std::size_t>& pending,
                 const RunFunction& run_one, const RecordFunction& record, std::size_t jobs = 1,
                 Progress::Style style = Progress::Style::terminal);

// The JSON line run_grid stores for a result.
nlohmann::json result_line(const RunConfig& run, const RunResult& result,
                           const nlohmann::json& meta);

}  // namespace normlab::stress
