/* quant.c - GGML block formats (the layouts GGUF files store).
 *
 * Q4_0:  {f16 d; u8 qs[16]}            x = (nibble - 8) * d
 * Q4_1:  {f16 d; f16 m; u8 qs[16]}     x = nibble * d + m
 * Q8_0:  {f16 d; i8 qs[32]}            x = q * d
 * Q4_K:  {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}  256 elements
 * Q6_K:  {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d} 256 elements
 * In the 32-element formats byte j holds element j (low nibble) and j+16.
 */
#include "kiln_common.h"

#include <math.h>
#include <string.h>

static float rd_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return kiln_f16_to_f32(h);
}

static void wr_f16(uint8_t *p, float f)
{
    uint16_t h = kiln_f32_to_f16(f);
    memcpy(p, &h, 2);
}

/* 6-bit scale and min number j of a Q4_K super-block. */
static void q4k_scale_min(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = rd_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 0xf) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y)
{
    float d = rd_f16(b), m = rd_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 0xf) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = rd_f16(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++)
        y[j] = (float)qs[j] * d;
}

static void deq_q4_k(const uint8_t *b, float *y)
{
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    int is = 0;
    for (int j = 0; j < 256; j += 64) {
        int sc, m;
        q4k_scale_min(is, scales, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        q4k_scale_min(is + 1, scales, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)(q[l] & 0xf) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)(q[l] >> 4) - m2;
        q += 32;
        is += 2;
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rd_f16(b + 208);
    for (int n = 0; n < 256; n += 128) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int)((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = (int)((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

void kiln_dequant_row(kiln_dtype dt, const void *src, float *dst, int64_t n)
{
    const kiln_dtype_info *di = kiln_dtype_get(dt);
    const uint8_t *b = src;
    int64_t nb = n / di->block_elems;
    for (int64_t i = 0; i < nb; i++, b += di->block_bytes, dst += di->block_elems) {
        switch (dt) {
        case KILN_Q4_0: deq_q4_0(b, dst); break;
        case KILN_Q4_1: deq_q4_1(b, dst); break;
        case KILN_Q8_0: deq_q8_0(b, dst); break;
        case KILN_Q4_K: deq_q4_k(b, dst); break;
        case KILN_Q6_K: deq_q6_k(b, dst); break;
        default: memset(dst, 0, sizeof(float) * (size_t)di->block_elems); break;
        }
    }
}

int kiln_quant_row(kiln_dtype dt, const float *x, void *dst, int64_t n)
{
    uint8_t *b = dst;
    if (dt != KILN_Q4_0 && dt != KILN_Q4_1 && dt != KILN_Q8_0)
        return -1;
    for (int64_t i = 0; i + 32 <= n; i += 32, x += 32) {
        if (dt == KILN_Q8_0) {
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 127.0f, id = d ? 1.0f / d : 0;
            wr_f16(b, d);
            for (int j = 0; j < 32; j++)
                ((int8_t *)(b + 2))[j] = (int8_t)lrintf(x[j] * id);
            b += 34;
        } else if (dt == KILN_Q4_0) {
            float amax = 0, mx = 0; /* signed value of largest magnitude */
            for (int j = 0; j < 32; j++)
                if (fabsf(x[j]) > amax) {
                    amax = fabsf(x[j]);
                    mx = x[j];
                }
            float d = mx / -8.0f, id = d ? 1.0f / d : 0;
            wr_f16(b, d);
            for (int j = 0; j < 16; j++) {
                int q0 = (int)lrintf(x[j] * id) + 8, q1 = (int)lrintf(x[j + 16] * id) + 8;
                q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
                q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
                b[2 + j] = (uint8_t)(q0 | (q1 << 4));
            }
            b += 18;
        } else {
            float mn = x[0], mx = x[0];
            for (int j = 1; j < 32; j++) {
                mn = fminf(mn, x[j]);
                mx = fmaxf(mx, x[j]);
            }
            float d = (mx - mn) / 15.0f, id = d ? 1.0f / d : 0;
            wr_f16(b, d);
            wr_f16(b + 2, mn);
            for (int j = 0; j < 16; j++) {
                int q0 = (int)lrintf((x[j] - mn) * id), q1 = (int)lrintf((x[j + 16] - mn) * id);
                q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
                q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
                b[4 + j] = (uint8_t)(q0 | (q1 << 4));
            }
            b += 20;
        }
    }
    return 0;
}
