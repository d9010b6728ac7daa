/* safetensors.c - safetensors reader (single file or sharded with an index).
 *
 * Files are mapped, never read into memory: tensors become references
 * (file, offset) that the graph maps lazily. */
#include "kiln_safetensors.h"

#include "cJSON.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The format caps the JSON header at 100 MB; anything larger is corrupt. */
#define ST_MAX_HEADER (100u * 1024 * 1024)

typedef struct st_file {
    char *path; /* absolute */
    kiln_map map;
} st_file;

struct kiln_safetensors {
    st_file *files;
    int n_files;
    kiln_st_tensor *tensors;
    int n_tensors, cap_tensors;
    kiln_strmap names; /* tensor name -> index */
};

/* s, or a placeholder when it holds control characters (messages are one line). */
static const char *safe(const char *s)
{
    for (const char *q = s; *q; q++)
        if ((unsigned char)*q < 0x20)
            return "<unprintable>";
    return s;
}

static kiln_dtype st_dtype(const char *s)
{
    static const struct {
        const char *name;
        kiln_dtype dt;
    } map[] = {{"F32", KILN_F32},   {"F16", KILN_F16},         {"BF16", KILN_BF16},
               {"F64", KILN_F64},   {"F8_E4M3", KILN_F8E4M3}, {"F8_E5M2", KILN_F8E5M2},
               {"I8", KILN_I8},     {"U8", KILN_U8},           {"I16", KILN_I16},
               {"U16", KILN_U16},   {"I32", KILN_I32},         {"U32", KILN_U32},
               {"I64", KILN_I64},   {"U64", KILN_U64},         {"BOOL", KILN_BOOL}};
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(s, map[i].name) == 0)
            return map[i].dt;
    return KILN_DT_INVALID;
}

void kiln_st_close(kiln_safetensors *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->n_files; i++) {
        kiln_unmap_file(&st->files[i].map);
        free(st->files[i].path);
    }
    free(st->files);
    for (int i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    free(st->tensors);
    kiln_strmap_free(&st->names);
    free(st);
}

static char *abs_path(const char *p)
{
    char *r = realpath(p, NULL);
    return r ? r : kiln_xstrdup(p);
}

/* A JSON number that is a non-negative integer below 2^53. */
static int json_uint(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j))
        return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d))
        return -1;
    *v = (uint64_t)d;
    return 0;
}

/* Opens one safetensors file and adds its tensors; a name already seen (in
 * this or another shard) is an error. */
static int add_file(kiln_safetensors *st, const char *path, kiln_err *err)
{
    st->files = kiln_xrealloc(st->files, sizeof *st->files * (size_t)(st->n_files + 1));
    st_file *f = &st->files[st->n_files];
    memset(f, 0, sizeof *f);
    f->path = abs_path(path);
    st->n_files++;
    int fi = st->n_files - 1;
    if (kiln_map_file(path, &f->map, err))
        return -1;
    const uint8_t *d = f->map.data;
    size_t size = f->map.size;
    uint64_t hl;
    if (size < 8)
        return kiln_errf(err, "%s: truncated safetensors file (%zu bytes, no header)", path, size);
    memcpy(&hl, d, 8);
    if (hl > ST_MAX_HEADER || hl > size - 8)
        return kiln_errf(err, "%s: %s safetensors file (header of %llu bytes, file has %zu)", path,
                         hl > size - 8 && hl <= ST_MAX_HEADER ? "truncated" : "corrupt",
                         (unsigned long long)hl, size);
    const char *end = NULL;
    cJSON *h = cJSON_ParseWithLengthOpts((const char *)d + 8, (size_t)hl, &end, 0);
    if (!h || !cJSON_IsObject(h)) {
        cJSON_Delete(h);
        return kiln_errf(err, "%s: corrupt safetensors file (header is not a JSON object)", path);
    }
    uint64_t data_start = 8 + hl, data_size = size - data_start;
    int rc = 0;
    for (cJSON *e = h->child; e && rc == 0; e = e->next) {
        if (!e->string) {
            rc = kiln_errf(err, "%s: corrupt safetensors header (entry without a name)", path);
            break;
        }
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        for (const char *q = e->string; *q; q++)
            if ((unsigned char)*q < 0x20) { /* keeps messages on one line */
                rc = kiln_errf(err, "%s: corrupt safetensors header (tensor name with control "
                               "characters)", path);
                break;
            }
        if (rc)
            break;
        const cJSON *jdt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *jsh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *jof = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsObject(e) || !cJSON_IsString(jdt) || !cJSON_IsArray(jsh) || !cJSON_IsArray(jof) ||
            cJSON_GetArraySize(jof) != 2) {
            rc = kiln_errf(err, "%s: corrupt safetensors header (tensor '%s' lacks dtype, shape or "
                           "data_offsets)", path, e->string);
            break;
        }
        kiln_st_tensor t;
        memset(&t, 0, sizeof t);
        t.dtype = st_dtype(jdt->valuestring);
        if (t.dtype == KILN_DT_INVALID) {
            rc = kiln_errf(err, "%s: tensor '%s' has dtype %.32s, which kiln does not read", path,
                           e->string, safe(jdt->valuestring));
            break;
        }
        t.rank = cJSON_GetArraySize(jsh);
        if (t.rank > KILN_ST_MAX_RANK) {
            rc = kiln_errf(err, "%s: tensor '%s' has rank %d (kiln supports up to %d)", path, e->string,
                           t.rank, KILN_ST_MAX_RANK);
            break;
        }
        uint64_t n = 1;
        int k = 0;
        for (const cJSON *x = jsh->child; x; x = x->next, k++) {
            uint64_t v;
            if (json_uint(x, &v) || v > ((uint64_t)1 << 48) || (v && n > ((uint64_t)1 << 48) / v)) {
                rc = kiln_errf(err, "%s: corrupt safetensors header (tensor '%s' has a bad shape)",
                               path, e->string);
                break;
            }
            t.dims[k] = (int64_t)v;
            n *= v;
        }
        if (rc)
            break;
        uint64_t b, en;
        if (json_uint(jof->child, &b) || json_uint(jof->child->next, &en) || en < b) {
            rc = kiln_errf(err, "%s: corrupt safetensors header (tensor '%s' has bad data_offsets)",
                           path, e->string);
            break;
        }
        t.nbytes = kiln_dtype_storage(t.dtype, (int64_t)n);
        if (en - b != t.nbytes) {
            rc = kiln_errf(err, "%s: corrupt safetensors header (tensor '%s': %llu bytes for %llu "
                           "elements of %s)", path, e->string, (unsigned long long)(en - b),
                           (unsigned long long)n, kiln_dtype_name(t.dtype));
            break;
        }
        if (en > data_size) {
            rc = kiln_errf(err, "%s: truncated safetensors file (tensor '%s' ends at byte %llu, file "
                           "has %zu)", path, e->string, (unsigned long long)(data_start + en), size);
            break;
        }
        int dummy;
        if (kiln_strmap_get(&st->names, e->string, &dummy)) {
            rc = kiln_errf(err, "%s: tensor '%s' appears twice", path, e->string);
            break;
        }
        if (st->n_tensors == INT_MAX - 1) {
            rc = kiln_errf(err, "%s: too many tensors", path);
            break;
        }
        t.file = fi;
        t.offset = data_start + b;
        t.name = kiln_xstrdup(e->string);
        if (st->n_tensors == st->cap_tensors) {
            st->cap_tensors = st->cap_tensors ? st->cap_tensors * 2 : 256;
            st->tensors = kiln_xrealloc(st->tensors, sizeof *st->tensors * (size_t)st->cap_tensors);
        }
        st->tensors[st->n_tensors] = t;
        kiln_strmap_put(&st->names, t.name, st->n_tensors);
        st->n_tensors++;
    }
    cJSON_Delete(h);
    return rc;
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static int is_file(const char *p)
{
    struct stat s;
    return stat(p, &s) == 0 && S_ISREG(s.st_mode);
}

/* Opens the shards an index.json names (each once, in order of first use)
 * and checks every weight_map entry is present in its shard. */
static int open_index(kiln_safetensors *st, const char *path, kiln_err *err)
{
    char *text;
    size_t len;
    if (kiln_read_file(path, &text, &len, err))
        return -1;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = j ? cJSON_GetObjectItemCaseSensitive(j, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(j);
        return kiln_errf(err, "%s: not a safetensors index (no \"weight_map\" object)", path);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        dir[0] = 0;
    kiln_strmap shards = {0};
    int rc = 0;
    for (const cJSON *e = wm->child; e && rc == 0; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || strcmp(e->valuestring, "..") == 0) {
            rc = kiln_errf(err, "%s: weight_map entry '%s' does not name a shard file in the same "
                           "directory", path, e->string ? safe(e->string) : "?");
            break;
        }
        int dummy;
        if (kiln_strmap_get(&shards, e->valuestring, &dummy))
            continue;
        kiln_strmap_put(&shards, e->valuestring, st->n_files);
        char full[8192];
        snprintf(full, sizeof full, "%s%s", dir, e->valuestring);
        rc = add_file(st, full, err);
    }
    for (const cJSON *e = wm->child; e && rc == 0; e = e->next) {
        int ti, fi = -1;
        kiln_strmap_get(&shards, e->valuestring, &fi);
        if (!kiln_strmap_get(&st->names, e->string, &ti))
            rc = kiln_errf(err, "%s: tensor '%s' is listed in the index but missing from %s", path,
                           safe(e->string), safe(e->valuestring));
        else if (st->tensors[ti].file != fi)
            rc = kiln_errf(err, "%s: tensor '%s' is listed in %s but stored in %s", path,
                           safe(e->string), safe(e->valuestring), st->files[st->tensors[ti].file].path);
    }
    kiln_strmap_free(&shards);
    cJSON_Delete(j);
    return rc;
}

kiln_safetensors *kiln_st_open(const char *path, kiln_err *err)
{
    kiln_safetensors *st = kiln_xcalloc(1, sizeof *st);
    struct stat s;
    int rc;
    if (stat(path, &s) != 0) {
        kiln_errf(err, "%s: no such file or directory", path);
        rc = -1;
    } else if (S_ISDIR(s.st_mode)) {
        char p[8192];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (is_file(p)) {
            rc = open_index(st, p, err);
        } else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            if (is_file(p))
                rc = add_file(st, p, err);
            else
                rc = kiln_errf(err, "%s: no model.safetensors or model.safetensors.index.json", path);
        }
    } else if (ends_with(path, ".json")) {
        rc = open_index(st, path, err);
    } else {
        rc = add_file(st, path, err);
    }
    if (rc) {
        kiln_st_close(st);
        return NULL;
    }
    return st;
}

int kiln_st_count(const kiln_safetensors *st) { return st->n_tensors; }

const kiln_st_tensor *kiln_st_at(const kiln_safetensors *st, int i)
{
    return i >= 0 && i < st->n_tensors ? &st->tensors[i] : NULL;
}

const kiln_st_tensor *kiln_st_find(const kiln_safetensors *st, const char *name)
{
    int i;
    return kiln_strmap_get(&st->names, name, &i) ? &st->tensors[i] : NULL;
}

int kiln_st_file_count(const kiln_safetensors *st) { return st->n_files; }

const char *kiln_st_file_path(const kiln_safetensors *st, int i)
{
    return i >= 0 && i < st->n_files ? st->files[i].path : NULL;
}

const void *kiln_st_data(const kiln_safetensors *st, const kiln_st_tensor *t)
{
    return st->files[t->file].map.data + t->offset;
}
