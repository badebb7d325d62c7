"""Where a grid of training runs runs: here, in a pool of worker processes under one divergence
policy (`grid.train_grid`, with its time estimate), or on a Slurm cluster, every unfinished run one
job of a job array (`slurm`). Both take ordinary `TrainConfig`s and leave ordinary run folders; what
a run computes does not depend on where it ran. The studies (`reslab.studies`) launch their grids
through this package."""
