// Small helpers of the Trainer's logging (launch/trainer_log.cc): a monotonic clock, the
// human-readable counts and durations of the progress line, and the MFU denominator.
#pragma once

#include <string>
#include <string_view>

namespace kiln::launch {

double now_s();                     // seconds on a monotonic clock
std::string human_time(double s);   // "1h02m", "3m05s", "42s"; "?" when unknown
std::string human_count(double v);  // "1.23G", "4.56M", "7.8k", "12"

// Peak dense bf16 tensor FLOP/s of one GPU, by its CUDA name (H100 SXM / H200 989e12, H100 PCIe
// 756e12, A100 312e12, ...); 0 for a GPU the table does not know.
double peak_dense_bf16_flops(std::string_view gpu_name);
// The MFU denominator per device: logging.peak_flops when > 0, else $KILN_PEAK_FLOPS when set,
// else the table's value for a GPU; 0 (no MFU) on the CPU or an unknown GPU.
double mfu_peak_flops(double config_peak, bool gpu, std::string_view gpu_name);

}  // namespace kiln::launch
