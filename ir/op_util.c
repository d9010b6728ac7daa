/* op_util.c - shared inference and kernel helpers for the op families. */
#include "op_util.h"

int kiln_axis(kiln_err *err, int64_t axis, int rank, int *out)
{
    int64_t a = axis < 0 ? axis + rank : axis;
    if (a < 0 || a >= (rank ? rank : 1))
        return kiln_errf(err, "axis %lld out of range for rank %d", (long long)axis, rank);
    *out = (int)a;
    return 0;
}

kiln_type kiln_type_make(kiln_dtype dt, int rank, const kiln_dim *dims)
{
    kiln_type t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.rank = rank;
    for (int i = 0; i < rank && i < KILN_MAX_RANK; i++)
        t.dims[i] = dims ? dims[i] : KILN_DIM_ANY;
    return t;
}

int kiln_bcast_type(kiln_infer_ctx *c, const kiln_type *a, const kiln_type *b, kiln_type *out)
{
    kiln_type r;
    memset(&r, 0, sizeof r);
    r.dtype = a->dtype;
    if (a->rank < 0 || b->rank < 0) {
        r.rank = -1;
        *out = r;
        return 0;
    }
    r.rank = a->rank > b->rank ? a->rank : b->rank;
    for (int i = 0; i < r.rank; i++) {
        int ia = i - (r.rank - a->rank), ib = i - (r.rank - b->rank);
        kiln_dim da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        kiln_dim d;
        if (da == db)
            d = da;
        else if (da == 1)
            d = db;
        else if (db == 1)
            d = da;
        else if (da == KILN_DIM_ANY)
            d = db; /* the other is not 1, so it wins (or the model is wrong) */
        else if (db == KILN_DIM_ANY)
            d = da;
        else if (KILN_DIM_IS_STATIC(da) && KILN_DIM_IS_STATIC(db))
            return OPERR(c, "cannot broadcast dimension %lld against %lld", (long long)da,
                         (long long)db);
        else if (KILN_DIM_IS_STATIC(da))
            d = da; /* symbolic vs static (not 1): the symbol must be 1 or equal */
        else if (KILN_DIM_IS_STATIC(db))
            d = db;
        else
            d = KILN_DIM_ANY; /* two different symbols: only known at run time */
        r.dims[i] = d;
    }
    *out = r;
    return 0;
}

int kiln_infer_ints(const kiln_infer_ctx *c, int i, int64_t *vals, int max)
{
    return kiln_infer_ivec(c, i, vals, max);
}

/* Like kiln_infer_vec, but entries that are not dims (negative literals)
 * read as KILN_DIM_ANY so they can never be mistaken for a symbol. */
int kiln_infer_dims(const kiln_infer_ctx *c, int i, kiln_dim *dims, int max)
{
    int n = kiln_infer_vec(c, i, dims, max);
    for (int k = 0; k < n; k++)
        if (!kiln_sv_is_dim(dims[k]))
            dims[k] = KILN_DIM_ANY;
    return n;
}

void kiln_infer_set_sym(kiln_infer_ctx *c, int o, const kiln_dim *d, int n)
{
    free(c->out_sym[o]);
    c->out_sym[o] = kiln_xmalloc(sizeof(kiln_dim) * (size_t)(n ? n : 1));
    if (n)
        memcpy(c->out_sym[o], d, sizeof(kiln_dim) * (size_t)n);
    c->out_sym_n[o] = n;
}

int kiln_infer_scalar_f64(const kiln_infer_ctx *c, int i, double *v)
{
    if (i >= c->n_inputs || !c->in_val[i] || kiln_tensor_numel(c->in_val[i]) != 1)
        return 0;
    *v = kiln_tensor_get(c->in_val[i], 0);
    return 1;
}

void kiln_strides(const int64_t *dims, int rank, int64_t *st)
{
    int64_t s = 1;
    for (int i = rank - 1; i >= 0; i--) {
        st[i] = s;
        s *= dims[i];
    }
}

void kiln_bcast_strides(const kiln_tensor *in, int out_rank, const int64_t *out_dims, int64_t *st)
{
    int64_t own[KILN_MAX_RANK];
    kiln_strides(in->dims, in->rank, own);
    for (int i = 0; i < out_rank; i++) {
        int k = i - (out_rank - in->rank);
        st[i] = (k < 0 || (in->dims[k] == 1 && out_dims[i] != 1)) ? 0 : own[k];
    }
}

int kiln_next_index(int64_t *idx, const int64_t *dims, int rank, int nacc, int64_t *off,
                    int64_t st[][KILN_MAX_RANK])
{
    for (int d = rank - 1; d >= 0; d--) {
        idx[d]++;
        for (int a = 0; a < nacc; a++)
            off[a] += st[a][d];
        if (idx[d] < dims[d])
            return 1;
        for (int a = 0; a < nacc; a++)
            off[a] -= st[a][d] * idx[d];
        idx[d] = 0;
    }
    return 0;
}

void kiln_tensor_type(const kiln_tensor *t, kiln_type *ty)
{
    memset(ty, 0, sizeof *ty);
    ty->dtype = t->dtype;
    ty->rank = t->rank;
    for (int i = 0; i < t->rank; i++)
        ty->dims[i] = t->dims[i];
}

int kiln_dtype_is_float(kiln_dtype dt) { return kiln_dtype_get(dt)->is_float; }

int kiln_dtype_is_intlike(kiln_dtype dt) { return kiln_dtype_get(dt)->is_int || dt == KILN_BOOL; }

int kiln_require_float(kiln_infer_ctx *c, int i)
{
    if (!c->in[i] || !kiln_dtype_is_float(c->in[i]->dtype))
        return OPERR(c, "input %d must be a float type, got %s", i,
                     c->in[i] ? kiln_dtype_name(c->in[i]->dtype) : "nothing");
    return 0;
}

/* ---- known contents of shape-like vectors ---- */

kiln_dim kiln_sv_lit(int64_t v)
{
    if (v >= 0)
        return v;
    if (v < -KILN_SV_LIT_SPAN)
        return KILN_DIM_ANY;
    return KILN_DIM_ANY - v; /* -1 -> INT64_MIN + 1, ... */
}

int kiln_sv_int(kiln_dim d, int64_t *v)
{
    if (d >= 0) {
        *v = d;
        return 1;
    }
    if (d != KILN_DIM_ANY && d <= KILN_DIM_ANY + KILN_SV_LIT_SPAN) {
        *v = KILN_DIM_ANY - d;
        return 1;
    }
    return 0;
}

int kiln_sv_is_dim(kiln_dim d)
{
    return d >= 0 || (d != KILN_DIM_ANY && d > KILN_DIM_ANY + KILN_SV_LIT_SPAN);
}

int kiln_infer_vec(const kiln_infer_ctx *c, int i, kiln_dim *d, int max)
{
    if (i >= c->n_inputs || !c->in[i])
        return -1;
    const kiln_tensor *t = c->in_val[i];
    if (t && kiln_dtype_is_intlike(t->dtype)) {
        int64_t n = kiln_tensor_numel(t);
        if (n > max)
            return -2;
        for (int64_t k = 0; k < n; k++)
            d[k] = kiln_sv_lit(kiln_tensor_get_i64(t, k));
        return (int)n;
    }
    if (c->in_sym[i]) {
        if (c->in_sym_n[i] > max)
            return -2;
        memcpy(d, c->in_sym[i], sizeof(kiln_dim) * (size_t)c->in_sym_n[i]);
        return c->in_sym_n[i];
    }
    return -1;
}

int kiln_infer_ivec(const kiln_infer_ctx *c, int i, int64_t *v, int max)
{
    if (i >= c->n_inputs || !c->in[i])
        return -1;
    const kiln_tensor *t = c->in_val[i];
    if (t) {
        if (kiln_dtype_get(t->dtype)->is_quant)
            return -1;
        int64_t n = kiln_tensor_numel(t);
        if (n > max)
            return -2;
        for (int64_t k = 0; k < n; k++)
            v[k] = kiln_tensor_get_i64(t, k);
        return (int)n;
    }
    if (c->in_sym[i]) {
        if (c->in_sym_n[i] > max)
            return -2;
        for (int k = 0; k < c->in_sym_n[i]; k++)
            if (!kiln_sv_int(c->in_sym[i][k], &v[k]))
                return -1;
        return c->in_sym_n[i];
    }
    return -1;
}

/* ---- element copies ---- */

void kiln_copy_elem(kiln_tensor *dst, int64_t di, const kiln_tensor *src, int64_t si)
{
    const kiln_dtype_info *inf = kiln_dtype_get(dst->dtype);
    if (inf->block_elems == 1) {
        size_t es = (size_t)inf->block_bytes;
        memcpy((char *)dst->data + (size_t)di * es, (const char *)src->data + (size_t)si * es, es);
    } else {
        kiln_elem_copy(dst->dtype, dst->data, di, src->data, si);
    }
}

void kiln_copy_elems(kiln_tensor *dst, int64_t di, const kiln_tensor *src, int64_t si, int64_t n)
{
    const kiln_dtype_info *inf = kiln_dtype_get(dst->dtype);
    if (n <= 0)
        return;
    if (inf->block_elems == 1) {
        size_t es = (size_t)inf->block_bytes;
        memcpy((char *)dst->data + (size_t)di * es, (const char *)src->data + (size_t)si * es,
               es * (size_t)n);
        return;
    }
    for (int64_t k = 0; k < n; k++)
        kiln_elem_copy(dst->dtype, dst->data, di + k, src->data, si + k);
}

int kiln_require_unquant(kiln_infer_ctx *c, int i)
{
    if (!c->in[i])
        return OPERR(c, "input %d is absent", i);
    if (kiln_dtype_get(c->in[i]->dtype)->is_quant)
        return OPERR(c, "input %d: block-quantized %s needs Dequantize first", i,
                     kiln_dtype_name(c->in[i]->dtype));
    return 0;
}

int kiln_require_int(kiln_infer_ctx *c, int i, const char *what)
{
    if (!c->in[i] || !kiln_dtype_get(c->in[i]->dtype)->is_int)
        return OPERR(c, "%s must be an integer tensor, got %s", what,
                     c->in[i] ? kiln_dtype_name(c->in[i]->dtype) : "nothing");
    return 0;
}
