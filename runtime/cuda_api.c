/* cuda_api.c - resolving the CUDA driver with dlopen (see cuda_api.h).
 * Versioned entry points (_v2) are the ones current drivers export under
 * the plain names' semantics. */
#include "cuda_api.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kiln_cu_api_load(kiln_cu_api *a, kiln_err *err)
{
    memset(a, 0, sizeof *a);
    const char *path = getenv("KILN_LIBCUDA");
    a->lib = dlopen(path && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!a->lib)
        return kiln_errf(err, "this model runs on an NVIDIA GPU, but the CUDA driver (libcuda.so.1) cannot be "
                              "loaded: %s", dlerror());
    static const struct { size_t off; const char *name; } syms[] = {
#define S(f, n) {offsetof(kiln_cu_api, f), n}
        S(Init, "cuInit"), S(DeviceGet, "cuDeviceGet"), S(DeviceGetCount, "cuDeviceGetCount"),
        S(DeviceGetAttribute, "cuDeviceGetAttribute"), S(DeviceGetName, "cuDeviceGetName"),
        S(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain"), S(PrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"),
        S(CtxSetCurrent, "cuCtxSetCurrent"), S(ModuleLoadData, "cuModuleLoadData"),
        S(ModuleUnload, "cuModuleUnload"), S(ModuleGetFunction, "cuModuleGetFunction"),
        S(FuncSetAttribute, "cuFuncSetAttribute"), S(MemAlloc, "cuMemAlloc_v2"), S(MemFree, "cuMemFree_v2"),
        S(MemcpyHtoD, "cuMemcpyHtoD_v2"), S(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
        S(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"), S(MemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2"),
        S(MemsetD8, "cuMemsetD8_v2"), S(MemsetD32, "cuMemsetD32_v2"), S(StreamCreate, "cuStreamCreate"),
        S(StreamDestroy, "cuStreamDestroy_v2"), S(StreamSynchronize, "cuStreamSynchronize"),
        S(LaunchKernel, "cuLaunchKernel"), S(StreamBeginCapture, "cuStreamBeginCapture_v2"),
        S(StreamEndCapture, "cuStreamEndCapture"), S(GraphInstantiate, "cuGraphInstantiateWithFlags"),
        S(GraphLaunch, "cuGraphLaunch"), S(GraphExecDestroy, "cuGraphExecDestroy"),
        S(GraphDestroy, "cuGraphDestroy"), S(GetErrorString, "cuGetErrorString"),
        S(MemGetInfo, "cuMemGetInfo_v2"), S(MemHostAlloc, "cuMemHostAlloc"), S(MemFreeHost, "cuMemFreeHost"),
        S(EventCreate, "cuEventCreate"), S(EventDestroy, "cuEventDestroy_v2"), S(EventRecord, "cuEventRecord"),
        S(EventElapsedTime, "cuEventElapsedTime"),
#undef S
    };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++) {
        void *f = dlsym(a->lib, syms[i].name);
        if (!f) {
            kiln_errf(err, "the CUDA driver lacks %s (driver too old?)", syms[i].name);
            dlclose(a->lib);
            memset(a, 0, sizeof *a);
            return -1;
        }
        memcpy((char *)a + syms[i].off, &f, sizeof f);
    }
    void *f = dlsym(a->lib, "cuLaunchKernelEx");
    memcpy(&a->LaunchKernelEx, &f, sizeof f);
    return 0;
}

void kiln_cu_api_unload(kiln_cu_api *a)
{
    if (a->lib)
        dlclose(a->lib);
    memset(a, 0, sizeof *a);
}

const char *kiln_cu_strerror(const kiln_cu_api *a, CUresult r)
{
    const char *s = NULL;
    if (a->GetErrorString && a->GetErrorString(r, &s) == 0 && s)
        return s;
    return "unknown CUDA error";
}
