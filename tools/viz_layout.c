/* viz_layout.c - a layered ("Sugiyama") drawing of a graph for `kiln viz`.
 *
 * Four steps, each the simple textbook form:
 *  1. layers: longest path from the inputs; nodes with no producers move
 *     down next to their first consumer so they do not stretch edges;
 *  2. dummies: an edge crossing k layers gets k-1 dummy boxes; edges of one
 *     value share them (a residual stream is one lane, not one per use);
 *  3. order within layers: barycenter sweeps, keeping the order with the
 *     fewest crossings; nodes of one fused kernel are kept side by side;
 *  4. x: each layer placed as close as possible to its neighbours' mean
 *     (least squares under minimum spacing, solved by pool-adjacent-
 *     violators), sweeping down and up a few times. */
#include "viz_common.h"

#include <stdlib.h>
#include <string.h>

#define OP_CHAR_W 7.4   /* bold 12px label */
#define NAME_CHAR_W 6.3 /* 11px label */
#define NAME_MAX_CHARS 30
#define BOX_GAP 22.0
#define DUMMY_W 6.0
#define ORDER_SWEEPS 16
#define X_SWEEPS 8

int kiln_viz_text_len(const char *s)
{
    int n = 0;
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++)
        n += (*p & 0xC0) != 0x80;
    return n;
}

void kiln_viz_node_name(const kiln_graph *g, const kiln_node *n, kiln_sb *sb)
{
    if (n->name && n->name[0])
        kiln_sb_printf(sb, "%s", n->name);
    else if (n->n_outputs > 0 && n->outputs[0] >= 0)
        kiln_sb_printf(sb, "%%%s", g->values[n->outputs[0]].name);
}

double kiln_viz_layer_y(int layer) { return KILN_VIZ_MARGIN + layer * KILN_VIZ_LAYER_H; }

/* Growable arrays of ints used for adjacency while building. */
typedef struct ivec {
    int *v;
    int n, cap;
} ivec;

static void ivec_push(ivec *a, int x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 16;
        a->v = kiln_xrealloc(a->v, sizeof(int) * (size_t)a->cap);
    }
    a->v[a->n++] = x;
}

/* Compressed adjacency: neighbours of box b are idx[start[b] .. start[b+1]). */
typedef struct adj {
    int *start, *idx;
} adj;

/* Builds `up` (box -> boxes one layer above) and `down` from segment pairs. */
static void build_adj(int nb, const ivec *seg_a, const ivec *seg_b, adj *up, adj *down)
{
    up->start = kiln_xcalloc((size_t)nb + 1, sizeof(int));
    down->start = kiln_xcalloc((size_t)nb + 1, sizeof(int));
    int ns = seg_a->n;
    up->idx = kiln_xmalloc(sizeof(int) * (size_t)(ns + 1));
    down->idx = kiln_xmalloc(sizeof(int) * (size_t)(ns + 1));
    for (int i = 0; i < ns; i++) {
        down->start[seg_a->v[i] + 1]++;
        up->start[seg_b->v[i] + 1]++;
    }
    for (int b = 0; b < nb; b++) {
        down->start[b + 1] += down->start[b];
        up->start[b + 1] += up->start[b];
    }
    int *fd = kiln_xmalloc(sizeof(int) * (size_t)(nb + 1));
    int *fu = kiln_xmalloc(sizeof(int) * (size_t)(nb + 1));
    memcpy(fd, down->start, sizeof(int) * (size_t)nb);
    memcpy(fu, up->start, sizeof(int) * (size_t)nb);
    for (int i = 0; i < ns; i++) {
        down->idx[fd[seg_a->v[i]]++] = seg_b->v[i];
        up->idx[fu[seg_b->v[i]]++] = seg_a->v[i];
    }
    free(fd);
    free(fu);
}

static void adj_free(adj *a)
{
    free(a->start);
    free(a->idx);
}

static double box_width(const kiln_graph *g, const kiln_viz_box *b)
{
    kiln_sb sb = {0};
    int top = 0;
    switch (b->kind) {
    case KILN_VIZ_OP: {
        const kiln_node *n = &g->nodes[b->ref];
        top = kiln_viz_text_len(n->op->name);
        kiln_viz_node_name(g, n, &sb);
        break;
    }
    case KILN_VIZ_IN:
        top = 5; /* "input" */
        kiln_sb_printf(&sb, "%%%s", g->values[b->ref].name);
        break;
    case KILN_VIZ_OUT:
        top = 6; /* "output" */
        kiln_sb_printf(&sb, "%%%s", g->values[g->outputs[b->ref]].name);
        break;
    case KILN_VIZ_DUMMY:
        return DUMMY_W;
    }
    int nl = sb.s ? kiln_viz_text_len(sb.s) : 0;
    kiln_sb_free(&sb);
    if (nl > NAME_MAX_CHARS)
        nl = NAME_MAX_CHARS;
    double w = top * OP_CHAR_W > nl * NAME_CHAR_W ? top * OP_CHAR_W : nl * NAME_CHAR_W;
    w += 20;
    return w < 64 ? 64 : w;
}

/* ---- ordering ---- */

typedef struct keyed {
    double key;
    int pos, box;
} keyed;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->pos - y->pos;
}

typedef struct pair {
    int a, b;
} pair;

static int cmp_pair(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    return x->a != y->a ? x->a - y->a : x->b - y->b;
}

/* Edge crossings between layers l and l+1 for the current orders: the
 * inversions of lower positions when segments are sorted by upper position,
 * counted with a Fenwick tree. */
static int64_t crossings(int **layer, const int *lsize, int nl, const int *pos, const adj *down,
                         pair *buf, int64_t *tree)
{
    int64_t total = 0;
    for (int l = 0; l + 1 < nl; l++) {
        int n = 0;
        for (int i = 0; i < lsize[l]; i++) {
            int b = layer[l][i];
            for (int k = down->start[b]; k < down->start[b + 1]; k++)
                buf[n++] = (pair){pos[b], pos[down->idx[k]]};
        }
        qsort(buf, (size_t)n, sizeof *buf, cmp_pair);
        int m = lsize[l + 1];
        memset(tree, 0, sizeof(int64_t) * (size_t)(m + 1));
        for (int i = 0; i < n; i++) {
            /* segments already inserted whose lower end is right of this one cross it */
            int64_t le = 0;
            for (int j = buf[i].b + 1; j > 0; j -= j & -j)
                le += tree[j];
            total += i - le;
            for (int j = buf[i].b + 1; j <= m; j += j & -j)
                tree[j]++;
        }
    }
    return total;
}

static void order_layers(const kiln_graph *g, kiln_viz_layout *L, int **layer, const int *lsize,
                         const adj *up, const adj *down)
{
    int nb = L->n_boxes, nl = L->n_layers;
    int *pos = kiln_xmalloc(sizeof(int) * (size_t)(nb + 1));
    int *best = kiln_xmalloc(sizeof(int) * (size_t)(nb + 1));
    int maxl = 1, nseg = down->start[nb];
    for (int l = 0; l < nl; l++)
        if (lsize[l] > maxl)
            maxl = lsize[l];
    keyed *ks = kiln_xmalloc(sizeof(keyed) * (size_t)maxl);
    pair *pbuf = kiln_xmalloc(sizeof(pair) * (size_t)(nseg + 1));
    int64_t *tree = kiln_xmalloc(sizeof(int64_t) * (size_t)(maxl + 2));
    for (int l = 0; l < nl; l++)
        for (int i = 0; i < lsize[l]; i++)
            pos[layer[l][i]] = i;
    memcpy(best, pos, sizeof(int) * (size_t)nb);
    int64_t best_cross = crossings(layer, lsize, nl, pos, down, pbuf, tree);
    for (int sweep = 0; sweep < ORDER_SWEEPS && best_cross > 0; sweep++) {
        int downward = sweep % 2 == 0;
        for (int s = 1; s < nl; s++) {
            int l = downward ? s : nl - 1 - s;
            const adj *nbr = downward ? up : down;
            int n = lsize[l];
            for (int i = 0; i < n; i++) {
                int b = layer[l][i];
                double sum = 0;
                int cnt = nbr->start[b + 1] - nbr->start[b];
                for (int k = nbr->start[b]; k < nbr->start[b + 1]; k++)
                    sum += pos[nbr->idx[k]];
                ks[i] = (keyed){cnt ? sum / cnt : pos[b], i, b};
            }
            /* members of one fused kernel share their mean key, so they sort
             * next to each other and the cluster box stays compact */
            for (int i = 0; i < n; i++) {
                const kiln_viz_box *bi = &L->boxes[ks[i].box];
                if (bi->kind != KILN_VIZ_OP || g->nodes[bi->ref].kernel < 0)
                    continue;
                int k = g->nodes[bi->ref].kernel, cnt = 0, first = 1;
                double sum = 0;
                for (int j = 0; j < n; j++) {
                    const kiln_viz_box *bj = &L->boxes[ks[j].box];
                    if (bj->kind == KILN_VIZ_OP && g->nodes[bj->ref].kernel == k) {
                        if (j < i)
                            first = 0;
                        sum += ks[j].key;
                        cnt++;
                    }
                }
                if (!first || cnt < 2)
                    continue;
                for (int j = 0; j < n; j++) {
                    const kiln_viz_box *bj = &L->boxes[ks[j].box];
                    if (bj->kind == KILN_VIZ_OP && g->nodes[bj->ref].kernel == k)
                        ks[j].key = sum / cnt;
                }
            }
            qsort(ks, (size_t)n, sizeof *ks, cmp_keyed);
            for (int i = 0; i < n; i++) {
                layer[l][i] = ks[i].box;
                pos[ks[i].box] = i;
            }
        }
        int64_t c = crossings(layer, lsize, nl, pos, down, pbuf, tree);
        if (c < best_cross) {
            best_cross = c;
            memcpy(best, pos, sizeof(int) * (size_t)nb);
        }
    }
    for (int b = 0; b < nb; b++) {
        L->boxes[b].order = best[b];
        layer[L->boxes[b].layer][best[b]] = b;
    }
    free(tree);
    free(pbuf);
    free(ks);
    free(best);
    free(pos);
}

/* ---- x coordinates ---- */

/* Places the boxes of one layer (in order) as close to target[] as the
 * minimum spacing allows, in the least-squares sense. With c_i the summed
 * spacing left of box i, y_i = x_i - c_i must be non-decreasing: isotonic
 * regression of target_i - c_i, solved by pooling adjacent violators. */
static void place_layer(kiln_viz_box *boxes, const int *lay, int n, const double *target,
                        double *bsum, int *bcnt, int *bend)
{
    int nblk = 0;
    double c = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0) {
            const kiln_viz_box *a = &boxes[lay[i - 1]], *b = &boxes[lay[i]];
            double gap = a->kind == KILN_VIZ_DUMMY || b->kind == KILN_VIZ_DUMMY ? BOX_GAP / 2 : BOX_GAP;
            c += (a->w + b->w) / 2 + gap;
        }
        bsum[nblk] = target[i] - c;
        bcnt[nblk] = 1;
        bend[nblk++] = i + 1;
        while (nblk > 1 && bsum[nblk - 2] / bcnt[nblk - 2] > bsum[nblk - 1] / bcnt[nblk - 1]) {
            bsum[nblk - 2] += bsum[nblk - 1];
            bcnt[nblk - 2] += bcnt[nblk - 1];
            bend[nblk - 2] = bend[nblk - 1];
            nblk--;
        }
    }
    c = 0;
    int i = 0;
    for (int k = 0; k < nblk; k++) {
        double y = bsum[k] / bcnt[k];
        for (; i < bend[k]; i++) {
            if (i > 0) {
                const kiln_viz_box *a = &boxes[lay[i - 1]], *b = &boxes[lay[i]];
                double gap = a->kind == KILN_VIZ_DUMMY || b->kind == KILN_VIZ_DUMMY ? BOX_GAP / 2 : BOX_GAP;
                c += (a->w + b->w) / 2 + gap;
            }
            boxes[lay[i]].x = y + c;
        }
    }
}

static void place_x(kiln_viz_layout *L, int **layer, const int *lsize, const adj *up, const adj *down)
{
    int nl = L->n_layers, maxl = 1;
    for (int l = 0; l < nl; l++)
        if (lsize[l] > maxl)
            maxl = lsize[l];
    double *target = kiln_xmalloc(sizeof(double) * (size_t)maxl);
    double *bsum = kiln_xmalloc(sizeof(double) * (size_t)maxl);
    int *bcnt = kiln_xmalloc(sizeof(int) * (size_t)maxl);
    int *bend = kiln_xmalloc(sizeof(int) * (size_t)maxl);
    /* start packed left to right */
    for (int l = 0; l < nl; l++) {
        double x = 0;
        for (int i = 0; i < lsize[l]; i++) {
            kiln_viz_box *b = &L->boxes[layer[l][i]];
            x += b->w / 2;
            b->x = x;
            x += b->w / 2 + BOX_GAP;
        }
    }
    for (int sweep = 0; sweep < X_SWEEPS; sweep++) {
        int downward = sweep % 2 == 0;
        for (int s = 0; s < nl; s++) {
            int l = downward ? s : nl - 1 - s;
            for (int i = 0; i < lsize[l]; i++) {
                int b = layer[l][i];
                /* the last sweep balances both neighbours */
                double sum = 0;
                int cnt = 0;
                if (downward || sweep == X_SWEEPS - 1)
                    for (int k = up->start[b]; k < up->start[b + 1]; k++, cnt++)
                        sum += L->boxes[up->idx[k]].x;
                if (!downward || sweep == X_SWEEPS - 1)
                    for (int k = down->start[b]; k < down->start[b + 1]; k++, cnt++)
                        sum += L->boxes[down->idx[k]].x;
                target[i] = cnt ? sum / cnt : L->boxes[b].x;
            }
            place_layer(L->boxes, layer[l], lsize[l], target, bsum, bcnt, bend);
        }
    }
    double minx = 0, maxx = 0;
    for (int b = 0; b < L->n_boxes; b++) {
        double lo = L->boxes[b].x - L->boxes[b].w / 2, hi = L->boxes[b].x + L->boxes[b].w / 2;
        if (b == 0 || lo < minx)
            minx = lo;
        if (b == 0 || hi > maxx)
            maxx = hi;
    }
    for (int b = 0; b < L->n_boxes; b++)
        L->boxes[b].x += KILN_VIZ_MARGIN - minx;
    L->width = maxx - minx + 2 * KILN_VIZ_MARGIN;
    L->height = nl ? kiln_viz_layer_y(nl - 1) + KILN_VIZ_NODE_H + KILN_VIZ_MARGIN : 2 * KILN_VIZ_MARGIN;
    free(target);
    free(bsum);
    free(bcnt);
    free(bend);
}

/* ---- building ---- */

static int add_box(kiln_viz_layout *L, int *cap, kiln_viz_box_kind kind, int ref)
{
    if (L->n_boxes == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        L->boxes = kiln_xrealloc(L->boxes, sizeof *L->boxes * (size_t)*cap);
    }
    kiln_viz_box *b = &L->boxes[L->n_boxes];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->ref = ref;
    return L->n_boxes++;
}

void kiln_viz_layout_build(const kiln_graph *g, kiln_viz_layout *L)
{
    memset(L, 0, sizeof *L);
    int cap = 0, nv = g->n_values;
    int *src_box = kiln_xmalloc(sizeof(int) * (size_t)(nv + 1)); /* value -> producing box */
    for (int v = 0; v < nv; v++)
        src_box[v] = -1;
    for (int i = 0; i < g->n_inputs; i++)
        if (src_box[g->inputs[i]] < 0)
            src_box[g->inputs[i]] = add_box(L, &cap, KILN_VIZ_IN, g->inputs[i]);
    L->node_box = kiln_xmalloc(sizeof(int) * (size_t)(g->n_nodes + 1));
    for (int ni = 0; ni < g->n_nodes; ni++) {
        L->node_box[ni] = add_box(L, &cap, KILN_VIZ_OP, ni);
        for (int k = 0; k < g->nodes[ni].n_outputs; k++)
            if (g->nodes[ni].outputs[k] >= 0)
                src_box[g->nodes[ni].outputs[k]] = L->node_box[ni];
    }
    for (int i = 0; i < g->n_outputs; i++)
        add_box(L, &cap, KILN_VIZ_OUT, i);
    int n_real = L->n_boxes;

    /* edges: one per (value, consumer), weights and consts left out */
    int ecap = 0;
    for (int ni = 0; ni < g->n_nodes; ni++) {
        const kiln_node *n = &g->nodes[ni];
        for (int k = 0; k < n->n_inputs; k++) {
            int v = n->inputs[k], dup = 0;
            if (v < 0 || src_box[v] < 0)
                continue;
            for (int q = 0; q < k; q++)
                dup |= n->inputs[q] == v;
            if (dup)
                continue;
            if (L->n_edges == ecap) {
                ecap = ecap ? 2 * ecap : 64;
                L->edges = kiln_xrealloc(L->edges, sizeof *L->edges * (size_t)ecap);
            }
            L->edges[L->n_edges++] = (kiln_viz_edge){src_box[v], L->node_box[ni], v, NULL, 0};
        }
    }
    for (int i = 0; i < g->n_outputs; i++) {
        int v = g->outputs[i];
        if (src_box[v] < 0)
            continue; /* a constant output: its box stands alone */
        if (L->n_edges == ecap) {
            ecap = ecap ? 2 * ecap : 64;
            L->edges = kiln_xrealloc(L->edges, sizeof *L->edges * (size_t)ecap);
        }
        L->edges[L->n_edges++] = (kiln_viz_edge){src_box[v], n_real - g->n_outputs + i, v, NULL, 0};
    }

    /* 1. layers. Boxes were created in topological order (inputs, nodes in
     * SSA order, outputs), so one forward pass is a longest-path layering. */
    int ne = L->n_edges;
    ivec *in_e = kiln_xcalloc((size_t)n_real + 1, sizeof(ivec));
    ivec *out_e = kiln_xcalloc((size_t)n_real + 1, sizeof(ivec));
    for (int e = 0; e < ne; e++) {
        ivec_push(&in_e[L->edges[e].dst], e);
        ivec_push(&out_e[L->edges[e].src], e);
    }
    for (int b = 0; b < n_real; b++) {
        int l = 0;
        for (int k = 0; k < in_e[b].n; k++) {
            int s = L->edges[in_e[b].v[k]].src;
            if (L->boxes[s].layer + 1 > l)
                l = L->boxes[s].layer + 1;
        }
        L->boxes[b].layer = l;
    }
    for (int b = n_real - 1; b >= 0; b--) {
        if (in_e[b].n || !out_e[b].n)
            continue;
        int l = -1;
        for (int k = 0; k < out_e[b].n; k++) {
            int d = L->boxes[L->edges[out_e[b].v[k]].dst].layer;
            if (l < 0 || d < l)
                l = d;
        }
        L->boxes[b].layer = l - 1;
    }
    for (int b = 0; b < n_real; b++)
        if (L->boxes[b].layer + 1 > L->n_layers)
            L->n_layers = L->boxes[b].layer + 1;

    /* 2. dummies: one lane per value, down to its deepest consumer */
    int *lane = kiln_xmalloc(sizeof(int) * (size_t)(nv + 1)); /* first dummy of the value's lane */
    int *deep = kiln_xmalloc(sizeof(int) * (size_t)(nv + 1));
    for (int v = 0; v < nv; v++) {
        lane[v] = -1;
        deep[v] = -1;
    }
    for (int e = 0; e < ne; e++) {
        int v = L->edges[e].value, d = L->boxes[L->edges[e].dst].layer;
        if (d > deep[v])
            deep[v] = d;
    }
    ivec seg_a = {0}, seg_b = {0};
    for (int v = 0; v < nv; v++) {
        if (deep[v] < 0 || src_box[v] < 0)
            continue;
        int s = src_box[v], ls = L->boxes[s].layer;
        if (deep[v] <= ls + 1)
            continue;
        int prev = s;
        for (int l = ls + 1; l < deep[v]; l++) {
            int d = add_box(L, &cap, KILN_VIZ_DUMMY, v);
            L->boxes[d].layer = l;
            if (l == ls + 1)
                lane[v] = d;
            ivec_push(&seg_a, prev);
            ivec_push(&seg_b, d);
            prev = d;
        }
    }
    for (int e = 0; e < ne; e++) {
        kiln_viz_edge *ed = &L->edges[e];
        int span = L->boxes[ed->dst].layer - L->boxes[ed->src].layer;
        int last = ed->src;
        if (span > 1) {
            /* the lane's dummies are consecutive boxes */
            ed->n_path = span - 1;
            ed->path = kiln_xmalloc(sizeof(int) * (size_t)ed->n_path);
            for (int k = 0; k < ed->n_path; k++)
                ed->path[k] = lane[ed->value] + k;
            last = ed->path[ed->n_path - 1];
        }
        ivec_push(&seg_a, last);
        ivec_push(&seg_b, ed->dst);
    }

    /* 3. order */
    int nl = L->n_layers, nb = L->n_boxes;
    int *lsize = kiln_xcalloc((size_t)nl + 1, sizeof(int));
    int **layer = kiln_xcalloc((size_t)nl + 1, sizeof(int *));
    for (int b = 0; b < nb; b++)
        lsize[L->boxes[b].layer]++;
    for (int l = 0; l < nl; l++) {
        layer[l] = kiln_xmalloc(sizeof(int) * (size_t)(lsize[l] + 1));
        lsize[l] = 0;
    }
    for (int b = 0; b < nb; b++)
        layer[L->boxes[b].layer][lsize[L->boxes[b].layer]++] = b;
    adj up, down;
    build_adj(nb, &seg_a, &seg_b, &up, &down);
    for (int b = 0; b < nb; b++)
        L->boxes[b].w = box_width(g, &L->boxes[b]);
    order_layers(g, L, layer, lsize, &up, &down);

    /* 4. coordinates */
    place_x(L, layer, lsize, &up, &down);

    adj_free(&up);
    adj_free(&down);
    for (int l = 0; l < nl; l++)
        free(layer[l]);
    free(layer);
    free(lsize);
    free(seg_a.v);
    free(seg_b.v);
    free(lane);
    free(deep);
    for (int b = 0; b < n_real; b++) {
        free(in_e[b].v);
        free(out_e[b].v);
    }
    free(in_e);
    free(out_e);
    free(src_box);
}

void kiln_viz_layout_free(kiln_viz_layout *L)
{
    for (int e = 0; e < L->n_edges; e++)
        free(L->edges[e].path);
    free(L->edges);
    free(L->boxes);
    free(L->node_box);
    memset(L, 0, sizeof *L);
}
