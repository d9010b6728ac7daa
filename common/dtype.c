/* dtype.c - element type table, float conversions, element load/store. */
#include "kiln_common.h"

#include <math.h>
#include <string.h>

static const kiln_dtype_info dtype_table[KILN_DT_COUNT] = {
    [KILN_DT_INVALID] = {"invalid", 1, 0, 0, 0, 0, 0},
    [KILN_F32] = {"f32", 1, 4, 1, 0, 1, 0},
    [KILN_F16] = {"f16", 1, 2, 1, 0, 1, 0},
    [KILN_BF16] = {"bf16", 1, 2, 1, 0, 1, 0},
    [KILN_F64] = {"f64", 1, 8, 1, 0, 1, 0},
    [KILN_F8E4M3] = {"f8e4m3", 1, 1, 1, 0, 1, 0},
    [KILN_F8E5M2] = {"f8e5m2", 1, 1, 1, 0, 1, 0},
    [KILN_I8] = {"i8", 1, 1, 0, 1, 1, 0},
    [KILN_U8] = {"u8", 1, 1, 0, 1, 0, 0},
    [KILN_I16] = {"i16", 1, 2, 0, 1, 1, 0},
    [KILN_U16] = {"u16", 1, 2, 0, 1, 0, 0},
    [KILN_I32] = {"i32", 1, 4, 0, 1, 1, 0},
    [KILN_U32] = {"u32", 1, 4, 0, 1, 0, 0},
    [KILN_I64] = {"i64", 1, 8, 0, 1, 1, 0},
    [KILN_U64] = {"u64", 1, 8, 0, 1, 0, 0},
    [KILN_BOOL] = {"bool", 1, 1, 0, 0, 0, 0},
    [KILN_I4] = {"i4", 2, 1, 0, 1, 1, 0},
    [KILN_U4] = {"u4", 2, 1, 0, 1, 0, 0},
    [KILN_Q4_0] = {"q4_0", 32, 18, 1, 0, 1, 1},
    [KILN_Q4_1] = {"q4_1", 32, 20, 1, 0, 1, 1},
    [KILN_Q8_0] = {"q8_0", 32, 34, 1, 0, 1, 1},
    [KILN_Q4_K] = {"q4_k", 256, 144, 1, 0, 1, 1},
    [KILN_Q6_K] = {"q6_k", 256, 210, 1, 0, 1, 1},
    [KILN_I2] = {"i2", 4, 1, 0, 1, 1, 0},
    [KILN_U2] = {"u2", 4, 1, 0, 1, 0, 0},
    [KILN_F4E2M1] = {"f4e2m1", 2, 1, 1, 0, 1, 0},
    [KILN_F8E4M3FNUZ] = {"f8e4m3fnuz", 1, 1, 1, 0, 1, 0},
    [KILN_F8E5M2FNUZ] = {"f8e5m2fnuz", 1, 1, 1, 0, 1, 0},
    [KILN_F8E8M0] = {"f8e8m0", 1, 1, 1, 0, 0, 0},
};

const kiln_dtype_info *kiln_dtype_get(kiln_dtype dt)
{
    if ((int)dt < 0 || dt >= KILN_DT_COUNT)
        dt = KILN_DT_INVALID;
    return &dtype_table[dt];
}

const char *kiln_dtype_name(kiln_dtype dt) { return kiln_dtype_get(dt)->name; }

kiln_dtype kiln_dtype_from_name(const char *name)
{
    for (int i = 1; i < KILN_DT_COUNT; i++)
        if (strcmp(dtype_table[i].name, name) == 0)
            return (kiln_dtype)i;
    return KILN_DT_INVALID;
}

size_t kiln_dtype_storage(kiln_dtype dt, int64_t n)
{
    const kiln_dtype_info *d = kiln_dtype_get(dt);
    if (n <= 0)
        return 0;
    int64_t blocks = (n + d->block_elems - 1) / d->block_elems;
    return (size_t)blocks * (size_t)d->block_bytes;
}

/* ---- f16 / bf16 ---- */

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float kiln_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f)
        return u2f(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    return u2f(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t kiln_f32_to_f16(float f)
{
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);
    if (a >= 0x477ff000u) /* rounds to >= 65520 -> inf */
        return sign | 0x7c00;
    if (a < 0x38800000u) { /* subnormal or zero in f16 */
        float v = u2f(a) * 16777216.0f; /* scale by 2^24: exact */
        /* nearbyint rounds to even in the default mode */
        return sign | (uint16_t)nearbyintf(v);
    }
    uint32_t mant = a & 0x7fffff, exp = (a >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

float kiln_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t kiln_f32_to_bf16(float f)
{
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* ---- 8-bit floats: generic minifloat rounding ---- */

/* Encodes |a| (finite, > 0) as a minifloat with `eb` exponent bits, `mb`
 * mantissa bits and bias `bias`, round to nearest even. Returns the code
 * without sign, or -1 when it exceeds `maxv`. */
static int minifloat_encode(double a, int mb, int bias, double maxv)
{
    int ex;
    frexp(a, &ex); /* a = fr * 2^ex, fr in [0.5, 1) */
    int e = ex - 1;
    int emin = 1 - bias;
    double quantum = ldexp(1.0, (e < emin ? emin : e) - mb);
    double r = nearbyint(a / quantum) * quantum;
    if (r > maxv)
        return -1;
    if (r == 0)
        return 0;
    frexp(r, &ex);
    e = ex - 1;
    if (e < emin) /* subnormal */
        return (int)(r / ldexp(1.0, emin - mb));
    int mant = (int)(r / ldexp(1.0, e - mb)) - (1 << mb);
    return ((e + bias) << mb) | mant;
}

float kiln_f8e4m3_to_f32(uint8_t v)
{
    int sign = v & 0x80, exp = (v >> 3) & 0xf, mant = v & 7;
    float r;
    if (exp == 0xf && mant == 7)
        return NAN;
    if (exp == 0)
        r = ldexpf((float)mant, -9);
    else
        r = ldexpf((float)(8 + mant), exp - 10);
    return sign ? -r : r;
}

uint8_t kiln_f32_to_f8e4m3(float f, int saturate)
{
    uint8_t sign = (f2u(f) >> 24) & 0x80;
    if (isnan(f))
        return 0x7f | sign;
    if (isinf(f))
        return saturate ? (uint8_t)(sign | 0x7e) : (uint8_t)(sign | 0x7f);
    double a = fabs((double)f);
    if (a == 0)
        return sign;
    int c = minifloat_encode(a, 3, 7, 448.0);
    if (c < 0)
        return saturate ? (uint8_t)(sign | 0x7e) : (uint8_t)(sign | 0x7f);
    return (uint8_t)(sign | c);
}

float kiln_f8e5m2_to_f32(uint8_t v)
{
    return kiln_f16_to_f32((uint16_t)((uint16_t)v << 8));
}

uint8_t kiln_f32_to_f8e5m2(float f, int saturate)
{
    uint8_t sign = (f2u(f) >> 24) & 0x80;
    if (isnan(f))
        return 0x7f | sign;
    if (isinf(f))
        return saturate ? (uint8_t)(sign | 0x7b) : (uint8_t)(sign | 0x7c);
    double a = fabs((double)f);
    if (a == 0)
        return sign;
    int c = minifloat_encode(a, 2, 15, 57344.0);
    if (c < 0)
        return saturate ? (uint8_t)(sign | 0x7b) : (uint8_t)(sign | 0x7c);
    return (uint8_t)(sign | c);
}

/* Value of a sign-less minifloat code with `mb` mantissa bits and bias
 * `bias`, every exponent field finite (the FNUZ and 4-bit layouts). */
static float minifloat_decode(int code, int mb, int bias)
{
    int e = code >> mb, m = code & ((1 << mb) - 1);
    if (e == 0)
        return ldexpf((float)m, 1 - bias - mb);
    return ldexpf((float)((1 << mb) | m), e - bias - mb);
}

/* ---- FNUZ float8: no infinities, one zero, 0x80 is the NaN ---- */

static float fnuz_to_f32(uint8_t v, int mb, int bias)
{
    if (v == 0x80)
        return NAN;
    float r = minifloat_decode(v & 0x7f, mb, bias);
    return (v & 0x80) ? -r : r;
}

static uint8_t f32_to_fnuz(float f, int saturate, int mb, int bias, double maxv)
{
    if (isnan(f))
        return 0x80;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isinf(f))
        return saturate ? (uint8_t)(sign | 0x7f) : 0x80;
    double a = fabs((double)f);
    int c = a == 0 ? 0 : minifloat_encode(a, mb, bias, maxv);
    if (c < 0)
        return saturate ? (uint8_t)(sign | 0x7f) : 0x80;
    return c == 0 ? 0 : (uint8_t)(sign | c); /* 0x80 is taken by NaN: no -0 */
}

float kiln_f8e4m3fnuz_to_f32(uint8_t v) { return fnuz_to_f32(v, 3, 8); }
uint8_t kiln_f32_to_f8e4m3fnuz(float f, int saturate) { return f32_to_fnuz(f, saturate, 3, 8, 240.0); }
float kiln_f8e5m2fnuz_to_f32(uint8_t v) { return fnuz_to_f32(v, 2, 16); }
uint8_t kiln_f32_to_f8e5m2fnuz(float f, int saturate)
{
    return f32_to_fnuz(f, saturate, 2, 16, 57344.0);
}

/* ---- f4e2m1: sign, 2 exponent bits (bias 1), 1 mantissa bit ---- */

float kiln_f4e2m1_to_f32(uint8_t v)
{
    float r = minifloat_decode(v & 7, 1, 1);
    return (v & 8) ? -r : r;
}

uint8_t kiln_f32_to_f4e2m1(float f)
{
    uint8_t sign = signbit(f) ? 8 : 0;
    if (isnan(f)) /* no NaN: ml_dtypes, and so ONNX's reference, give -0 (0 for -NaN) */
        return sign ^ 8;
    double a = fabs((double)f);
    if (isinf(f))
        return sign | 7;
    int c = a == 0 ? 0 : minifloat_encode(a, 1, 1, 6.0);
    return (uint8_t)(sign | (c < 0 ? 7 : c));
}

/* ---- f8e8m0: 2^(v-127) ---- */

float kiln_f8e8m0_to_f32(uint8_t v) { return v == 0xff ? NAN : ldexpf(1.0f, v - 127); }

/* Follows the Cast spec's table, as onnxruntime does. onnx's reference
 * differs outside it: it maps infinities to NaN even when saturating, zero to
 * 2^-127 when not, and reads f32 subnormals by their exponent field. */
uint8_t kiln_f32_to_f8e8m0(float f, int saturate, int round_mode)
{
    if (isnan(f))
        return 0xff;
    if (!(f > 0) || isinf(f)) { /* the format has no zero, sign or infinity */
        if (!saturate)
            return 0xff;
        return f > 0 ? 0xfe : 0;
    }
    if (!saturate && (f < 0x1p-127f || f > 0x1p127f))
        return 0xff;
    int ex;
    double fr = frexp((double)f, &ex); /* f = fr * 2^ex, fr in [0.5, 1) */
    int e = ex - 1;
    if (fr != 0.5 && (round_mode == KILN_ROUND_UP || (round_mode == KILN_ROUND_NEAREST && fr >= 0.75)))
        e++;
    if (e < -127)
        e = -127;
    if (e > 127) {
        if (!saturate)
            return 0xff;
        e = 127;
    }
    return (uint8_t)(e + 127);
}

/* ---- element load / store ---- */

/* Loads through memcpy: tensor data may sit unaligned inside a file's
 * bytes (ONNX raw_data in the protobuf buffer). */
#define KILN_LD(T, name)                                                                                       \
    static inline T name(const void *d, int64_t i)                                                             \
    {                                                                                                         \
        T v;                                                                                                  \
        memcpy(&v, (const uint8_t *)d + (size_t)i * sizeof(T), sizeof(T));                                   \
        return v;                                                                                             \
    }
KILN_LD(float, ld_f32)
KILN_LD(double, ld_f64)
KILN_LD(uint16_t, ld_u16)
KILN_LD(int16_t, ld_i16)
KILN_LD(int32_t, ld_i32)
KILN_LD(uint32_t, ld_u32)
KILN_LD(int64_t, ld_i64)
KILN_LD(uint64_t, ld_u64)
#undef KILN_LD

double kiln_load_f64(kiln_dtype dt, const void *data, int64_t i)
{
    const uint8_t *p = data;
    switch (dt) {
    case KILN_F32: return ld_f32(data, i);
    case KILN_F16: return kiln_f16_to_f32(ld_u16(data, i));
    case KILN_BF16: return kiln_bf16_to_f32(ld_u16(data, i));
    case KILN_F64: return ld_f64(data, i);
    case KILN_F8E4M3: return kiln_f8e4m3_to_f32(p[i]);
    case KILN_F8E5M2: return kiln_f8e5m2_to_f32(p[i]);
    case KILN_F8E4M3FNUZ: return kiln_f8e4m3fnuz_to_f32(p[i]);
    case KILN_F8E5M2FNUZ: return kiln_f8e5m2fnuz_to_f32(p[i]);
    case KILN_F8E8M0: return kiln_f8e8m0_to_f32(p[i]);
    case KILN_F4E2M1: return kiln_f4e2m1_to_f32((uint8_t)((p[i >> 1] >> ((i & 1) * 4)) & 0xf));
    case KILN_BOOL: return p[i] ? 1.0 : 0.0;
    case KILN_U64: return (double)ld_u64(data, i);
    default:
        if (kiln_dtype_get(dt)->is_int)
            return (double)kiln_load_i64(dt, data, i);
        return NAN; /* block formats have no per-element access */
    }
}

int64_t kiln_load_i64(kiln_dtype dt, const void *data, int64_t i)
{
    const uint8_t *p = data;
    switch (dt) {
    case KILN_I8: return ((const int8_t *)data)[i];
    case KILN_U8: return p[i];
    case KILN_I16: return ld_i16(data, i);
    case KILN_U16: return ld_u16(data, i);
    case KILN_I32: return ld_i32(data, i);
    case KILN_U32: return ld_u32(data, i);
    case KILN_I64: return ld_i64(data, i);
    case KILN_U64: return (int64_t)ld_u64(data, i);
    case KILN_BOOL: return p[i] != 0;
    case KILN_I4: {
        int v = (p[i >> 1] >> ((i & 1) * 4)) & 0xf;
        return v >= 8 ? v - 16 : v;
    }
    case KILN_U4: return (p[i >> 1] >> ((i & 1) * 4)) & 0xf;
    case KILN_I2: {
        int v = (p[i >> 2] >> ((i & 3) * 2)) & 3;
        return v >= 2 ? v - 4 : v;
    }
    case KILN_U2: return (p[i >> 2] >> ((i & 3) * 2)) & 3;
    default: {
        double v = kiln_load_f64(dt, data, i);
        if (isnan(v))
            return 0;
        if (v >= 9.2233720368547758e18)
            return INT64_MAX;
        if (v <= -9.2233720368547758e18)
            return INT64_MIN;
        return (int64_t)v;
    }
    }
}

/* Clamped double -> integer conversion; out-of-range casts are UB in C. */
static int64_t clamp_i64(double v, double lo, double hi)
{
    if (isnan(v))
        return 0;
    if (v < lo)
        v = lo;
    if (v > hi)
        v = hi;
    return (int64_t)v;
}

void kiln_store_f64(kiln_dtype dt, void *data, int64_t i, double v)
{
    uint8_t *p = data;
    switch (dt) {
    case KILN_F32: ((float *)data)[i] = (float)v; return;
    case KILN_F16: ((uint16_t *)data)[i] = kiln_f32_to_f16((float)v); return;
    case KILN_BF16: ((uint16_t *)data)[i] = kiln_f32_to_bf16((float)v); return;
    case KILN_F64: ((double *)data)[i] = v; return;
    case KILN_F8E4M3: p[i] = kiln_f32_to_f8e4m3((float)v, 1); return;
    case KILN_F8E5M2: p[i] = kiln_f32_to_f8e5m2((float)v, 1); return;
    case KILN_F8E4M3FNUZ: p[i] = kiln_f32_to_f8e4m3fnuz((float)v, 1); return;
    case KILN_F8E5M2FNUZ: p[i] = kiln_f32_to_f8e5m2fnuz((float)v, 1); return;
    case KILN_F8E8M0: p[i] = kiln_f32_to_f8e8m0((float)v, 1, KILN_ROUND_NEAREST); return;
    case KILN_F4E2M1: {
        int sh = (int)(i & 1) * 4;
        p[i >> 1] = (uint8_t)((p[i >> 1] & ~(0xf << sh)) | (kiln_f32_to_f4e2m1((float)v) << sh));
        return;
    }
    case KILN_BOOL: p[i] = v != 0; return;
    case KILN_I8: ((int8_t *)data)[i] = (int8_t)clamp_i64(v, -128, 127); return;
    case KILN_U8: p[i] = (uint8_t)clamp_i64(v, 0, 255); return;
    case KILN_I16: ((int16_t *)data)[i] = (int16_t)clamp_i64(v, -32768, 32767); return;
    case KILN_U16: ((uint16_t *)data)[i] = (uint16_t)clamp_i64(v, 0, 65535); return;
    case KILN_I32: ((int32_t *)data)[i] = (int32_t)clamp_i64(v, -2147483648.0, 2147483647.0); return;
    case KILN_U32: ((uint32_t *)data)[i] = (uint32_t)clamp_i64(v, 0, 4294967295.0); return;
    case KILN_I64: ((int64_t *)data)[i] = clamp_i64(v, -9.2233720368547758e18, 9.2233720368547748e18); return;
    case KILN_U64:
        ((uint64_t *)data)[i] = (isnan(v) || v < 0) ? 0 : v >= 1.8446744073709552e19 ? UINT64_MAX : (uint64_t)v;
        return;
    case KILN_I4:
    case KILN_U4:
    case KILN_I2:
    case KILN_U2: /* wrap, as ml_dtypes and the generated code do */
        kiln_store_i64(dt, data, i, clamp_i64(v, -9.2233720368547758e18, 9.2233720368547748e18));
        return;
    default: return;
    }
}

void kiln_store_i64(kiln_dtype dt, void *data, int64_t i, int64_t v)
{
    uint8_t *p = data;
    switch (dt) {
    case KILN_I8: ((int8_t *)data)[i] = (int8_t)v; return;
    case KILN_U8: p[i] = (uint8_t)v; return;
    case KILN_I16: ((int16_t *)data)[i] = (int16_t)v; return;
    case KILN_U16: ((uint16_t *)data)[i] = (uint16_t)v; return;
    case KILN_I32: ((int32_t *)data)[i] = (int32_t)v; return;
    case KILN_U32: ((uint32_t *)data)[i] = (uint32_t)v; return;
    case KILN_I64: ((int64_t *)data)[i] = v; return;
    case KILN_U64: ((uint64_t *)data)[i] = (uint64_t)v; return;
    case KILN_BOOL: p[i] = v != 0; return;
    case KILN_I4:
    case KILN_U4: {
        int sh = (int)(i & 1) * 4;
        p[i >> 1] = (uint8_t)((p[i >> 1] & ~(0xf << sh)) | ((v & 0xf) << sh));
        return;
    }
    case KILN_I2:
    case KILN_U2: {
        int sh = (int)(i & 3) * 2;
        p[i >> 2] = (uint8_t)((p[i >> 2] & ~(3 << sh)) | ((v & 3) << sh));
        return;
    }
    default: kiln_store_f64(dt, data, i, (double)v); return;
    }
}

void kiln_store_cast(kiln_dtype dt, void *data, int64_t i, double v, int saturate, int round_mode)
{
    uint8_t *p = data;
    switch (dt) {
    case KILN_F8E4M3: p[i] = kiln_f32_to_f8e4m3((float)v, saturate); return;
    case KILN_F8E5M2: p[i] = kiln_f32_to_f8e5m2((float)v, saturate); return;
    case KILN_F8E4M3FNUZ: p[i] = kiln_f32_to_f8e4m3fnuz((float)v, saturate); return;
    case KILN_F8E5M2FNUZ: p[i] = kiln_f32_to_f8e5m2fnuz((float)v, saturate); return;
    case KILN_F8E8M0: p[i] = kiln_f32_to_f8e8m0((float)v, saturate, round_mode); return;
    default: kiln_store_f64(dt, data, i, v); return; /* integers truncate like C casts */
    }
}

void kiln_elem_copy(kiln_dtype dt, void *dst, int64_t di, const void *src, int64_t si)
{
    const kiln_dtype_info *d = kiln_dtype_get(dt);
    uint8_t *o = dst;
    const uint8_t *in = src;
    if (d->is_quant)
        return;
    if (d->block_elems == 1) {
        memcpy(o + di * d->block_bytes, in + si * d->block_bytes, (size_t)d->block_bytes);
        return;
    }
    int per = d->block_elems, bits = 8 / per, mask = (1 << bits) - 1;
    int v = (in[si / per] >> ((si % per) * bits)) & mask;
    int sh = (int)(di % per) * bits;
    o[di / per] = (uint8_t)((o[di / per] & ~(mask << sh)) | (v << sh));
}
