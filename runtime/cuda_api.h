/* cuda_api.h - the part of the CUDA driver API the runtime uses, declared
 * here (no cuda.h needed to build) and resolved from libcuda.so.1 with
 * dlopen, so artifacts start on machines without a GPU and fail with a
 * message only when a CUDA model is opened there. Internal to runtime/. */
#ifndef KILN_CUDA_API_H
#define KILN_CUDA_API_H

#include "kiln_common.h"

#include <stddef.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUevent_st *CUevent;

/* cuLaunchKernelEx's configuration (cuda.h layout) */
typedef struct kcu_launch_attr {
    int id;
    char pad[4];
    union {
        char pad[64];
        int value;
    } v;
} kcu_launch_attr;
typedef struct kcu_launch_config {
    unsigned gx, gy, gz, bx, by, bz, smem;
    CUstream stream;
    kcu_launch_attr *attrs;
    unsigned nattrs;
} kcu_launch_config;
#define KCU_ATTR_PROGRAMMATIC_SERIALIZATION 6

enum {
    KCU_ATTR_MULTIPROCESSOR_COUNT = 16,
    KCU_ATTR_CC_MAJOR = 75,
    KCU_ATTR_CC_MINOR = 76,
    KCU_FUNC_MAX_DYNAMIC_SMEM = 8,
    KCU_CAPTURE_THREAD_LOCAL = 1,
};

typedef struct kiln_cu_api {
    void *lib;
    CUresult (*Init)(unsigned);
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*DeviceGetCount)(int *);
    CUresult (*DeviceGetAttribute)(int *, int, CUdevice);
    CUresult (*DeviceGetName)(char *, int, CUdevice);
    CUresult (*PrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*PrimaryCtxRelease)(CUdevice);
    CUresult (*CtxSetCurrent)(CUcontext);
    CUresult (*ModuleLoadData)(CUmodule *, const void *);
    CUresult (*ModuleUnload)(CUmodule);
    CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
    CUresult (*FuncSetAttribute)(CUfunction, int, int);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
    CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
    CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*MemsetD8)(CUdeviceptr, unsigned char, size_t);
    CUresult (*MemsetD32)(CUdeviceptr, unsigned int, size_t);
    CUresult (*StreamCreate)(CUstream *, unsigned);
    CUresult (*StreamDestroy)(CUstream);
    CUresult (*StreamSynchronize)(CUstream);
    CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                             void **, void **);
    CUresult (*StreamBeginCapture)(CUstream, int);
    CUresult (*StreamEndCapture)(CUstream, CUgraph *);
    CUresult (*GraphInstantiate)(CUgraphExec *, CUgraph, unsigned long long);
    CUresult (*GraphLaunch)(CUgraphExec, CUstream);
    CUresult (*GraphExecDestroy)(CUgraphExec);
    CUresult (*GraphDestroy)(CUgraph);
    CUresult (*GetErrorString)(CUresult, const char **);
    CUresult (*MemGetInfo)(size_t *, size_t *);
    CUresult (*MemHostAlloc)(void **, size_t, unsigned);
    CUresult (*MemFreeHost)(void *);
    CUresult (*EventCreate)(CUevent *, unsigned);
    CUresult (*EventDestroy)(CUevent);
    CUresult (*EventRecord)(CUevent, CUstream);
    CUresult (*EventElapsedTime)(float *, CUevent, CUevent);
    /* optional (CUDA 12+): NULL when the driver lacks it */
    CUresult (*LaunchKernelEx)(const kcu_launch_config *, CUfunction, void **, void **);
} kiln_cu_api;

/* Loads libcuda.so.1 ($KILN_LIBCUDA overrides the path). */
int kiln_cu_api_load(kiln_cu_api *a, kiln_err *err);
void kiln_cu_api_unload(kiln_cu_api *a);
/* "CUDA_ERROR_OUT_OF_MEMORY: out of memory" style text for r. */
const char *kiln_cu_strerror(const kiln_cu_api *a, CUresult r);

#endif
