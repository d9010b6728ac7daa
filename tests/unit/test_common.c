/* Unit tests of common/: float conversions, block formats, .npy, maps. */
#include "check.h"
#include "kiln_common.h"

#include <stdlib.h>
#include <unistd.h>

static void test_f16(void)
{
    CHECK(kiln_f32_to_f16(1.0f) == 0x3c00);
    CHECK(kiln_f32_to_f16(-2.0f) == 0xc000);
    CHECK(kiln_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(kiln_f32_to_f16(65520.0f) == 0x7c00); /* rounds to inf */
    CHECK(kiln_f32_to_f16(5.960464477539063e-08f) == 0x0001); /* smallest subnormal */
    CHECK(kiln_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);     /* tie to even */
    CHECK(kiln_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);
    CHECK(isnan(kiln_f16_to_f32(kiln_f32_to_f16(NAN))));
    /* every finite f16 survives f16 -> f32 -> f16 */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        if (kiln_f32_to_f16(kiln_f16_to_f32((uint16_t)h)) != h)
            bad++;
    }
    CHECK(bad == 0);
}

static void test_bf16_f8(void)
{
    CHECK(kiln_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(kiln_bf16_to_f32(0x4049) == 3.140625f);
    CHECK(kiln_f32_to_bf16(1.00390625f) == 0x3f80); /* tie to even */
    CHECK(kiln_f8e4m3_to_f32(0x7e) == 448.0f);
    CHECK(kiln_f32_to_f8e4m3(1000.0f, 1) == 0x7e);
    CHECK(kiln_f32_to_f8e4m3(1000.0f, 0) == 0x7f);
    CHECK(kiln_f32_to_f8e4m3(-0.5f, 1) == 0xb0);
    int bad = 0;
    for (int v = 0; v < 256; v++) {
        float f = kiln_f8e4m3_to_f32((uint8_t)v);
        if (!isnan(f) && kiln_f32_to_f8e4m3(f, 0) != v && !(f == 0 && v == 0x80))
            bad++;
        float g = kiln_f8e5m2_to_f32((uint8_t)v);
        if (!isnan(g) && !isinf(g) && kiln_f32_to_f8e5m2(g, 0) != v)
            bad++;
    }
    CHECK(bad == 0);
    CHECK(kiln_f8e5m2_to_f32(0x7b) == 57344.0f);
}

/* Value of a sign-magnitude minifloat code, spelled out independently of
 * dtype.c: `eb` exponent bits, `mb` mantissa bits, every exponent finite. */
static double minifloat_value(int code, int eb, int mb, int bias)
{
    int sign = (code >> (eb + mb)) & 1;
    int e = (code >> mb) & ((1 << eb) - 1), m = code & ((1 << mb) - 1);
    double v = e == 0 ? (m / pow(2, mb)) * pow(2, 1 - bias) : (1 + m / pow(2, mb)) * pow(2, e - bias);
    return sign ? -v : v;
}

typedef struct fnuz_fmt {
    float (*dec)(uint8_t);
    uint8_t (*enc)(float, int);
    int eb, mb, bias;
    double maxv;
} fnuz_fmt;

static void test_fnuz(void)
{
    const fnuz_fmt fmts[2] = {
        {kiln_f8e4m3fnuz_to_f32, kiln_f32_to_f8e4m3fnuz, 4, 3, 8, 240.0},
        {kiln_f8e5m2fnuz_to_f32, kiln_f32_to_f8e5m2fnuz, 5, 2, 16, 57344.0},
    };
    for (int k = 0; k < 2; k++) {
        const fnuz_fmt *f = &fmts[k];
        int bad_dec = 0, bad_rt = 0, bad_tie = 0;
        for (int c = 0; c < 256; c++) {
            float d = f->dec((uint8_t)c);
            if (c == 0x80) {
                bad_dec += !isnan(d);
                continue;
            }
            bad_dec += d != minifloat_value(c, f->eb, f->mb, f->bias);
            bad_rt += f->enc(d, 0) != (c == 0 ? 0 : c);
            /* halfway to the next code rounds to the even one; just off it, to the nearer */
            if ((c & 0x7f) < 0x7f) {
                double a = minifloat_value(c, f->eb, f->mb, f->bias);
                double b = minifloat_value(c + 1, f->eb, f->mb, f->bias);
                int even = (c & 1) ? c + 1 : c;
                float mid = (float)((a + b) / 2);
                bad_tie += f->enc(mid, 0) != (even == 0x80 ? 0 : even);
                bad_tie += f->enc(nextafterf(mid, 0), 0) != (c == 0x80 ? 0 : c);
                bad_tie += f->enc(nextafterf(mid, INFINITY * (float)(c & 0x80 ? -1 : 1)), 0) != c + 1;
            }
        }
        CHECK(bad_dec == 0);
        CHECK(bad_rt == 0);
        CHECK(bad_tie == 0);
        CHECK(f->dec(0x7f) == f->maxv && f->dec(0xff) == -f->maxv);
        CHECK(f->enc(-0.0f, 1) == 0);                   /* no negative zero */
        CHECK(f->enc(-1e-7f, 1) == 0); /* tiny negatives too */
        CHECK(f->enc(NAN, 1) == 0x80 && f->enc(-NAN, 0) == 0x80);
        CHECK(f->enc(INFINITY, 1) == 0x7f && f->enc(-INFINITY, 1) == 0xff);
        CHECK(f->enc(INFINITY, 0) == 0x80 && f->enc(-INFINITY, 0) == 0x80);
        CHECK(f->enc((float)f->maxv * 2, 1) == 0x7f && f->enc((float)f->maxv * 2, 0) == 0x80);
        CHECK(f->enc((float)-f->maxv * 2, 1) == 0xff);
    }
    /* the halfway point above the maximum rounds up past it: NaN unless saturating */
    CHECK(kiln_f32_to_f8e4m3fnuz(248.0f, 0) == 0x80 && kiln_f32_to_f8e4m3fnuz(248.0f, 1) == 0x7f);
    CHECK(kiln_f32_to_f8e4m3fnuz(247.0f, 0) == 0x7f);
    CHECK(kiln_f32_to_f8e5m2fnuz(61440.0f, 0) == 0x80 && kiln_f32_to_f8e5m2fnuz(61439.0f, 0) == 0x7f);
}

static void test_f4e2m1(void)
{
    int bad = 0;
    for (int c = 0; c < 16; c++) {
        float d = kiln_f4e2m1_to_f32((uint8_t)c);
        bad += d != minifloat_value(c, 2, 1, 1) || (signbit(d) != 0) != (c >= 8);
        bad += kiln_f32_to_f4e2m1(d) != c;
    }
    CHECK(bad == 0);
    CHECK(kiln_f4e2m1_to_f32(7) == 6.0f && kiln_f4e2m1_to_f32(1) == 0.5f);
    /* ties to even: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4 */
    const float x[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 0.26f, 5.01f};
    const uint8_t want[] = {0, 2, 2, 4, 4, 6, 6, 1, 7};
    for (int i = 0; i < 9; i++) {
        CHECK(kiln_f32_to_f4e2m1(x[i]) == want[i]);
        CHECK(kiln_f32_to_f4e2m1(-x[i]) == (want[i] | 8));
    }
    CHECK(kiln_f32_to_f4e2m1(100.0f) == 7 && kiln_f32_to_f4e2m1(-INFINITY) == 15);
    CHECK(kiln_f32_to_f4e2m1(-0.1f) == 8); /* keeps the sign of zero */
    CHECK(kiln_f32_to_f4e2m1(NAN) == 8 && kiln_f32_to_f4e2m1(-NAN) == 0);
}

static void test_f8e8m0(void)
{
    int bad = 0;
    for (int c = 0; c < 255; c++)
        bad += kiln_f8e8m0_to_f32((uint8_t)c) != pow(2, c - 127);
    CHECK(bad == 0);
    CHECK(isnan(kiln_f8e8m0_to_f32(0xff)));
    bad = 0;
    for (int k = -127; k <= 127; k++) {
        float p = (float)pow(2, k);
        for (int sat = 0; sat < 2; sat++)
            for (int m = KILN_ROUND_UP; m <= KILN_ROUND_NEAREST; m++)
                bad += kiln_f32_to_f8e8m0(p, sat, m) != k + 127;
        /* between 2^k and 2^(k+1): down gives k; up k+1; nearest k+1 from 1.5*2^k on */
        int up = k + 1 > 127 ? 0xfe : k + 128;
        bad += kiln_f32_to_f8e8m0(p * 1.25f, 1, KILN_ROUND_DOWN) != k + 127;
        bad += kiln_f32_to_f8e8m0(p * 1.25f, 1, KILN_ROUND_UP) != up;
        bad += kiln_f32_to_f8e8m0(p * 1.25f, 1, KILN_ROUND_NEAREST) != k + 127;
        bad += kiln_f32_to_f8e8m0(p * 1.5f, 1, KILN_ROUND_NEAREST) != up;
        bad += kiln_f32_to_f8e8m0(p * 1.75f, 1, KILN_ROUND_NEAREST) != up;
    }
    CHECK(bad == 0);
    /* saturating: infinities and overflow to the largest, zero and below to the smallest */
    CHECK(kiln_f32_to_f8e8m0(INFINITY, 1, KILN_ROUND_UP) == 0xfe);
    CHECK(kiln_f32_to_f8e8m0(0.0f, 1, KILN_ROUND_UP) == 0);
    CHECK(kiln_f32_to_f8e8m0(-3.0f, 1, KILN_ROUND_NEAREST) == 0);
    CHECK(kiln_f32_to_f8e8m0(1e-39f, 1, KILN_ROUND_UP) == 0);
    CHECK(kiln_f32_to_f8e8m0(3e38f, 1, KILN_ROUND_UP) == 0xfe);
    /* otherwise NaN */
    CHECK(kiln_f32_to_f8e8m0(INFINITY, 0, KILN_ROUND_UP) == 0xff);
    CHECK(kiln_f32_to_f8e8m0(0.0f, 0, KILN_ROUND_NEAREST) == 0xff);
    CHECK(kiln_f32_to_f8e8m0(-3.0f, 0, KILN_ROUND_NEAREST) == 0xff);
    CHECK(kiln_f32_to_f8e8m0(1e-39f, 0, KILN_ROUND_UP) == 0xff);
    CHECK(kiln_f32_to_f8e8m0(3e38f, 0, KILN_ROUND_UP) == 0xff);
    CHECK(kiln_f32_to_f8e8m0(3e38f, 0, KILN_ROUND_DOWN) == 0xff); /* past 2^127 before rounding */
    CHECK(kiln_f32_to_f8e8m0(NAN, 1, KILN_ROUND_UP) == 0xff);
}

static void test_packed(void)
{
    /* i2: four per byte, element 0 in the lowest bits */
    uint8_t b[3] = {0, 0, 0};
    const int v2[7] = {1, -2, -1, 0, 1, -2, -1};
    int want0 = 0, want1 = 0;
    for (int i = 0; i < 7; i++) {
        kiln_store_i64(KILN_I2, b, i, v2[i]);
        *(i < 4 ? &want0 : &want1) |= (v2[i] & 3) << ((i % 4) * 2);
    }
    CHECK(b[0] == want0 && b[1] == want1 && b[2] == 0);
    int bad = 0;
    for (int i = 0; i < 7; i++)
        bad += kiln_load_i64(KILN_I2, b, i) != v2[i] || kiln_load_f64(KILN_I2, b, i) != v2[i] ||
               kiln_load_i64(KILN_U2, b, i) != (v2[i] & 3);
    CHECK(bad == 0);
    CHECK(kiln_dtype_storage(KILN_I2, 5) == 2 && kiln_dtype_storage(KILN_U2, 8) == 2);
    CHECK(kiln_dtype_storage(KILN_F4E2M1, 5) == 3);
    /* sub-byte integers truncate and wrap; wider ones clamp */
    kiln_store_f64(KILN_I2, b, 5, 3.7);
    CHECK(kiln_load_i64(KILN_I2, b, 5) == -1 && kiln_load_i64(KILN_I2, b, 4) == 1);
    kiln_store_f64(KILN_U4, b, 1, -1.0);
    CHECK(kiln_load_i64(KILN_U4, b, 1) == 15);
    kiln_store_f64(KILN_I4, b, 0, -9.5);
    CHECK(kiln_load_i64(KILN_I4, b, 0) == 7);
    int8_t c8;
    kiln_store_f64(KILN_I8, &c8, 0, -300.0);
    CHECK(c8 == -128);
    /* f4e2m1 packs like i4 */
    uint8_t f[2] = {0, 0};
    kiln_store_f64(KILN_F4E2M1, f, 0, 1.5);
    kiln_store_f64(KILN_F4E2M1, f, 1, -6);
    kiln_store_f64(KILN_F4E2M1, f, 2, 0.5);
    CHECK(f[0] == (3 | 15 << 4) && f[1] == 1);
    CHECK(kiln_load_f64(KILN_F4E2M1, f, 1) == -6.0 && kiln_load_f64(KILN_F4E2M1, f, 2) == 0.5);
    /* element copies keep the bits of every packed type */
    uint8_t g[2] = {0xff, 0xff};
    kiln_elem_copy(KILN_F4E2M1, g, 3, f, 0);
    kiln_elem_copy(KILN_F4E2M1, g, 0, f, 1);
    CHECK(g[0] == (15 | 0xf0) && g[1] == (0x0f | 3 << 4));
    uint8_t h = 0, src = 0x39; /* i2: 1, -2, -1, 0 */
    kiln_elem_copy(KILN_I2, &h, 2, &src, 1);
    CHECK(kiln_load_i64(KILN_I2, &h, 2) == -2 && (h & ~(3 << 4)) == 0);
    float x[2] = {1.5f, -2.0f}, y[2] = {0, 0};
    kiln_elem_copy(KILN_F32, y, 1, x, 0);
    CHECK(y[0] == 0 && y[1] == 1.5f);
}

static void test_new_dtypes(void)
{
    /* names round trip; every type after Q6_K is new and must stay numbered */
    int bad = 0;
    for (int d = 1; d < KILN_DT_COUNT; d++)
        bad += (int)kiln_dtype_from_name(kiln_dtype_name((kiln_dtype)d)) != d;
    CHECK(bad == 0);
    CHECK(KILN_I2 == KILN_Q6_K + 1 && KILN_F8E8M0 == KILN_Q6_K + 6);
    CHECK(kiln_dtype_from_name("f8e4m3fnuz") == KILN_F8E4M3FNUZ);
    /* element load/store through the generic forms */
    uint8_t b[4];
    kiln_store_f64(KILN_F8E4M3FNUZ, b, 0, 1000.0); /* stores saturate */
    kiln_store_f64(KILN_F8E5M2FNUZ, b, 1, -0.0);
    kiln_store_f64(KILN_F8E8M0, b, 2, 0.75);       /* nearest, ties up */
    kiln_store_f64(KILN_F8E8M0, b, 3, kiln_f8e8m0_to_f32(0));
    CHECK(b[0] == 0x7f && b[1] == 0 && b[2] == 127 && b[3] == 0);
    CHECK(kiln_load_f64(KILN_F8E4M3FNUZ, b, 0) == 240.0 && kiln_load_f64(KILN_F8E8M0, b, 2) == 1.0);
    /* Cast's rules */
    kiln_store_cast(KILN_F8E4M3FNUZ, b, 0, 1000.0, 0, KILN_ROUND_UP);
    kiln_store_cast(KILN_F8E8M0, b, 1, 3.0, 1, KILN_ROUND_DOWN);
    kiln_store_cast(KILN_F8E8M0, b, 2, 3.0, 1, KILN_ROUND_UP);
    kiln_store_cast(KILN_BOOL, b, 3, 0.25, 1, KILN_ROUND_UP);
    CHECK(b[0] == 0x80 && b[1] == 128 && b[2] == 129 && b[3] == 1);
    kiln_store_cast(KILN_F8E4M3, b, 0, 1000.0, 0, KILN_ROUND_UP);
    kiln_store_cast(KILN_F8E5M2, b, 1, 1e6, 0, KILN_ROUND_UP);
    CHECK(b[0] == 0x7f && b[1] == 0x7c);
    uint8_t q = 0;
    kiln_store_cast(KILN_I2, &q, 1, -2.9, 1, KILN_ROUND_UP); /* truncates to -2 */
    CHECK(q == 2 << 2);
}

static void test_npy_widen(void)
{
    char path[] = "/tmp/kiln_npy_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    kiln_err err;
    kiln_npy a;
    /* f4e2m1 {0.5, -6, 1.5} packed: codes 1, 15, 3 */
    const uint8_t f4[2] = {1 | 15 << 4, 3};
    int64_t n = 3;
    CHECK(kiln_npy_write(path, KILN_F4E2M1, 1, &n, f4, &err) == 0);
    CHECK(kiln_npy_read(path, &a, &err) == 0);
    CHECK(a.dtype == KILN_F32 && a.rank == 1 && a.dims[0] == 3);
    CHECK(a.data && ((float *)a.data)[0] == 0.5f && ((float *)a.data)[1] == -6.0f &&
          ((float *)a.data)[2] == 1.5f);
    kiln_npy_free(&a);
    const uint8_t i2[2] = {0x39, 0x01}; /* 1, -2, -1, 0, 1 */
    n = 5;
    CHECK(kiln_npy_write(path, KILN_I2, 1, &n, i2, &err) == 0);
    CHECK(kiln_npy_read(path, &a, &err) == 0);
    CHECK(a.dtype == KILN_I8 && a.dims[0] == 5);
    const int8_t wi[5] = {1, -2, -1, 0, 1};
    CHECK(a.data && memcmp(a.data, wi, 5) == 0);
    kiln_npy_free(&a);
    CHECK(kiln_npy_write(path, KILN_U2, 1, &n, i2, &err) == 0);
    CHECK(kiln_npy_read(path, &a, &err) == 0);
    const uint8_t wu[5] = {1, 2, 3, 0, 1};
    CHECK(a.dtype == KILN_U8 && a.data && memcmp(a.data, wu, 5) == 0);
    kiln_npy_free(&a);
    const uint8_t e8[2] = {0x80, 0xff}; /* f8e8m0: 2, NaN */
    n = 2;
    CHECK(kiln_npy_write(path, KILN_F8E8M0, 1, &n, e8, &err) == 0);
    CHECK(kiln_npy_read(path, &a, &err) == 0);
    CHECK(a.dtype == KILN_F32 && a.data && ((float *)a.data)[0] == 2.0f && isnan(((float *)a.data)[1]));
    kiln_npy_free(&a);
    unlink(path);
}

static void test_quant(void)
{
    float x[64], y[64];
    for (int i = 0; i < 64; i++)
        x[i] = sinf((float)i * 0.37f) * 3.0f;
    kiln_dtype types[] = {KILN_Q4_0, KILN_Q4_1, KILN_Q8_0};
    double tol[] = {0.45, 0.25, 0.03};
    for (int t = 0; t < 3; t++) {
        uint8_t buf[256];
        CHECK(kiln_quant_row(types[t], x, buf, 64) == 0);
        kiln_dequant_row(types[t], buf, y, 64);
        double maxe = 0;
        for (int i = 0; i < 64; i++)
            maxe = fmax(maxe, fabs(x[i] - y[i]));
        CHECK(maxe < tol[t]);
    }
    CHECK(kiln_dtype_storage(KILN_Q4_K, 512) == 288);
    CHECK(kiln_dtype_storage(KILN_Q6_K, 256) == 210);
    CHECK(kiln_dtype_storage(KILN_I4, 5) == 3);
}

static void test_npy(void)
{
    char path[] = "/tmp/kiln_npy_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    int64_t dims[2] = {2, 3};
    int32_t data[6] = {1, -2, 3, -4, 5, 6};
    kiln_err err;
    CHECK(kiln_npy_write(path, KILN_I32, 2, dims, data, &err) == 0);
    kiln_npy a;
    CHECK(kiln_npy_read(path, &a, &err) == 0);
    CHECK(a.dtype == KILN_I32 && a.rank == 2 && a.dims[0] == 2 && a.dims[1] == 3);
    CHECK(a.data && memcmp(a.data, data, sizeof data) == 0);
    kiln_npy_free(&a);
    /* scalar */
    double s = 2.5;
    CHECK(kiln_npy_write(path, KILN_F64, 0, dims, &s, &err) == 0);
    CHECK(kiln_npy_read(path, &a, &err) == 0);
    CHECK(a.rank == 0 && *(double *)a.data == 2.5);
    kiln_npy_free(&a);
    /* truncated file is an error, not a crash */
    FILE *f = fopen(path, "r+b");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fclose(f);
    CHECK(truncate(path, len - 4) == 0);
    CHECK(kiln_npy_read(path, &a, &err) != 0);
    CHECK(strstr(err.msg, "truncated") != NULL);
    unlink(path);
}

static void test_strmap(void)
{
    kiln_strmap m = {0};
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        kiln_strmap_put(&m, key, i * 2);
    }
    int v = -1, ok = 1;
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        ok &= kiln_strmap_get(&m, key, &v) && v == i * 2;
    }
    CHECK(ok);
    CHECK(!kiln_strmap_get(&m, "nope", &v));
    kiln_strmap_free(&m);
}

int main(void)
{
    test_f16();
    test_bf16_f8();
    test_fnuz();
    test_f4e2m1();
    test_f8e8m0();
    test_packed();
    test_new_dtypes();
    test_npy_widen();
    test_quant();
    test_npy();
    test_strmap();
    return check_report();
}
