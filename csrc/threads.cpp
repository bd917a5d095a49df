#include "threads.h"

#include <exception>
#include <mutex>
#include <omp.h>
#include <thread>
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

namespace pygpt {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Spin this many rounds before yielding the core: steps of a forward pass are tens of
// microseconds apart, so a waiting thread usually spins; if the thread it waits for has
// been descheduled (a shared machine), yielding lets it run.
constexpr int kSpinRounds = 4000;

}  // namespace

void Barrier::wait() {
    const uint32_t phase = phase_.load(std::memory_order_acquire);
    if (aborted_.load(std::memory_order_acquire)) throw TeamAborted();
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_.load(std::memory_order_relaxed)) {
        arrived_.store(0, std::memory_order_relaxed);
        phase_.store(phase + 1, std::memory_order_release);
        return;
    }
    for (int round = 0; phase_.load(std::memory_order_acquire) == phase; round++) {
        if (aborted_.load(std::memory_order_acquire)) throw TeamAborted();
        if (round < kSpinRounds) cpu_relax();
        else std::this_thread::yield();
    }
}

void run_team(int n_threads, const std::function<void(const Team&)>& body) {
    if (n_threads <= 1) {
        body(Team{});
        return;
    }
    Barrier barrier;
    std::exception_ptr error;
    std::mutex error_mutex;
#pragma omp parallel num_threads(n_threads)
    {
        Team team;
        team.id = omp_get_thread_num();
        team.n = omp_get_num_threads();  // may be fewer than asked (OMP_THREAD_LIMIT, nesting)
        team.barrier = &barrier;
        barrier.set_size(team.n);  // every thread stores the same value before its first wait
        try {
            body(team);
        } catch (const TeamAborted&) {
            // another thread failed first; its exception is the one reported
        } catch (...) {
            {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
            }
            barrier.abort();
        }
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace pygpt
