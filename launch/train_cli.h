// The `kiln` sub-commands implemented in launch/: train, eval, sample, info, plot.
#pragma once

namespace kiln::launch {

int train_main(int argc, char** argv);
int eval_main(int argc, char** argv);
int sample_main(int argc, char** argv);
int info_main(int argc, char** argv);
// kiln plan (launch/plan_cli.cc): per-rank memory of a layout; the layouts that fit a GPU.
int plan_main(int argc, char** argv);

}  // namespace kiln::launch
