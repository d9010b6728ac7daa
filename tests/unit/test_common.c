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
    test_quant();
    test_npy();
    test_strmap();
    return check_report();
}
