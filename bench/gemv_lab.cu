// bench/gemv_lab.cu - decode GEMV variants (bf16 weights, f32 x, batch 1),
// timed on the GPU to choose the structure kiln's CUDA code generator emits
// (codegen/cuda/cu_matmul.c). Not part of the product: a measurement tool.
//
//   nvcc -O3 -arch=sm_90 -o gemv_lab bench/gemv_lab.cu   (any machine with nvcc)
//   ./gemv_lab                                            (on the GPU machine)
//
// Each variant computes y[n] = sum_k W[n,k] x[k] for the decode shapes of a
// Llama-3.2-1B layer and its logits, checked against a float64 CPU result,
// timed over weight copies that together exceed L2 (a decode step streams
// ~120 MB per layer, so a layer's matrix is never cached). Prints GB/s.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x)                                                                                         \
    do {                                                                                              \
        cudaError_t e_ = (x);                                                                         \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));      \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

typedef unsigned short u16;

__device__ __forceinline__ uint4 ldw(const void *p)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ float lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ float wsum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float dot8(uint4 w, const float *x)
{
    const float4 a = *(const float4 *)x, b = *(const float4 *)(x + 4);
    return lo(w.x) * a.x + hi(w.x) * a.y + lo(w.y) * a.z + hi(w.y) * a.w + lo(w.z) * b.x + hi(w.z) * b.y +
           lo(w.w) * b.z + hi(w.w) * b.w;
}

// V0: kiln's current structure. One shot per warp: RPW rows, batches of U
// 16-byte loads per row and lane, x from global memory.
template <int RPW, int U>
__global__ void __launch_bounds__(256) v_oneshot(const u16 *W, const float *x, float *y, int N, int K)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * 8 + warp) * RPW;
    if (row0 >= N)
        return;
    const int nch = K / 8;
    float acc[RPW] = {};
    for (int c0 = 0; c0 < nch; c0 += 32 * U) {
        uint4 wb[RPW][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < RPW; r++)
                wb[r][u] = ldw(W + (size_t)(row0 + r) * K + (c0 + u * 32 + lane) * 8);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float *xp = x + (c0 + u * 32 + lane) * 8;
#pragma unroll
            for (int r = 0; r < RPW; r++)
                acc[r] += dot8(wb[r][u], xp);
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        float v = wsum(acc[r]);
        if (lane == 0)
            y[row0 + r] = v;
    }
}

// V1: persistent warps (grid-stride over row units); x prefetched into L1
// at the start so the per-use x loads hit L1.
template <int RPW, int U>
__global__ void __launch_bounds__(256) v_stride(const u16 *W, const float *x, float *y, int N, int K)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int o = threadIdx.x * 32; o < K; o += blockDim.x * 32)
        asm volatile("prefetch.global.L1 [%0];" ::"l"(x + o));
    const int nch = K / 8, units = N / RPW;
    for (int un = blockIdx.x * 8 + warp; un < units; un += gridDim.x * 8) {
        const int row0 = un * RPW;
        float acc[RPW] = {};
        for (int c0 = 0; c0 < nch; c0 += 32 * U) {
            uint4 wb[RPW][U];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < RPW; r++)
                    wb[r][u] = ldw(W + (size_t)(row0 + r) * K + (c0 + u * 32 + lane) * 8);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const float *xp = x + (c0 + u * 32 + lane) * 8;
#pragma unroll
                for (int r = 0; r < RPW; r++)
                    acc[r] += dot8(wb[r][u], xp);
            }
        }
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float v = wsum(acc[r]);
            if (lane == 0)
                y[row0 + r] = v;
        }
    }
}

// V2: persistent warps, one row per step of U loads per lane, software
// pipelined: the loads of the next (row, chunk) step are issued before the
// current step is computed, so each warp always has a batch in flight.
template <int U>
__global__ void __launch_bounds__(256) v_pipe(const u16 *W, const float *x, float *y, int N, int K)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int o = threadIdx.x * 32; o < K; o += blockDim.x * 32)
        asm volatile("prefetch.global.L1 [%0];" ::"l"(x + o));
    const int nch = K / 8, spr = nch / (32 * U); // steps per row
    const int tw = gridDim.x * 8;
    int row = blockIdx.x * 8 + warp, c0 = 0;
    if (row >= N)
        return;
    uint4 cur[U], nxt[U];
#pragma unroll
    for (int u = 0; u < U; u++)
        cur[u] = ldw(W + (size_t)row * K + (u * 32 + lane) * 8);
    float acc = 0.f;
    int step = 0;
    for (;;) {
        // next step's coordinates
        int nrow = row, nc0 = c0 + 32 * U, nstep = step + 1;
        if (nstep == spr) {
            nrow = row + tw;
            nc0 = 0;
            nstep = 0;
        }
        const bool more = nrow < N;
        if (more) {
#pragma unroll
            for (int u = 0; u < U; u++)
                nxt[u] = ldw(W + (size_t)nrow * K + (nc0 + u * 32 + lane) * 8);
        }
#pragma unroll
        for (int u = 0; u < U; u++)
            acc += dot8(cur[u], x + (c0 + u * 32 + lane) * 8);
        if (nstep == 0) {
            const float v = wsum(acc);
            if (lane == 0)
                y[row] = v;
            acc = 0.f;
        }
        if (!more)
            break;
        row = nrow;
        c0 = nc0;
        step = nstep;
#pragma unroll
        for (int u = 0; u < U; u++)
            cur[u] = nxt[u];
    }
}

// V3: many small blocks (the logits GEMV's regime, which streams near copy
// bandwidth): a block of T threads owns R rows; each thread loads J chunks
// of 8 weights per row per batch, all R*J loads issued before any use;
// warp shuffle then a shared-memory sum across the block's warps.
template <int T, int R, int J>
__global__ void __launch_bounds__(T) v_blockrows(const u16 *W, const float *x, float *y, int N, int K)
{
    __shared__ float part[T / 32][R];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int row0 = blockIdx.x * R;
    if (row0 >= N)
        return;
    const int nch = K / 8;
    float acc[R] = {};
    for (int c0 = 0; c0 < nch; c0 += T * J) {
        uint4 wb[R][J];
#pragma unroll
        for (int j = 0; j < J; j++)
#pragma unroll
            for (int r = 0; r < R; r++)
                wb[r][j] = ldw(W + (size_t)(row0 + r) * K + (c0 + j * T + tid) * 8);
#pragma unroll
        for (int j = 0; j < J; j++) {
            const float *xp = x + (c0 + j * T + tid) * 8;
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] += dot8(wb[r][j], xp);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float v = wsum(acc[r]);
        if (lane == 0)
            part[warp][r] = v;
    }
    __syncthreads();
    if (tid < R) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < T / 32; w++)
            v += part[w][tid];
        y[row0 + tid] = v;
    }
}

struct shape {
    const char *name;
    int N, K;
};

typedef void (*kfn)(const u16 *, const float *, float *, int, int);
struct variant {
    const char *name;
    kfn f;
    int rpw;     // rows per warp unit (grid sizing of one-shot kernels)
    int persist; // blocks per SM for persistent kernels (0: one shot)
    int threads; // block size (0: 256, 8 warps per block)
    int kmult;   // K must be a multiple of this (else the variant is skipped)
};

static float bf2f(u16 b)
{
    unsigned u = (unsigned)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main()
{
    int dev = 0, nsm = 0;
    CK(cudaSetDevice(dev));
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, nsm, prop.l2CacheSize >> 20);
    const shape shapes[] = {
        {"gate+up 16384x2048", 16384, 2048}, {"down 2048x8192", 2048, 8192}, {"qkv 3072x2048", 3072, 2048},
        {"o 2048x2048", 2048, 2048},         {"logits 128256x2048", 128256, 2048},
    };
    const variant vars[] = {
        {"oneshot rpw2 u8 (kiln now)", v_oneshot<2, 8>, 2, 0},
        {"oneshot rpw1 u8", v_oneshot<1, 8>, 1, 0},
        {"stride rpw2 u8 x2/SM", v_stride<2, 8>, 2, 2},
        {"stride rpw2 u8 x4/SM", v_stride<2, 8>, 2, 4},
        {"stride rpw1 u8 x4/SM", v_stride<1, 8>, 1, 4},
        {"stride rpw1 u8 x8/SM", v_stride<1, 8>, 1, 8},
        {"pipe u4 x4/SM", v_pipe<4>, 1, 4},
        {"pipe u8 x2/SM", v_pipe<8>, 1, 2},
        {"pipe u8 x3/SM", v_pipe<8>, 1, 3},
        {"pipe u8 x4/SM", v_pipe<8>, 1, 4},
        {"blk T128 R4 J2", v_blockrows<128, 4, 2>, 4, 0, 128, 2048},
        {"blk T128 R2 J2", v_blockrows<128, 2, 2>, 2, 0, 128, 2048},
        {"blk T256 R2 J1", v_blockrows<256, 2, 1>, 2, 0, 256, 2048},
        {"blk T64 R4 J4", v_blockrows<64, 4, 4>, 4, 0, 64, 2048},
        {"blk T128 R1 J4", v_blockrows<128, 1, 4>, 1, 0, 128, 4096},
        {"blk T256 R1 J4", v_blockrows<256, 1, 4>, 1, 0, 256, 8192},
        {"blk T64 R8 J2", v_blockrows<64, 8, 2>, 8, 0, 64, 1024},
    };
    const int nv = sizeof vars / sizeof vars[0], ns = sizeof shapes / sizeof shapes[0];
    printf("%-20s | %-28s | %6s | %s\n", "shape", "variant", "GB/s", "us");
    srand(1);
    for (int s = 0; s < ns; s++) {
        const int N = shapes[s].N, K = shapes[s].K;
        const size_t wbytes = (size_t)N * K * 2;
        int copies = (int)((400u << 20) / wbytes) + 1; // > 400 MB in rotation: never L2-resident
        if (copies > 64)
            copies = 64;
        std::vector<u16> hw((size_t)N * K);
        std::vector<float> hx(K);
        for (auto &w : hw)
            w = (u16)(0x3c00 + (rand() & 0x3ff) - 0x200 + ((rand() & 1) << 15)); // bf16 in about +-[0.004, 0.03]
        for (auto &v : hx)
            v = (float)rand() / RAND_MAX - 0.5f;
        std::vector<double> ref(N);
        for (int n = 0; n < N; n++) {
            double a = 0;
            for (int k = 0; k < K; k++)
                a += (double)bf2f(hw[(size_t)n * K + k]) * hx[k];
            ref[n] = a;
        }
        std::vector<u16 *> dw(copies);
        for (int c = 0; c < copies; c++) {
            CK(cudaMalloc(&dw[c], wbytes));
            CK(cudaMemcpy(dw[c], hw.data(), wbytes, cudaMemcpyHostToDevice));
        }
        float *dx, *dy;
        CK(cudaMalloc(&dx, K * 4));
        CK(cudaMalloc(&dy, (size_t)N * 4));
        CK(cudaMemcpy(dx, hx.data(), K * 4, cudaMemcpyHostToDevice));
        for (int v = 0; v < nv; v++) {
            const variant &V = vars[v];
            const int threads = V.threads ? V.threads : 256;
            if (V.kmult && K % V.kmult) {
                continue;
            }
            int grid = V.persist ? nsm * V.persist : V.threads ? N / V.rpw : (N / V.rpw + 7) / 8;
            // correctness: poison, run, compare
            CK(cudaMemset(dy, 0xff, (size_t)N * 4));
            V.f<<<grid, threads>>>(dw[0], dx, dy, N, K);
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            std::vector<float> hy(N);
            CK(cudaMemcpy(hy.data(), dy, (size_t)N * 4, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (int n = 0; n < N; n++) {
                double d = (double)hy[n] - ref[n];
                num += d * d;
                den += ref[n] * ref[n];
            }
            double rel = std::isfinite(num) ? sqrt(num / den) : INFINITY;
            // timing: warm-up, then reps over the rotating copies
            int reps = (int)(4e9 / wbytes);
            if (reps < 20)
                reps = 20;
            if (reps > 2000)
                reps = 2000;
            for (int r = 0; r < copies; r++)
                V.f<<<grid, threads>>>(dw[r % copies], dx, dy, N, K);
            // launches captured in a graph, as kiln's decode steps replay them
            const int per = 50;
            reps = (reps + per - 1) / per * per;
            cudaStream_t st;
            CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
            cudaGraph_t gr;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int r = 0; r < per; r++)
                V.f<<<grid, threads, 0, st>>>(dw[r % copies], dx, dy, N, K);
            CK(cudaStreamEndCapture(st, &gr));
            CK(cudaGraphInstantiate(&ge, gr, 0));
            CK(cudaGraphLaunch(ge, st));
            CK(cudaStreamSynchronize(st));
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            CK(cudaEventRecord(e0, st));
            for (int r = 0; r < reps; r += per)
                CK(cudaGraphLaunch(ge, st));
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            CK(cudaGetLastError());
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            double us = 1e3 * ms / reps;
            printf("%-20s | %-28s | %6.0f | %6.1f%s\n", shapes[s].name, V.name, wbytes / us / 1e3, us,
                   rel < 1e-5 ? "" : " WRONG");
            fflush(stdout);
            CK(cudaEventDestroy(e0));
            CK(cudaEventDestroy(e1));
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(gr));
            CK(cudaStreamDestroy(st));
        }
        for (int c = 0; c < copies; c++)
            CK(cudaFree(dw[c]));
        CK(cudaFree(dx));
        CK(cudaFree(dy));
    }
    return 0;
}
