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
    // Work counter of dynamic steps (Team::next_chunk): zero whenever threads leave a wait().
    std::atomic<int64_t>& work() { return work_; }

private:
    std::atomic<int> n_{1};
    std::atomic<int> arrived_{0};
    std::atomic<uint32_t> phase_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> aborted_{false};
    std::atomic<int64_t> work_{0};
};

// One thread's view of the team.
struct Team {
    int id = 0, n = 1;
    Barrier* barrier = nullptr;

    void sync() const {
        if (n > 1) barrier->wait();
        else if (barrier) barrier->work().store(0, std::memory_order_relaxed);
    }
    // This thread's share [*begin, *end) of n_items, cut at multiples of `unit` (contiguous,
    // in thread order, the last share ending at n_items).
    void split(int64_t n_items, int64_t unit, int64_t* begin, int64_t* end) const {
        const int64_t units = (n_items + unit - 1) / unit;
        const int64_t b = units * id / n * unit, e = units * (id + 1) / n * unit;
        *begin = b < n_items ? b : n_items;
        *end = e < n_items ? e : n_items;
    }
    // Dynamic share: the next unclaimed chunk [*begin, *end) of n_items (chunks of `chunk`
    // items, the last one shorter), or false when all are claimed. Threads claim chunks as
    // they finish the last one, so a thread the OS or the host slows down simply does fewer:
    // on a shared machine a static split waits for the slowest thread at every barrier.
    // Between two dynamic steps there must be a sync(), which starts the count again.
    bool next_chunk(int64_t n_items, int64_t chunk, int64_t* begin, int64_t* end) const {
        const int64_t b = barrier->work().fetch_add(chunk, std::memory_order_relaxed);
        if (b >= n_items) return false;
        *begin = b;
        *end = b + chunk < n_items ? b + chunk : n_items;
        return true;
    }
};

// Runs body(team) on n_threads threads (one OpenMP parallel region) and returns when all are
// done. If body throws in any thread, the others are released from their barriers and the
// first exception is rethrown here, on the calling thread.
void run_team(int n_threads, const std::function<void(const Team&)>& body);

}  // namespace pygpt
