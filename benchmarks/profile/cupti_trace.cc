// A GPU timeline of any CUDA program, kiln train included, without Nsight Systems (the GPU hosts
// have none): a CUDA injection library. The driver loads it when CUDA_INJECTION64_PATH names it
// and calls InitializeInjection() once; CUPTI's activity API then records every kernel, memcpy
// and memset with its device start and end (ns), stream and name, and at exit the records are
// written as CSV to $KILN_TRACE_OUT (default kiln_trace.csv):
//   kind,start_ns,end_ns,stream,name
// benchmarks/profile/timeline.py turns them into a per-step account of busy time and gaps.
// Usage: CUDA_INJECTION64_PATH=BUILD/benchmarks/libkiln_cupti_trace.so KILN_TRACE_OUT=t.csv \
//          BUILD/bin/kiln train ...
// Records stay in host memory until exit (~100 bytes each; a 20-step Llama run has ~20k).
#include <cupti.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  char kind;  // 'K' kernel, 'C' memcpy, 'S' memset
  uint64_t start, end;
  uint32_t stream;
  std::string name;
};

std::mutex g_mu;
std::vector<Record>* g_records = nullptr;  // leaked on purpose: used from the atexit handler
std::atomic<uint64_t> g_dropped{0};
constexpr size_t kBufferBytes = 8 << 20;

void report(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  std::fprintf(stderr, "kiln cupti trace: %s failed: %s\n", what, msg ? msg : "?");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<Record> got;
  CUpti_Activity* a = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &a) == CUPTI_SUCCESS) {
    if (a->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || a->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(a);
      got.push_back({'K', k->start, k->end, k->streamId, k->name ? k->name : "?"});
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(a);
      got.push_back({'C', m->start, m->end, m->streamId, "memcpy"});
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(a);
      got.push_back({'S', m->start, m->end, m->streamId, "memset"});
    }
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  g_dropped += dropped;
  std::free(buffer);
  std::lock_guard<std::mutex> lock(g_mu);
  g_records->insert(g_records->end(), got.begin(), got.end());
}

// Names go into a CSV field: quotes doubled, the whole name quoted.
std::string csv_field(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void write_trace() {
  report(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
  const char* path = std::getenv("KILN_TRACE_OUT");
  if (path == nullptr || *path == '\0') path = "kiln_trace.csv";
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) {
    std::fprintf(stderr, "kiln cupti trace: cannot write %s\n", path);
    return;
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(f, "kind,start_ns,end_ns,stream,name\n");
  for (const Record& r : *g_records)
    std::fprintf(f, "%c,%llu,%llu,%u,%s\n", r.kind, static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.stream, csv_field(r.name).c_str());
  std::fclose(f);
  std::fprintf(stderr, "kiln cupti trace: %zu records (%llu dropped) -> %s\n", g_records->size(),
               static_cast<unsigned long long>(g_dropped.load()), path);
}

}  // namespace

extern "C" int InitializeInjection(void) {
  g_records = new std::vector<Record>();
  g_records->reserve(1 << 16);
  report(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed),
         "cuptiActivityRegisterCallbacks");
  report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels");
  report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpy");
  report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memset");
  std::atexit(write_trace);
  return 1;
}
