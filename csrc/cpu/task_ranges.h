// Balanced task ranges for the GEMMs' OpenMP regions (ISA-free; include from any kernel file).
//
// The tasks 0 .. T-1 (panel-major: consecutive tasks walk the weights in order) are split into one contiguous range
// per thread, as schedule(static) would. Each thread takes its own range from the front, in order, and then takes
// what is left of the others' ranges from their backs, one task at a time, until every range is empty. So the
// weights still stream in order on each thread, while a thread that started late or runs slower (the machines are
// shared, and the memory stream is not fair between cores) hands its last tasks to the others instead of holding
// everyone at the region's closing barrier: at decoding's small M a GEMM call is a few panels per thread and that
// barrier was about 6% of a decode's time (AMD EPYC Zen 5, 2 threads, perf).
//
// Each range is one atomic word holding its front and back, so the owner (front) and a helper (back) never run
// the same task. The callback also gets the task this thread expects to run next (the next one of its walk, or -1),
// for its weight prefetch; a guess, never a promise: another thread may take that task first.
#pragma once
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <atomic>
#include <cstdint>
#include <memory>

namespace illada::cpu {

class TaskRanges {
 public:
  // tasks < 2^32; n_threads: the team size the region asks for (a smaller team still runs every task).
  TaskRanges(int64_t tasks, int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
    if (n_ > kInline) heap_.reset(new Range[n_]);
    Range* r = ranges();
    for (int t = 0; t < n_; ++t) {
      const uint64_t front = static_cast<uint64_t>(tasks * t / n_), back = static_cast<uint64_t>(tasks * (t + 1) / n_);
      r[t].fb.store(front | (back << 32), std::memory_order_relaxed);
    }
  }
  TaskRanges(const TaskRanges&) = delete;
  TaskRanges& operator=(const TaskRanges&) = delete;

  // Call from every thread of the parallel region: fn(task, next_guess) until no task is left.
  template <class Fn>
  void run(const Fn& fn) {
    const int team = team_size(), t = thread_index();
    Range* r = ranges();
    // own ranges: thread t of a smaller team also owns ranges t + team, t + 2 * team, ...
    for (int own = t; own < n_; own += team) {
      int64_t task, rest;
      while (take_front(r[own], task, rest)) fn(task, rest > 0 ? task + 1 : next_own(own + team));
    }
    for (int i = 1; i < n_; ++i) {  // then the others', from their backs
      Range& other = r[(t + i) % n_];
      int64_t task, rest;
      while (take_back(other, task, rest)) fn(task, rest > 0 ? task - 1 : -1);
    }
  }

  // The calling thread's index in its OpenMP team and the team's size (0 and 1 outside a region or without OpenMP).
  static int thread_index() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
  }
  static int team_size() {
#if defined(_OPENMP)
    return omp_get_num_threads();
#else
    return 1;
#endif
  }

 private:
  struct alignas(64) Range {
    std::atomic<uint64_t> fb;  // front (next task) in the low 32 bits, back (one past the last) in the high 32
  };
  static constexpr int kInline = 8;

  Range* ranges() { return heap_ ? heap_.get() : inline_; }

  // The first task of the next range this thread owns, or -1.
  int64_t next_own(int own) {
    if (own >= n_) return -1;
    const uint64_t v = ranges()[own].fb.load(std::memory_order_relaxed);
    return static_cast<uint32_t>(v) < (v >> 32) ? static_cast<int64_t>(static_cast<uint32_t>(v)) : -1;
  }

  // rest: how many tasks the range still holds after this one
  static bool take_front(Range& r, int64_t& task, int64_t& rest) {
    uint64_t v = r.fb.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t front = static_cast<uint32_t>(v), back = v >> 32;
      if (front >= back) return false;
      if (r.fb.compare_exchange_weak(v, v + 1, std::memory_order_relaxed)) {
        task = static_cast<int64_t>(front);
        rest = static_cast<int64_t>(back - front - 1);
        return true;
      }
    }
  }
  static bool take_back(Range& r, int64_t& task, int64_t& rest) {
    uint64_t v = r.fb.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t front = static_cast<uint32_t>(v), back = v >> 32;
      if (front >= back) return false;
      if (r.fb.compare_exchange_weak(v, front | ((back - 1) << 32), std::memory_order_relaxed)) {
        task = static_cast<int64_t>(back - 1);
        rest = static_cast<int64_t>(back - 1 - front);
        return true;
      }
    }
  }

  int n_;
  Range inline_[kInline];
  std::unique_ptr<Range[]> heap_;
};

}  // namespace illada::cpu
