// The training loop: determinism, checkpoints that resume identically, refusal of wrong or
// damaged checkpoints, divergence as a result, evaluation that leaves the model untouched, and
// the optimizers' update rules.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "normlab/errors.hpp"
#include "normlab/train/trainer.hpp"
#include "scratch_path.hpp"

namespace normlab {
namespace {

const data::Split& synthetic() {
    static const data::Split split = data::make_synthetic(600, 200, 11);
    return split;
}

train::TrainConfig config(const std::string& normalizer, const std::string& workload = "mlp") {
    train::TrainConfig c;
    c.workload = workload;
    c.normalizer = normalizer;
    c.batch_size = 20;
    c.epochs = 2;
    c.lr = 0.05;
    c.seed = 4;
    return c;
}

std::vector<Array<float>> parameters_of(train::Trainer& t) {
    std::vector<Array<float>> out;
    for (auto& p : t.model().parameters())
        out.push_back(*p.value);
    for (auto& b : t.model().buffers())
        out.push_back(*b.value);
    return out;
}

TEST(Trainer, LearnsTheSyntheticSet) {
    train::Trainer t(config("batch_norm"), synthetic().train, synthetic().test);
    const auto r = t.run();
    ASSERT_EQ(r.status, "ok") << r.message;
    ASSERT_EQ(r.epochs.size(), 2u);
    EXPECT_GT(r.epochs.back().test.accuracy, 0.5);  // chance is 0.1
    EXPECT_LT(r.epochs.back().train_loss, r.epochs.front().train_loss);
    EXPECT_EQ(r.steps, 2u * 30u);
    EXPECT_FALSE(r.loss_curve.empty());
    EXPECT_GT(r.examples_per_second, 0);
}

TEST(Trainer, TwoRunsWithTheSameSeedAreIdentical) {
    for (const std::string spec : {"batch_norm", "group_norm(groups=4)", "batch_layer_norm"}) {
        for (const std::string workload : {"mlp", "cnn"}) {
            SCOPED_TRACE(spec + " " + workload);
            auto c = config(spec, workload);
            c.epochs = 1;
            if (workload == "cnn") c.batch_size = 50;
            train::Trainer a(c, synthetic().train, synthetic().test);
            train::Trainer b(c, synthetic().train, synthetic().test);
            const auto ra = a.run(), rb = b.run();
            ASSERT_EQ(ra.status, "ok") << ra.message;
            EXPECT_EQ(ra.loss_curve, rb.loss_curve);
            EXPECT_EQ(ra.epochs[0].test.loss, rb.epochs[0].test.loss);
            EXPECT_EQ(parameters_of(a), parameters_of(b));
        }
    }
}

TEST(Trainer, ResumingFromACheckpointGivesTheSameRun) {
    for (const std::string optimizer : {"sgd", "adam"}) {
        for (const std::string spec :
             {"batch_norm", "batch_renorm(warmup=5)", "batch_layer_norm"}) {
            SCOPED_TRACE(optimizer + " " + spec);
            auto c = config(spec);
            c.optimizer = optimizer;
            c.lr = optimizer == "adam" ? 1e-3 : 0.05;
            c.schedule = "cosine";
            train::Trainer straight(c, synthetic().train, synthetic().test);
            const auto full = straight.run();
            ASSERT_EQ(full.status, "ok") << full.message;

            const auto path = testing::scratch_path("normlab_ckpt_", "resume.npz");
            {
                train::Trainer first(c, synthetic().train, synthetic().test);
                train::TrainResult partial;
                ASSERT_TRUE(first.run_epoch(partial));
                first.save_checkpoint(path);
            }
            train::Trainer resumed(c, synthetic().train, synthetic().test);
            resumed.load_checkpoint(path);
            EXPECT_EQ(resumed.epoch(), 1u);
            const auto rest = resumed.run();
            ASSERT_EQ(rest.epochs.size(), 1u);
            EXPECT_EQ(rest.epochs[0].test.loss, full.epochs[1].test.loss);
            EXPECT_EQ(rest.loss_curve, full.loss_curve);
            EXPECT_EQ(parameters_of(resumed), parameters_of(straight));
        }
    }
}

TEST(Trainer, RefusesCheckpointsOfAnotherModelOrDamagedFiles) {
    const auto c = config("batch_norm");
    const auto path = testing::scratch_path("normlab_ckpt_", "refuse.npz");
    train::Trainer saved(c, synthetic().train, synthetic().test);
    train::TrainResult r;
    saved.run_epoch(r);
    saved.save_checkpoint(path);

    train::Trainer other(config("layer_norm"), synthetic().train, synthetic().test);
    const auto before = parameters_of(other);
    try {
        other.load_checkpoint(path);
        FAIL() << "a checkpoint of another configuration was accepted";
    } catch (const StateError& e) {
        EXPECT_NE(std::string(e.what()).find("normalizer=layer_norm"), std::string::npos)
            << e.what();
    }
    EXPECT_EQ(parameters_of(other), before);
    EXPECT_EQ(other.epoch(), 0u);

    train::Trainer same(c, synthetic().train, synthetic().test);
    const auto fresh = parameters_of(same);
    std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
    EXPECT_THROW(same.load_checkpoint(path), IoError);
    EXPECT_THROW(same.load_checkpoint(path + ".missing"), IoError);
    std::ofstream(path, std::ios::trunc) << "not a checkpoint";
    EXPECT_THROW(same.load_checkpoint(path), IoError);
    EXPECT_EQ(parameters_of(same), fresh);
}

TEST(Trainer, DivergenceIsAResultNotACrash) {
    auto c = config("identity", "relu_mlp");
    c.lr = 1e6;
    train::Trainer t(c, synthetic().train, synthetic().test);
    const auto r = t.run();
    EXPECT_EQ(r.status, "diverged");
    EXPECT_FALSE(r.message.empty());
}

TEST(Trainer, BatchNormAtBatchOneIsAnErrorResult) {
    auto c = config("batch_norm");
    c.batch_size = 1;
    c.epochs = 1;
    train::Trainer t(c, synthetic().train, synthetic().test);
    const auto r = t.run();
    EXPECT_EQ(r.status, "error");
    EXPECT_NE(r.message.find("batch_norm"), std::string::npos) << r.message;
}

TEST(Trainer, BadOptionsAreRefusedUpFront) {
    auto c = config("batch_norm");
    c.batch_size = 0;
    EXPECT_THROW(train::Trainer(c, synthetic().train, synthetic().test), OptionError);
    c = config("no_such_norm");
    EXPECT_THROW(train::Trainer(c, synthetic().train, synthetic().test), OptionError);
    c = config("batch_norm", "transformer");
    EXPECT_THROW(train::Trainer(c, synthetic().train, synthetic().test), OptionError);
    c = config("batch_norm");
    c.optimizer = "lbfgs";
    EXPECT_THROW(train::Trainer(c, synthetic().train, synthetic().test), OptionError);
    c = config("batch_norm");
    c.schedule = "exponential";
    EXPECT_THROW(train::Trainer(c, synthetic().train, synthetic().test), OptionError);
}

TEST(Evaluate, TrainModeEvaluationLeavesRunningStatisticsAlone) {
    train::Trainer t(config("batch_norm"), synthetic().train, synthetic().test);
    train::TrainResult r;
    t.run_epoch(r);
    const auto before = parameters_of(t);
    const auto train_mode = train::evaluate(t.model(), synthetic().test, {784}, Mode::train, 20);
    EXPECT_EQ(parameters_of(t), before);
    EXPECT_GT(train_mode.accuracy, 0.3);  // chance is 0.1
    const auto eval_mode = train::evaluate(t.model(), synthetic().test, {784}, Mode::eval, 256);
    EXPECT_EQ(eval_mode.accuracy, r.epochs[0].test.accuracy);
}

model::ModelParam<float> param(Array<float>& value, Array<float>& grad, bool normalizer) {
    return {"p", &value, &grad, normalizer};
}

TEST(Optimizer, SgdFollowsPyTorchsMomentumConvention) {
    Array<float> w{1.0f, -2.0f}, g{0.5f, 1.0f}, gamma{1.0f}, gamma_grad{0.25f};
    auto sgd = model::Optimizer<float>::sgd({param(w, g, false), param(gamma, gamma_grad, true)},
                                            {0.9, 0.1, false});
    sgd.step(0.1);  // v = g + wd·w; w -= lr·v
    EXPECT_FLOAT_EQ(w(0), 1.0f - 0.1f * (0.5f + 0.1f * 1.0f));
    EXPECT_FLOAT_EQ(gamma(0), 1.0f - 0.1f * 0.25f);  // no weight decay on normalizer parameters
    const float v0 = 0.5f + 0.1f * 1.0f, w1 = w(0);
    sgd.step(0.1);  // v = 0.9·v + g + wd·w
    EXPECT_FLOAT_EQ(w(0), w1 - 0.1f * (0.9f * v0 + 0.5f + 0.1f * w1));
    EXPECT_EQ(sgd.steps(), 2);
}

TEST(Optimizer, AdamFirstStepMovesEveryWeightByTheLearningRate) {
    Array<float> w{1.0f, -2.0f, 3.0f}, g{0.5f, -4.0f, 1e-3f};
    auto adam = model::Optimizer<float>::adam({param(w, g, false)}, {});
    adam.step(0.01);
    EXPECT_NEAR(w(0), 0.99f, 1e-6);
    EXPECT_NEAR(w(1), -1.99f, 1e-6);
    EXPECT_NEAR(w(2), 2.99f, 1e-5);
    EXPECT_EQ(adam.state().size(), 2u);
}

TEST(Schedule, ConstantStepCosine) {
    model::Schedule s;
    s.base = 0.2;
    EXPECT_DOUBLE_EQ(s.at(1000), 0.2);
    s.kind = "step";
    s.every = 10;
    s.gamma = 0.5;
    EXPECT_DOUBLE_EQ(s.at(9), 0.2);
    EXPECT_DOUBLE_EQ(s.at(25), 0.05);
    s.kind = "cosine";
    s.total = 100;
    EXPECT_DOUBLE_EQ(s.at(0), 0.2);
    EXPECT_NEAR(s.at(50), 0.1, 1e-12);
    EXPECT_NEAR(s.at(100), 0.0, 1e-12);
}

}  // namespace
}  // namespace normlab
