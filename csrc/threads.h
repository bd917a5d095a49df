// The team of threads that runs one forward pass: one OpenMP parallel region per call, and
// inside it a spinning barrier between steps.
//
// Why not one `omp parallel for` per step: a forward pass has ~7 steps per layer, and
// waking sleeping OpenMP workers costs tens of microseconds each time on a shared machine
// (pygpt sets OMP_WAIT_POLICY=passive so that idle workers sleep: an app embedding pygpt
// must see 0% CPU between calls). Here workers are woken once per call; between steps they
// spin briefly (then sleep on a futex), and when the call returns they sleep again.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>

namespace pygpt {

// Thrown out of Barrier::wait in every thread once one thread of the team has failed.
struct TeamAborted {};

class Barrier {
public:
    void set_size(int n) { n_.store(n, std::memory_order_relaxed); }
    // Returns when all n threads have called wait(); throws TeamAborted after abort().
    void wait();
    void abort();

private:
    std::atomic<int> n_{1};
    std::atomic<int> arrived_{0};
    std::atomic<uint32_t> phase_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> aborted_{false};
};

// One thread's view of the team.
struct Team {
    int id = 0, n = 1;
    Barrier* barrier = nullptr;

    void sync() const {
        if (n > 1) barrier->wait();
    }
    // This thread's share [*begin, *end) of n_items, cut at multiples of `unit` (contiguous,
    // in thread order, the last share ending at n_items).
    void split(int64_t n_items, int64_t unit, int64_t* begin, int64_t* end) const {
        const int64_t units = (n_items + unit - 1) / unit;
        const int64_t b = units * id / n * unit, e = units * (id + 1) / n * unit;
        *begin = b < n_items ? b : n_items;
        *end = e < n_items ? e : n_items;
    }
};

// Runs body(team) on n_threads threads (one OpenMP parallel region) and returns when all are
// done. If body throws in any thread, the others are released from their barriers and the
// first exception is rethrown here, on the calling thread.
void run_team(int n_threads, const std::function<void(const Team&)>& body);

}  // namespace pygpt
