"""Training: the stage loop (`trainer`), one RL step (`rl_step`) and its update (`update`), checkpoints and the
run directory (`checkpoint`, `rundir`), metrics and plots, and several processes (`distributed`)."""
