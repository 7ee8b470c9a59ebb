r"""Grid or random search over the flags of train_maml.py or
train_learned_optimizer.py, with the TensorBoard HParams dashboard.

    python examples/sweep.py --target=train_maml \
        --sweep='inner_lr=0.001,0.01,0.1;meta_lr=1e-3,3e-4' \
        --budget_steps=5000 --sweep_dir=runs/sweep -- --eval_tasks=200
    tensorboard --logdir runs/sweep      # then the HPARAMS tab

Each trial is a child process with its own model_dir (sweep_dir/trials/<id>/
model) and seed; flags after `--` go to every trial. Trials worse than the
median of their peers at the same step are stopped early (--early_stopping).
Failed and diverged trials are recorded and the sweep goes on; run the same
command again to resume: finished trials are skipped. The summary table,
best first, is printed and written to sweep_dir/summary.csv and summary.json.
"""

from absl import app
from absl import flags

from keras_meta import sweeps
from keras_meta.sweeps import runner
from keras_meta.sweeps import targets

_D = sweeps.SweepConfig()

flags.DEFINE_enum("target", _D.target, sorted(targets.TARGETS),
                  "The script whose flags are swept.")
flags.DEFINE_string("sweep", None, "Axes 'name=v1,v2;name2=...'; random "
                    "search also takes name=uniform(lo,hi), "
                    "loguniform(lo,hi) or randint(lo,hi).")
flags.DEFINE_string("sweep_dir", _D.sweep_dir, "Where trials, HParams "
                    "summaries and summary.csv/json go.")
flags.DEFINE_enum("search", _D.search, runner.SEARCHES,
                  "grid: every combination; random: --trials points.")
flags.DEFINE_integer("trials", _D.trials, "Random search: number of points.")
flags.DEFINE_integer("seeds", _D.seeds, "Trials per point (seeds seed, "
                     "seed+1, ...).")
flags.DEFINE_integer("seed", _D.seed, "First trial seed; seeds the random "
                     "search too.")
flags.DEFINE_integer("budget_steps", None, "(Meta-)steps per trial (the "
                     "target's --train_steps or --meta_steps).")
flags.DEFINE_integer("parallel", None, "Trials at a time (default: half the "
                     "CPU cores, at least 1).")
flags.DEFINE_string("metric", None, "Final metric to rank by (train_maml: "
                    "k<shots>_s<steps> of results.json, default k10_s1; "
                    "learned optimizer: a key of summary.json, default "
                    "final_eval_score).")
flags.DEFINE_enum("goal", None, runner.GOALS, "Direction of --metric "
                  "(default: the target's).")
flags.DEFINE_string("progress_tag", None, "TensorBoard tag read for early "
                    "stopping (default: the target's).")
flags.DEFINE_enum("progress_goal", None, runner.GOALS,
                  "Direction of --progress_tag.")
flags.DEFINE_enum("early_stopping", _D.early_stopping, runner.EARLY_STOPPING,
                  "median: stop a trial worse than the median of its peers.")
flags.DEFINE_float("grace_fraction", _D.grace_fraction, "No early stop "
                   "before this fraction of --budget_steps.")
flags.DEFINE_integer("min_trials", _D.min_trials, "Peers needed at a step "
                     "before the median rule may stop a trial.")
flags.DEFINE_float("trial_timeout_minutes", None, "Fail trials running "
                   "longer than this.")
flags.DEFINE_float("poll_seconds", _D.poll_seconds, "Seconds between checks "
                   "of the children.")
flags.DEFINE_bool("retry_failed", _D.retry_failed, "On restart, run failed "
                  "trials again.")
flags.DEFINE_string("script", None, "Path of the target script (default: "
                    "the one in examples/).")

FLAGS = flags.FLAGS


def config_from_flags(passthrough):
    names = [f.name for f in runner.dataclasses.fields(sweeps.SweepConfig)]
    values = {n: FLAGS[n].value for n in names if n in FLAGS}
    return sweeps.SweepConfig(passthrough=tuple(passthrough), **values)


def main(argv):
    config = config_from_flags(argv[1:])
    try:
        sweeps.make_plan(config)  # Checks everything; launches nothing.
    except ValueError as e:
        raise app.UsageError(str(e))
    summary = sweeps.run_sweep(config)
    stop = summary["early_stopping"]
    print(f"\n{len(summary['trials'])} trials ({summary['counts']}); "
          f"{stop['trials_stopped']} stopped early, saving "
          f"{stop['steps_saved']} steps; {summary['wall_seconds']:.0f} s.")
    print(summary["table"])
    print(f"Summary: {FLAGS.sweep_dir}/summary.csv and summary.json; "
          f"dashboard: tensorboard --logdir {FLAGS.sweep_dir}")


if __name__ == "__main__":
    flags.mark_flag_as_required("sweep")
    app.run(main)
