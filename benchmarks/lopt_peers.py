r"""Learned-optimizer meta-training: keras_meta against a PyTorch peer.

    python -m benchmarks.lopt_peers
    python -m benchmarks.lopt_peers --problems=quadratic --reps=10

Truncations per second of meta-training the coordinatewise 2 x 20 LSTM
rule (`descent="adam"`, the paper's architecture) on the paper's quadratic
and on the 784-20-10 sigmoid MLP (batch 128): `unroll` optimizee steps,
first-order meta-gradient, clipping, one Adam step on phi, a new problem
every `horizon` steps. keras_meta runs `MetaTrainer.meta_step` (graph mode
and XLA); the peer is `benchmarks/peers/torch_l2l.py`. Each configuration
runs in its own process; the step time is the median over `--reps`
timings of `--steps` truncations after one warm-up truncation (whose time,
trace and compile included, is the first call).

The `fit` step with `LearnedOptimizer` against Adam is
`python -m benchmarks.cost` (the learned-optimizer issue's cost table).
Results: a table and `benchmarks/results/lopt_peers.json`.
"""

import json

from absl import app
from absl import flags

from benchmarks import common

flags.DEFINE_list("problems", ["quadratic", "mlp_teacher"], "Families.")
flags.DEFINE_list("xla", ["off", "on"], "keras_meta jit_compile settings.")
flags.DEFINE_integer("unroll", 20, "Optimizee steps per truncation.")
flags.DEFINE_integer("horizon", 100, "Optimizee steps per run.")
flags.DEFINE_integer("reps", 5, "Timings per configuration.")
flags.DEFINE_integer("steps", 5, "Truncations per timing.")
flags.DEFINE_integer("timeout", 900, "Seconds per configuration.")
flags.DEFINE_string("out", "lopt_peers.json", "JSON file in results/.")
flags.DEFINE_string("_child", "", "Internal: one configuration as JSON.")
FLAGS = flags.FLAGS
MODULE = "benchmarks.lopt_peers"


def _time_truncations(step, cfg):
    """Times `cfg["steps"]` calls of `step()` per timing, with memory."""
    rss_before = common.current_rss_mb()

    def run_steps():
        for _ in range(cfg["steps"]):
            step()

    result = common.timings(run_steps, cfg["steps"], cfg["reps"])
    result.update(rss_before_mb=rss_before, peak_rss_mb=common.peak_rss_mb())
    return result


def keras_meta_child(cfg):
    import keras_meta  # noqa: F401
    from keras_meta.meta import problems
    from keras_meta.meta import trainer
    from keras_meta.rules import lstm as lstm_rule

    rule = lstm_rule.RuleConfig(hidden_size=20, num_layers=2, descent="adam")
    mt = trainer.MetaTrainer(
        [problems.make_problem(cfg["problem"])], config=rule,
        unroll=cfg["unroll"], horizon=cfg["horizon"],
        jit_compile=cfg["xla"] == "on")
    return _time_truncations(mt.meta_step, cfg)


def torch_child(cfg):
    from benchmarks.peers import torch_l2l

    trainer = torch_l2l.Truncations(cfg["problem"], unroll=cfg["unroll"],
                                    horizon=cfg["horizon"])
    return _time_truncations(trainer.step, cfg)


def main(argv):
    del argv
    if FLAGS._child:
        cfg = json.loads(FLAGS._child)
        child = {"keras_meta": keras_meta_child, "torch": torch_child}
        print("RESULT " + json.dumps(child[cfg["framework"]](cfg)))
        return
    have_torch = common.torch_available()
    rows, table = [], []
    for problem in FLAGS.problems:
        base = dict(problem=problem, unroll=FLAGS.unroll,
                    horizon=FLAGS.horizon, reps=FLAGS.reps, steps=FLAGS.steps)
        runs = [dict(base, framework="keras_meta", xla=x) for x in FLAGS.xla]
        if have_torch:
            runs.append(dict(base, framework="torch", xla="-"))
        results = []
        for cfg in runs:
            result = dict(cfg, **common.run_child(MODULE, cfg, FLAGS.timeout))
            results.append(result)
            print(json.dumps({k: v for k, v in result.items()
                              if k != "step_ms_all"}), flush=True)
        peer = [r for r in results if r["framework"] == "torch"
                and "step_ms" in r]
        for r in results:
            if "step_ms" in r and peer:
                r["speedup_vs_peer"] = peer[0]["step_ms"] / r["step_ms"]
            ok = "step_ms" in r
            table.append([
                problem, r["framework"] + (
                    f" xla={r['xla']}" if r["framework"] == "keras_meta"
                    else ""),
                f"{1000 / r['step_ms']:.2f}" if ok else r["error"][:40],
                f"{r['step_ms']:.0f}" if ok else "-",
                f"{r['first_call_s']:.1f}" if ok else "-",
                f"{r['speedup_vs_peer']:.2f}x" if "speedup_vs_peer" in r
                else "-",
                f"{r['peak_rss_mb']:.0f}" if ok else "-"])
        rows.extend(results)
    common.print_table(["problem", "implementation", "truncations/s",
                        "ms/truncation", "first call s", "vs peer",
                        "peak RSS MB"], table)
    common.write_json(FLAGS.out, dict(benchmark="lopt_peers", rows=rows))


if __name__ == "__main__":
    app.run(main)
