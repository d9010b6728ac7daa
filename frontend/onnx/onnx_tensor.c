/* onnx_tensor.c - ONNX element types and TensorProto contents. */
#include "onnx_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* TensorProto.DataType codes (onnx.proto; the newer ones postdate the
 * Debian copy of the file, so they are spelled out here). */
static const struct {
    int code;
    const char *name;
    kiln_dtype dt;
} dtypes[] = {
    {1, "FLOAT", KILN_F32},       {2, "UINT8", KILN_U8},
    {3, "INT8", KILN_I8},         {4, "UINT16", KILN_U16},
    {5, "INT16", KILN_I16},       {6, "INT32", KILN_I32},
    {7, "INT64", KILN_I64},       {8, "STRING", KILN_DT_INVALID},
    {9, "BOOL", KILN_BOOL},       {10, "FLOAT16", KILN_F16},
    {11, "DOUBLE", KILN_F64},     {12, "UINT32", KILN_U32},
    {13, "UINT64", KILN_U64},     {14, "COMPLEX64", KILN_DT_INVALID},
    {15, "COMPLEX128", KILN_DT_INVALID}, {16, "BFLOAT16", KILN_BF16},
    {17, "FLOAT8E4M3FN", KILN_F8E4M3},   {18, "FLOAT8E4M3FNUZ", KILN_F8E4M3FNUZ},
    {19, "FLOAT8E5M2", KILN_F8E5M2},     {20, "FLOAT8E5M2FNUZ", KILN_F8E5M2FNUZ},
    {21, "UINT4", KILN_U4},       {22, "INT4", KILN_I4},
    {23, "FLOAT4E2M1", KILN_F4E2M1},     {24, "FLOAT8E8M0", KILN_F8E8M0},
    {25, "UINT2", KILN_U2},       {26, "INT2", KILN_I2},
    {27, "FLOAT6E2M3", KILN_DT_INVALID}, {28, "FLOAT6E3M2", KILN_DT_INVALID},
};
#define N_DTYPES (int)(sizeof dtypes / sizeof *dtypes)

kiln_dtype kiln_onnx_dtype(int code)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (dtypes[i].code == code)
            return dtypes[i].dt;
    return KILN_DT_INVALID;
}

int kiln_onnx_type_code(kiln_dtype dt)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dt == dt && dt != KILN_DT_INVALID)
            return dtypes[i].code;
    return -1;
}

const char *onnx_dtype_name(int code, char *buf, size_t len)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (dtypes[i].code == code)
            return dtypes[i].name;
    snprintf(buf, len, "type %d", code);
    return buf;
}

int onnx_tensor_type(const Onnx__TensorProto *t, const char *what, kiln_type *ty, int *unsup,
                     kiln_err *err)
{
    char nb[32];
    memset(ty, 0, sizeof *ty);
    ty->dtype = kiln_onnx_dtype(t->data_type);
    if (ty->dtype == KILN_DT_INVALID) {
        *unsup = t->data_type != 0;
        if (!t->data_type)
            return kiln_errf(err, "%s: element type missing", what);
        return kiln_errf(err, "%s: element type %s is not supported", what,
                         onnx_dtype_name(t->data_type, nb, sizeof nb));
    }
    if (t->n_dims > KILN_MAX_RANK) {
        *unsup = 1;
        return kiln_errf(err, "%s: rank %zu exceeds kiln's maximum %d", what, t->n_dims,
                         KILN_MAX_RANK);
    }
    ty->rank = (int)t->n_dims;
    int64_t numel = 1;
    for (size_t i = 0; i < t->n_dims; i++) {
        if (t->dims[i] < 0)
            return kiln_errf(err, "%s: negative dimension %lld", what, (long long)t->dims[i]);
        ty->dims[i] = t->dims[i];
        if (t->dims[i] && numel > INT64_MAX / 16 / t->dims[i])
            return kiln_errf(err, "%s: too many elements", what);
        numel *= t->dims[i];
    }
    if (t->segment) {
        *unsup = 1;
        return kiln_errf(err, "%s: segmented tensors are not supported", what);
    }
    return 0;
}

static int count_err(kiln_err *err, const char *what, const char *field, size_t have, int64_t want)
{
    return kiln_errf(err, "%s: %s holds %zu values, shape needs %lld", what, field, have,
                     (long long)want);
}

int onnx_tensor_inline_data(const Onnx__TensorProto *t, const kiln_type *ty, const char *what,
                            void **data, size_t *nbytes, kiln_err *err)
{
    int64_t n = kiln_type_numel(ty);
    size_t nb = kiln_dtype_storage(ty->dtype, n);
    *data = NULL;
    *nbytes = nb;
    if (t->has_raw_data) {
        if (t->raw_data.len != nb)
            return kiln_errf(err, "%s: raw_data has %zu bytes, %s[%lld] needs %zu", what,
                             t->raw_data.len, kiln_dtype_name(ty->dtype), (long long)n, nb);
        *data = kiln_xmalloc(nb + 1);
        if (nb)
            memcpy(*data, t->raw_data.data, nb);
        return 0;
    }
    uint8_t *d = kiln_xcalloc(nb + 1, 1);
    kiln_dtype dt = ty->dtype;
    int rc = 0;
    switch (dt) {
    case KILN_F32:
        if ((int64_t)t->n_float_data != n)
            rc = count_err(err, what, "float_data", t->n_float_data, n);
        else if (n)
            memcpy(d, t->float_data, nb);
        break;
    case KILN_F64:
        if ((int64_t)t->n_double_data != n)
            rc = count_err(err, what, "double_data", t->n_double_data, n);
        else if (n)
            memcpy(d, t->double_data, nb);
        break;
    case KILN_I64:
        if ((int64_t)t->n_int64_data != n)
            rc = count_err(err, what, "int64_data", t->n_int64_data, n);
        else if (n)
            memcpy(d, t->int64_data, nb);
        break;
    case KILN_U32:
    case KILN_U64:
        if ((int64_t)t->n_uint64_data != n)
            rc = count_err(err, what, "uint64_data", t->n_uint64_data, n);
        else
            for (int64_t i = 0; i < n; i++)
                kiln_store_i64(dt, d, i, (int64_t)t->uint64_data[i]);
        break;
    case KILN_I4:
    case KILN_U4:
    case KILN_F4E2M1:
    case KILN_I2:
    case KILN_U2: /* int32_data holds the packed bytes, two or four elements each */
        if (t->n_int32_data != nb)
            rc = count_err(err, what, "int32_data", t->n_int32_data, (int64_t)nb);
        else
            for (size_t i = 0; i < t->n_int32_data; i++)
                d[i] = (uint8_t)t->int32_data[i];
        break;
    default: { /* int32_data holds one element each, as its bit pattern */
        if ((int64_t)t->n_int32_data != n) {
            rc = count_err(err, what, "int32_data", t->n_int32_data, n);
            break;
        }
        size_t es = kiln_dtype_storage(dt, 1);
        for (int64_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)t->int32_data[i];
            if (dt == KILN_BOOL)
                v = v != 0;
            memcpy(d + (size_t)i * es, &v, es); /* little-endian low bytes */
        }
        break;
    }
    }
    if (rc) {
        free(d);
        return -1;
    }
    *data = d;
    return 0;
}

int kiln_onnx_read_tensor(const char *path, kiln_tensor *out, char **name, kiln_err *err)
{
    memset(out, 0, sizeof *out);
    if (name)
        *name = NULL;
    char *buf;
    size_t len;
    if (kiln_read_file(path, &buf, &len, err))
        return -1;
    Onnx__TensorProto *t = onnx__tensor_proto__unpack(NULL, len, (const uint8_t *)buf);
    free(buf);
    if (!t)
        return kiln_errf(err, "%s: not a valid TensorProto", path);
    int rc = -1, unsup = 0;
    kiln_type ty;
    void *data = NULL;
    size_t nb = 0;
    if (t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        kiln_errf(err, "%s: external data in a tensor file is not supported", path);
        goto done;
    }
    if (onnx_tensor_type(t, path, &ty, &unsup, err) ||
        onnx_tensor_inline_data(t, &ty, path, &data, &nb, err))
        goto done;
    out->dtype = ty.dtype;
    out->rank = ty.rank;
    for (int i = 0; i < ty.rank; i++)
        out->dims[i] = ty.dims[i];
    out->data = data;
    out->nbytes = nb;
    out->owned = 1;
    if (name && t->name && t->name[0])
        *name = kiln_xstrdup(t->name);
    rc = 0;
done:
    onnx__tensor_proto__free_unpacked(t, NULL);
    return rc;
}
