// cuda_on_cpu.h: just enough of CUDA for llama_np's kernels (llama_np/kernels/*.cu) to compile
// with g++ and run on the CPU, thread by thread, so that the kernels' own code (index arithmetic,
// bit fields, shuffles, barriers, the last-block merge) is tested on machines without a GPU.
// llama_np/kernels/cpu.py builds and launches them; see its docstring for what this can and cannot show.
//
// Every CUDA thread of a block is a fiber on one OS thread (a dozen instructions of assembly switch
// between them on x86-64; ucontext elsewhere, which costs a system call a switch). A fiber runs until it reaches
// __syncthreads() or a warp shuffle, then yields to the scheduler. The scheduler releases a warp's
// shuffle when all 32 lanes wait at one, and a barrier when every thread of the block waits at it,
// and reports as an error what CUDA leaves undefined or would hang on: a shuffle that some lanes of
// the warp do not reach, a barrier that some threads have returned before, a deadlock. Blocks run one
// after another, in an order shuffled by a seed, so the result must not depend on it.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::max;
using std::min;

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
// compiled with -ffp-contract=off: a * b - c is two roundings, as __fmul_rn / __fsub_rn promise
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline int atomicAdd(int* p, int v) { int old = *p; *p = old + v; return old; }
// CUDA's fast-math intrinsics, as the plain functions (accurate to float32 rounding here)
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline float __expf(float v) { return expf(v); }
inline float __logf(float v) { return logf(v); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
// the PTX conversions (asm cvt) of dtypes.cuh and widen.cu, rewritten to these by cpu.py
inline float cpu_f16_to_f32(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
inline unsigned short cpu_f32_to_f16_bits(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }

#if defined(__x86_64__)
// cpu_switch(&from_sp, to_sp): push the callee-saved registers, save the stack pointer in from_sp,
// load to_sp, pop that fiber's registers and return into it (the System V ABI saves the rest).
extern "C" void cpu_switch(void** from_sp, void* to_sp);
asm(R"(
    .text
    .globl cpu_switch
    .hidden cpu_switch
    .type cpu_switch, @function
cpu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cpu_switch, .-cpu_switch
)");
#define CPU_ASM_SWITCH 1
#endif

namespace cpu {
enum State { RUNNING, AT_BARRIER, AT_SHUFFLE, DONE };
struct Fiber {
#ifdef CPU_ASM_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    State state;
    unsigned shuffles;     // shuffles done so far: a warp's lanes must agree
};
inline std::vector<Fiber> fibers;
inline std::vector<std::vector<char>> stacks;
#ifdef CPU_ASM_SWITCH
inline void* scheduler_sp;
#else
inline ucontext_t scheduler;
#endif
inline int current;
inline void (*body)(void**);
inline void** body_args;
inline std::vector<uint64_t> slots[2];     // [generation % 2][warp * 32 + lane]
inline std::vector<char> dynamic_shared;

inline void yield(State s) {
    fibers[current].state = s;
#ifdef CPU_ASM_SWITCH
    cpu_switch(&fibers[current].sp, scheduler_sp);
#else
    swapcontext(&fibers[current].ctx, &scheduler);
#endif
}

inline void entry() {
    body(body_args);
    fibers[current].state = DONE;
#ifdef CPU_ASM_SWITCH
    cpu_switch(&fibers[current].sp, scheduler_sp);     // never resumed
    __builtin_unreachable();
#endif
}                                           // (ucontext: uc_link leads back to the scheduler)

inline void start_fiber(int t) {
    Fiber& f = fibers[t];
#ifdef CPU_ASM_SWITCH
    // the stack cpu_switch pops: six registers, then entry as the return address; entry itself
    // starts as if called (stack pointer = 8 mod 16), with a null return address above it
    uintptr_t top = ((uintptr_t)stacks[t].data() + stacks[t].size()) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;
    *--sp = (void*)&entry;
    for (int r = 0; r < 6; ++r) *--sp = nullptr;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks[t].data();
    f.ctx.uc_stack.ss_size = stacks[t].size();
    f.ctx.uc_link = &scheduler;
    makecontext(&f.ctx, entry, 0);
#endif
}

inline void resume(int t) {
#ifdef CPU_ASM_SWITCH
    cpu_switch(&scheduler_sp, fibers[t].sp);
#else
    swapcontext(&scheduler, &fibers[t].ctx);
#endif
}

template <class T>
inline T shuffle(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Fiber& f = fibers[current];
    unsigned tid = threadIdx.x, warp = tid >> 5;
    std::vector<uint64_t>& slot = slots[f.shuffles++ & 1];
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    slot[warp * 32 + (tid & 31)] = bits;
    yield(AT_SHUFFLE);
    T out;
    memcpy(&out, &slot[warp * 32 + src], sizeof(T));
    return out;
}

inline void set_thread(int t) {
    threadIdx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

// Run one block to the end. Returns "" or what went wrong.
inline std::string run_block(int n) {
    for (int t = 0; t < n; ++t) {
        fibers[t].state = RUNNING;
        fibers[t].shuffles = 0;
        start_fiber(t);
    }
    for (;;) {
        for (int t = 0; t < n; ++t) {
            if (fibers[t].state != RUNNING) continue;
            current = t;
            set_thread(t);
            resume(t);
        }
        int done = 0, barrier = 0, released = 0;
        for (int t = 0; t < n; ++t) {
            done += fibers[t].state == DONE;
            barrier += fibers[t].state == AT_BARRIER;
        }
        if (done == n) return "";
        for (int w = 0; w * 32 < n; ++w) {            // warps whose lanes all wait at a shuffle
            int lo = w * 32, hi = std::min(n, lo + 32), waiting = 0;
            for (int t = lo; t < hi; ++t) waiting += fibers[t].state == AT_SHUFFLE;
            if (waiting == 0) continue;
            if (waiting != 32)
                return "warp " + std::to_string(w) + ": a shuffle reached by " + std::to_string(waiting) +
                       " of 32 lanes (the full mask 0xffffffff needs all 32: inside an if?)";
            for (int t = lo + 1; t < hi; ++t)
                if (fibers[t].shuffles != fibers[lo].shuffles) return "warp " + std::to_string(w) + ": lanes at different shuffles";
            for (int t = lo; t < hi; ++t) fibers[t].state = RUNNING;
            released += 1;
        }
        if (released) continue;
        if (barrier) {
            if (barrier + done == n && done)
                return std::to_string(done) + " threads returned before a __syncthreads the other " +
                       std::to_string(barrier) + " wait at (inside an if, or after a return?)";
            if (barrier != n) return "deadlock: " + std::to_string(barrier) + " threads at __syncthreads";
            for (int t = 0; t < n; ++t) fibers[t].state = RUNNING;
            continue;
        }
        return "deadlock";
    }
}

// Launch: every block of the grid, in an order shuffled by seed.
inline std::string launch(void (*fn)(void**), void** args, dim3 grid, dim3 block, size_t shared, unsigned seed) {
    int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024) return "a block of " + std::to_string(n) + " threads (CUDA allows 1 to 1024)";
    if (shared > 48 * 1024) return "dynamic shared memory of " + std::to_string(shared) + " bytes (over 48 KiB)";
    if ((int)fibers.size() < n) {
        fibers.resize(n);
        stacks.resize(n);
        for (auto& s : stacks) s.resize(256 * 1024);
    }
    for (auto& s : slots) s.assign(((n + 31) / 32) * 32, 0);
    dynamic_shared.assign(shared + 16, (char)0xff);   // "uninitialised": NaN as float
    blockDim = block;
    gridDim = grid;
    body = fn;
    body_args = args;
    std::vector<uint3> order;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (size_t i = order.size(); i > 1; --i) {     // Fisher-Yates with a 64-bit LCG
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        std::swap(order[i - 1], order[(s >> 33) % i]);
    }
    for (const uint3& b : order) {
        blockIdx = b;
        std::string err = run_block(n);
        if (!err.empty())
            return "block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + "): " + err;
    }
    return "";
}

inline void* shared_memory() {                 // 16-byte aligned, as CUDA's
    uintptr_t p = (uintptr_t)dynamic_shared.data();
    return (void*)((p + 15) & ~(uintptr_t)15);
}

// Kernel arguments: args[i] points at the i-th argument's value (a pointer, an int, a float...)
template <class... A, size_t... I>
inline void call_impl(void (*k)(A...), void** a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(a[I])...);
}
template <class... A>
inline void call(void (*k)(A...), void** a) { call_impl(k, a, std::index_sequence_for<A...>{}); }

// One letter an argument: p pointer, i int, l long long, f float
template <class T> constexpr char code() {
    return std::is_pointer<T>::value ? 'p' : std::is_same<T, int>::value ? 'i'
         : std::is_same<T, long long>::value ? 'l' : std::is_same<T, float>::value ? 'f' : '?';
}
template <class... A>
inline std::string signature(void (*)(A...)) { return std::string{code<A>()...}; }
}  // namespace cpu

inline void __syncthreads() { cpu::yield(cpu::AT_BARRIER); }
inline float __shfl_down_sync(unsigned, float v, int off) {
    int lane = threadIdx.x & 31;
    return cpu::shuffle(v, lane + off < 32 ? lane + off : lane);
}
inline int __shfl_down_sync(unsigned, int v, int off) {
    int lane = threadIdx.x & 31;
    return cpu::shuffle(v, lane + off < 32 ? lane + off : lane);
}
inline float __shfl_xor_sync(unsigned, float v, int off) { return cpu::shuffle(v, (threadIdx.x & 31) ^ off); }
inline int __shfl_xor_sync(unsigned, int v, int off) { return cpu::shuffle(v, (threadIdx.x & 31) ^ off); }
