// The stress-test harness itself: grid validation before any run, the learning-rate rule,
// results that survive a crash mid-write, and resuming an interrupted grid.
#include <fstream>
#include <map>

#include <gtest/gtest.h>

#include "scratch_path.hpp"

#include "normlab/errors.hpp"
#include "normlab/stress.hpp"

namespace normlab::stress {
namespace {

GridOptions small_grid() {
    GridOptions o;
    o.normalizers = {"batch_norm", "layer_norm", "instance_norm"};
    o.batch_sizes = {1, 4};
    o.seeds = {0, 1};
    o.workloads = {"mlp"};
    o.data = "synthetic";
    o.train_examples = 64;
    o.test_examples = 32;
    return o;
}

std::string scratch(const std::string& name) {
    return testing::scratch_path("normlab_stress_", name);
}

std::string error_of(const GridOptions& o) {
    try {
        expand_grid(o);
    } catch (const OptionError& e) {
        return e.what();
    }
    return "no error";
}

TEST(StressGrid, ExpandsEveryCellAndDropsUndefinedPairs) {
    const auto runs = expand_grid(small_grid());
    EXPECT_EQ(runs.size(), 2u * 2u * 2u);  // instance_norm is undefined on the MLP
    for (const auto& r : runs)
        EXPECT_NE(r.normalizer, "instance_norm");
    auto strict = small_grid();
    strict.skip_undefined = false;
    EXPECT_NE(error_of(strict).find("instance_norm needs trailing dimensions"), std::string::npos);
}

TEST(StressGrid, InvalidOptionsAreErrorsBeforeAnyRun) {
    auto o = small_grid();
    o.normalizers.push_back("batchnorm");
    EXPECT_NE(error_of(o).find("unknown normalizer 'batchnorm'"), std::string::npos);
    o = small_grid();
    o.normalizers.push_back("batch_norm(momentun=0.1)");
    EXPECT_NE(error_of(o).find("unknown option 'momentun'"), std::string::npos);
    o = small_grid();
    o.batch_sizes.push_back(0);
    EXPECT_EQ(error_of(o), "stress: batch sizes must be at least 1, got 0");
    o = small_grid();
    o.workloads = {"transformer"};
    EXPECT_NE(error_of(o).find("unknown workload 'transformer'"), std::string::npos);
    o = small_grid();
    o.data = "fashion-mnist";
    o.data_dir = "/nonexistent";
    EXPECT_NE(error_of(o).find("Fashion-MNIST not found in /nonexistent"), std::string::npos);
    o = small_grid();
    o.batch_sizes = {128};
    EXPECT_NE(error_of(o).find("exceeds the 64 training examples"), std::string::npos);
}

TEST(StressGrid, LearningRateScalesLinearlyWithTheBatchByDefault) {
    GridOptions o;
    o.base_lr = 0.1;
    o.base_batch = 32;
    EXPECT_DOUBLE_EQ(scaled_lr(o, 8), 0.025);
    EXPECT_DOUBLE_EQ(scaled_lr(o, 64), 0.2);
    o.lr_rule = "sqrt";
    EXPECT_DOUBLE_EQ(scaled_lr(o, 8), 0.05);
    o.lr_rule = "none";
    EXPECT_DOUBLE_EQ(scaled_lr(o, 8), 0.1);
}

TEST(StressStore, ALineCutShortByACrashIsDroppedAndTheNextLineStartsFresh) {
    const std::string path = scratch("store.jsonl");
    {
        ResultStore store(path);
        store.append({{"key", "a"}, {"value", 1}});
        store.append({{"key", "b"}, {"value", 2}});
    }
    std::ofstream(path, std::ios::app) << R"({"key": "c", "val)";  // killed mid-write
    ResultStore reopened(path);
    EXPECT_EQ(reopened.lines().size(), 2u);
    EXPECT_TRUE(reopened.contains("b"));
    EXPECT_FALSE(reopened.contains("c"));
    reopened.append({{"key", "c"}, {"value", 3}});
    EXPECT_EQ(ResultStore(path).lines().size(), 3u);
}

TEST(StressStore, DamageBeforeTheLastLineIsAnError) {
    const std::string path = scratch("damaged.jsonl");
    std::ofstream(path) << "{\"key\": 1}\nnot json\n{\"key\": 2}\n";
    EXPECT_THROW(ResultStore{path}, IoError);
}

// A deterministic stand-in for training: the result is a function of the configuration.
RunResult fake_run(const RunConfig& r, Progress&) {
    RunResult out;
    out.lr = r.lr;
    out.test_accuracy = 0.5 + 0.01 * double(r.batch_size) + 0.001 * r.seed;
    return out;
}

TEST(StressGrid, AnInterruptedGridResumesToTheSameLines) {
    const auto runs = expand_grid(small_grid());
    const std::string full_path = scratch("full.jsonl"), resumed_path = scratch("resumed.jsonl");
    ResultStore full(full_path);
    EXPECT_EQ(run_grid(runs, full, fake_run, {}), runs.size());

    struct Killed {};
    std::size_t calls = 0;
    ResultStore first(resumed_path);
    EXPECT_THROW(run_grid(runs, first,
                          [&](const RunConfig& r, Progress& p) {
                              if (++calls == 4) throw Killed{};  // not a std::exception: escapes
                              return fake_run(r, p);
                          },
                          {}),
                 Killed);
    EXPECT_EQ(first.lines().size(), 3u);
    ResultStore second(resumed_path);
    EXPECT_EQ(run_grid(runs, second, fake_run, {}), runs.size() - 3);
    EXPECT_EQ(run_grid(runs, second, fake_run, {}), 0u);  // nothing left to do

    ResultStore a(full_path), b(resumed_path);
    ASSERT_EQ(a.lines().size(), b.lines().size());
    for (std::size_t i = 0; i < a.lines().size(); ++i)
        EXPECT_EQ(a.lines()[i], b.lines()[i]);
}

TEST(StressGrid, ARunThatThrowsIsRecordedAsAnError) {
    auto o = small_grid();
    o.normalizers = {"batch_norm"};
    o.batch_sizes = {1};
    o.seeds = {0};
    const std::string path = scratch("errors.jsonl");
    ResultStore store(path);
    run_grid(expand_grid(o), store,
             [](const RunConfig&, Progress&) -> RunResult {
                 throw ShapeError("batch_norm(100): expected more than 1 value per channel");
             },
             {});
    ASSERT_EQ(store.lines().size(), 1u);
    EXPECT_EQ(store.lines()[0]["result"]["status"], "error");
    EXPECT_NE(store.lines()[0]["result"]["message"].get<std::string>().find("more than 1 value"),
              std::string::npos);
}

// The same, with real training on the synthetic set: a resumed grid's results equal an
// uninterrupted grid's in everything but the timings.
TEST(StressGrid, RealRunsResumeToTheSameResults) {
    auto o = small_grid();
    o.normalizers = {"batch_norm", "group_norm(groups=4)", "batch_renorm(warmup=2)"};
    o.batch_sizes = {1, 8};
    o.seeds = {3};
    o.train_examples = 96;
    const auto runs = expand_grid(o);
    ASSERT_EQ(runs.size(), 6u);
    auto real = [](const RunConfig& r, Progress& p) { return run_configuration(r, p); };
    const std::string full_path = scratch("real_full.jsonl"),
                      resumed_path = scratch("real_resumed.jsonl");
    ResultStore full(full_path);
    run_grid(runs, full, real, {});

    struct Killed {};
    std::size_t calls = 0;
    ResultStore first(resumed_path);
    EXPECT_THROW(run_grid(runs, first,
                          [&](const RunConfig& r, Progress& p) {
                              if (++calls == 3) throw Killed{};
                              return real(r, p);
                          },
                          {}),
                 Killed);
    {
        std::ofstream cut(resumed_path, std::ios::app);
        cut << R"({"config": {"workload": "mlp", "da)";  // a line cut short by the kill
    }
    ResultStore second(resumed_path);
    EXPECT_EQ(run_grid(runs, second, real, {}), runs.size() - 2);

    ResultStore a(full_path), b(resumed_path);
    ASSERT_EQ(a.lines().size(), runs.size());
    ASSERT_EQ(b.lines().size(), runs.size());
    for (std::size_t i = 0; i < runs.size(); ++i) {
        auto x = a.lines()[i], y = b.lines()[i];
        for (auto* line : {&x, &y}) {
            (*line)["result"].erase("wall_seconds");
            (*line)["result"].erase("examples_per_second");
        }
        EXPECT_EQ(x, y) << "run " << i;
    }
    // BatchNorm and Batch Renorm cannot train on single examples of (N, C) activations.
    for (const auto& line : a.lines()) {
        const bool batch_stats_at_one = line["config"]["normalizer"] != "group_norm(groups=4)" &&
                                        line["config"]["batch_size"] == 1;
        EXPECT_EQ(line["result"]["status"], batch_stats_at_one ? "error" : "ok") << line.dump();
        if (!batch_stats_at_one) {
            EXPECT_GT(line["result"]["test_accuracy"].get<double>(), 0.0);
        }
    }
}

// Concurrent runs (--jobs) write the same results, in the order they finish.
TEST(StressGrid, ConcurrentRunsGiveTheSameResults) {
    auto o = small_grid();
    o.normalizers = {"layer_norm", "batch_norm"};
    o.batch_sizes = {2, 8};
    o.seeds = {0, 1};
    o.train_examples = 96;
    const auto runs = expand_grid(o);
    auto real = [](const RunConfig& r, Progress& p) { return run_configuration(r, p); };
    const std::string one_path = scratch("jobs1.jsonl"), two_path = scratch("jobs2.jsonl");
    ResultStore one(one_path), two(two_path);
    EXPECT_EQ(run_grid(runs, one, real, {}, 1), runs.size());
    EXPECT_EQ(run_grid(runs, two, real, {}, 2), runs.size());
    auto by_key = [](const ResultStore& store) {
        std::map<std::string, nlohmann::json> out;
        for (auto line : store.lines()) {
            line["result"].erase("wall_seconds");
            line["result"].erase("examples_per_second");
            out[line["key"].get<std::string>()] = line["result"];
        }
        return out;
    };
    EXPECT_EQ(by_key(one), by_key(two));
    EXPECT_EQ(by_key(two).size(), runs.size());
}

TEST(StressGrid, OptionsAreCheckedAgainstTheWorkloadsWidths) {
    auto o = small_grid();
    o.normalizers = {"group_norm(groups=32)"};  // 32 does not divide the MLP's 100 units
    EXPECT_NE(error_of(o).find("group_norm(groups=32)"), std::string::npos) << error_of(o);
    o.normalizers = {"group_norm(groups=4)"};
    o.workloads = {"mlp", "cnn"};
    EXPECT_EQ(error_of(o), "no error");
    o.normalizers = {"instance_norm"};
    o.skip_undefined = false;
    EXPECT_NE(error_of(o).find("instance_norm"), std::string::npos);
}

}  // namespace
}  // namespace normlab::stress
