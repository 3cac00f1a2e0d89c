// Small helpers of the Trainer's logging (launch/trainer_log.cc): a monotonic clock and the
// human-readable counts and durations of the progress line.
#pragma once

#include <string>

namespace kiln::launch {

double now_s();                     // seconds on a monotonic clock
std::string human_time(double s);   // "1h02m", "3m05s", "42s"; "?" when unknown
std::string human_count(double v);  // "1.23G", "4.56M", "7.8k", "12"

}  // namespace kiln::launch
