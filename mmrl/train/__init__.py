"""Training: the stage loop (`trainer`) built from parts (`build`), one RL step (`rl_step`) and one SFT step
(`sft_step`), scoring (`scoring`), the data and each step's prompts (`data`), the update (`update`, `rows`,
`regularisers`), the optimizer (`optim`), the run's progress (`progress`), held-out evaluation (`evaluate`),
checkpoints and the run directory (`checkpoint/`, `rundir`), metrics and plots, several processes
(`distributed`)."""
