#include "threads.h"

#include <exception>
#include <mutex>
#include <omp.h>
#include <chrono>
#include <climits>
#include <thread>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
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

// A waiting thread spins this long, then sleeps. Steps of a forward pass are tens of
// microseconds to a few milliseconds long, and on a shared host two threads' shares of one
// finish up to a few hundred microseconds apart; a thread that slept must then be woken,
// and on a VM its idle vCPU with it, which costs more than the spin would have. Past
// this, when a thread of the team has been descheduled (a busy machine), the others stop
// burning the cores it needs. 300 us against 30 (tools/ab.py, 2 threads, 8-10 rounds):
// 355M f16 decode 1.14x, 1.02x and 1.12x, 355M bf16 1.05x; 124M int8 0.99x, int4 batch 8
// 0.95x and 1.05x (the host's noise). Between calls nothing spins: the team's threads are
// OpenMP's, which sleep (OMP_WAIT_POLICY=passive, pygpt/__init__.py).
constexpr auto kSpinTime = std::chrono::microseconds(300);

// Sleep until *word != expected (or a spurious wake-up).
void sleep_while_equal(std::atomic<uint32_t>* word, uint32_t expected) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
    (void)word;
    (void)expected;
    std::this_thread::yield();
#endif
}

void wake_all(std::atomic<uint32_t>* word) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#else
    (void)word;
#endif
}

}  // namespace

void Barrier::wait() {
    const uint32_t phase = phase_.load();
    if (aborted_.load()) throw TeamAborted();
    if (arrived_.fetch_add(1) + 1 == n_.load(std::memory_order_relaxed)) {
        arrived_.store(0, std::memory_order_relaxed);
        work_.store(0, std::memory_order_relaxed);  // every thread is here: no dynamic step runs
        phase_.store(phase + 1);
        if (sleepers_.load() > 0) wake_all(&phase_);
        return;
    }
    const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
    for (int round = 1; phase_.load(std::memory_order_acquire) == phase; round++) {
        if (round % 64 != 0) {
            cpu_relax();
        } else if (std::chrono::steady_clock::now() > deadline) {
            sleepers_.fetch_add(1);
            // seq_cst: either the waker's store of phase_ is seen here, or our count is seen
            // by the waker (which then wakes us)
            if (phase_.load() == phase) sleep_while_equal(&phase_, phase);
            sleepers_.fetch_sub(1);
        }
    }
    if (aborted_.load()) throw TeamAborted();
}

void Barrier::abort() {
    aborted_.store(true);
    phase_.fetch_add(1);  // release every waiter; each sees aborted_ and throws
    wake_all(&phase_);
}

void run_team(int n_threads, const std::function<void(const Team&)>& body) {
    Barrier barrier;
    if (n_threads <= 1) {
        Team team;
        team.barrier = &barrier;
        body(team);
        return;
    }
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
