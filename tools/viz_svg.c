/* viz_svg.c - SVG and self-contained HTML pictures of a graph and its
 * memory plan for `kiln viz`.
 *
 * The SVG carries its facts in data-* attributes (node index, op, kernel,
 * buffer offset/bytes/lifetime) so tools and tests can read the picture
 * back; text goes through xml_put, which also repairs invalid UTF-8, since
 * value names come from model files. The HTML wraps the same SVG with a
 * little inline script (pan, zoom, hover details, search) and loads nothing
 * from the network. */
#include "viz_common.h"

#include <stdlib.h>
#include <string.h>

/* ---- text ---- */

int kiln_viz_utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if ((p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0; /* overlong, surrogate */
        if (c == 0xEF && p[1] == 0xBF && (p[2] == 0xBE || p[2] == 0xBF))
            return 0; /* U+FFFE, U+FFFF are not XML characters */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if ((p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

/* Appends s as XML text/attribute content: markup characters escaped,
 * invalid bytes and control characters replaced by '?'. With max_chars > 0
 * longer text is cut and ends in an ellipsis. */
static void xml_put(kiln_sb *sb, const char *s, int max_chars)
{
    if (!s)
        return;
    int total = kiln_viz_text_len(s), chars = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        if (max_chars > 0 && total > max_chars && chars == max_chars - 1) {
            kiln_sb_printf(sb, "\xe2\x80\xa6");
            return;
        }
        int n = kiln_viz_utf8_len(p);
        if (n == 0) {
            kiln_sb_put(sb, "?", 1);
            p++;
        } else if (n == 1) {
            switch (*p) {
            case '&': kiln_sb_printf(sb, "&amp;"); break;
            case '<': kiln_sb_printf(sb, "&lt;"); break;
            case '>': kiln_sb_printf(sb, "&gt;"); break;
            case '"': kiln_sb_printf(sb, "&quot;"); break;
            case '\'': kiln_sb_printf(sb, "&#39;"); break;
            default:
                if (*p < 0x20 && *p != '\n' && *p != '\t')
                    kiln_sb_put(sb, "?", 1);
                else
                    kiln_sb_put(sb, (const char *)p, 1);
            }
            p++;
        } else {
            kiln_sb_put(sb, (const char *)p, (size_t)n);
            p += n;
        }
        chars++;
    }
}

void kiln_viz_type(const kiln_graph *g, int vid, kiln_sb *sb)
{
    kiln_type_print(&g->syms, &g->values[vid].type, sb);
}

void kiln_viz_bytes(int64_t b, kiln_sb *sb)
{
    if (b < 1024)
        kiln_sb_printf(sb, "%lld B", (long long)b);
    else if (b < 1024 * 1024)
        kiln_sb_printf(sb, "%.1f KiB", b / 1024.0);
    else if (b < 1024LL * 1024 * 1024)
        kiln_sb_printf(sb, "%.1f MiB", b / (1024.0 * 1024));
    else
        kiln_sb_printf(sb, "%.2f GiB", b / (1024.0 * 1024 * 1024));
}

#define LIST_SHOWN 12 /* list attributes show this many entries, then "..." */

static void attr_text(const kiln_attr *a, kiln_sb *sb)
{
    switch (a->kind) {
    case KILN_ATTR_INT: kiln_sb_printf(sb, "%lld", (long long)a->i); break;
    case KILN_ATTR_FLOAT: kiln_sb_printf(sb, "%g", a->f); break;
    case KILN_ATTR_STRING: kiln_sb_printf(sb, "\"%s\"", a->s ? a->s : ""); break;
    case KILN_ATTR_DTYPE: kiln_sb_printf(sb, "%s", kiln_dtype_name((kiln_dtype)a->i)); break;
    case KILN_ATTR_INTS:
    case KILN_ATTR_FLOATS:
    case KILN_ATTR_STRINGS:
        kiln_sb_put(sb, "[", 1);
        for (int k = 0; k < a->n && k < LIST_SHOWN; k++) {
            if (k)
                kiln_sb_put(sb, ", ", 2);
            if (a->kind == KILN_ATTR_INTS)
                kiln_sb_printf(sb, "%lld", (long long)a->ints[k]);
            else if (a->kind == KILN_ATTR_FLOATS)
                kiln_sb_printf(sb, "%g", a->floats[k]);
            else
                kiln_sb_printf(sb, "\"%s\"", a->strings[k] ? a->strings[k] : "");
        }
        if (a->n > LIST_SHOWN)
            kiln_sb_printf(sb, ", ... (%d)", a->n);
        kiln_sb_put(sb, "]", 1);
        break;
    }
}

void kiln_viz_node_details(const kiln_graph *g, int ni, kiln_sb *sb)
{
    static const char *kinds[] = {"input", "weight", "const", ""};
    const kiln_node *n = &g->nodes[ni];
    kiln_sb_printf(sb, "%s", n->op->name);
    if (n->name && n->name[0])
        kiln_sb_printf(sb, " '%s'", n->name);
    kiln_sb_printf(sb, " (node %d", ni);
    if (n->kernel >= 0)
        kiln_sb_printf(sb, ", kernel %d", n->kernel);
    kiln_sb_printf(sb, ")");
    for (int k = 0; k < n->n_inputs; k++) {
        kiln_sb_printf(sb, "\n%s", k ? "     " : "in:  ");
        int v = n->inputs[k];
        if (v < 0) {
            kiln_sb_printf(sb, "_ (absent)");
            continue;
        }
        kiln_sb_printf(sb, "%%%s ", g->values[v].name);
        kiln_viz_type(g, v, sb);
        if (g->values[v].kind != KILN_VAL_NODE)
            kiln_sb_printf(sb, " (%s)", kinds[g->values[v].kind]);
    }
    for (int k = 0; k < n->n_outputs; k++) {
        kiln_sb_printf(sb, "\n%s%%%s ", k ? "     " : "out: ", g->values[n->outputs[k]].name);
        kiln_viz_type(g, n->outputs[k], sb);
    }
    for (int k = 0; k < n->n_attrs; k++) {
        kiln_sb_printf(sb, "\n%s%s = ", k ? "     " : "attr: ", n->attrs[k].name);
        attr_text(&n->attrs[k], sb);
    }
}

/* ---- graph ---- */

static const char *op_class(const kiln_op_def *op)
{
    const char *s = op->name;
    if (strstr(s, "Attention"))
        return "c-attn";
    if (!strcmp(s, "MatMul") || !strcmp(s, "Gemm") || !strcmp(s, "Linear") ||
        !strcmp(s, "FusedMatMul") || !strcmp(s, "Einsum") || strstr(s, "Conv"))
        return "c-mm";
    if (strstr(s, "Norm"))
        return "c-norm";
    if (op->flags & KILN_OP_SHAPE_ONLY)
        return "c-shape";
    if (op->flags & KILN_OP_ELEMENTWISE)
        return "c-ew";
    return "c-other";
}

static void box_id(const kiln_viz_box *b, kiln_sb *sb)
{
    switch (b->kind) {
    case KILN_VIZ_OP: kiln_sb_printf(sb, "n%d", b->ref); break;
    case KILN_VIZ_IN: kiln_sb_printf(sb, "v%d", b->ref); break;
    case KILN_VIZ_OUT: kiln_sb_printf(sb, "o%d", b->ref); break;
    case KILN_VIZ_DUMMY: kiln_sb_printf(sb, "d%d", b->ref); break;
    }
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}

/* Distinct kernel ids of g's nodes, sorted; caller frees. */
static int *kernel_ids(const kiln_graph *g, int *count)
{
    int *ids = kiln_xmalloc(sizeof(int) * (size_t)(g->n_nodes + 1)), n = 0;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].kernel >= 0)
            ids[n++] = g->nodes[i].kernel;
    qsort(ids, (size_t)n, sizeof *ids, cmp_int);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (m == 0 || ids[m - 1] != ids[i])
            ids[m++] = ids[i];
    *count = m;
    return ids;
}

/* Appends path commands from (x, y), a port at the bottom of a box or
 * dummy, down through dummies path[0..n) (entering each at its top, leaving
 * at its bottom) to the top of `end`, or stopping at the last dummy's
 * bottom when end is NULL. Curves between layers have vertical tangents;
 * runs of vertical steps become one line. */
static void route(kiln_sb *sb, const kiln_viz_layout *L, double x, double y, const int *path, int n,
                  const kiln_viz_box *end)
{
    double vy = -1;
    for (int k = 0; k < n + (end != NULL); k++) {
        const kiln_viz_box *b = k < n ? &L->boxes[path[k]] : end;
        double ty = kiln_viz_layer_y(b->layer);
        if (b->x - x > 0.05 || x - b->x > 0.05) {
            if (vy >= 0)
                kiln_sb_printf(sb, " L%.1f %.1f", x, vy);
            double ym = (y + ty) / 2;
            kiln_sb_printf(sb, " C%.1f %.1f %.1f %.1f %.1f %.1f", x, ym, b->x, ym, b->x, ty);
            x = b->x;
            vy = -1;
        } else {
            vy = ty;
        }
        y = ty;
        if (k < n) {
            y += KILN_VIZ_NODE_H;
            vy = y;
        }
    }
    if (vy >= 0)
        kiln_sb_printf(sb, " L%.1f %.1f", x, vy);
}

static void emit_graph(const kiln_graph *g, const kiln_viz_layout *L, kiln_sb *sb)
{
    double h = KILN_VIZ_NODE_H;
    int nk;
    int *kids = kernel_ids(g, &nk);
    kiln_sb_printf(sb, "<g class=\"graph\" data-nodes=\"%d\" data-edges=\"%d\" data-kernels=\"%d\">\n",
                   g->n_nodes, L->n_edges, nk);
    /* clusters first, so they sit behind everything: bounding boxes of
     * each kernel's nodes, found in one pass (kernel ids by binary search) */
    double *bb = kiln_xmalloc(sizeof(double) * 4 * (size_t)(nk + 1));
    int *cnt = kiln_xcalloc((size_t)nk + 1, sizeof(int));
    for (int i = 0; i < g->n_nodes; i++) {
        if (g->nodes[i].kernel < 0)
            continue;
        const int *at = bsearch(&g->nodes[i].kernel, kids, (size_t)nk, sizeof *kids, cmp_int);
        int c = (int)(at - kids);
        const kiln_viz_box *b = &L->boxes[L->node_box[i]];
        double bx0 = b->x - b->w / 2, by0 = kiln_viz_layer_y(b->layer), *r = &bb[4 * c];
        if (!cnt[c] || bx0 < r[0])
            r[0] = bx0;
        if (!cnt[c] || by0 < r[1])
            r[1] = by0;
        if (!cnt[c] || bx0 + b->w > r[2])
            r[2] = bx0 + b->w;
        if (!cnt[c] || by0 + h > r[3])
            r[3] = by0 + h;
        cnt[c]++;
    }
    for (int c = 0; c < nk; c++) {
        double x0 = bb[4 * c], y0 = bb[4 * c + 1], x1 = bb[4 * c + 2], y1 = bb[4 * c + 3];
        int n = cnt[c];
        kiln_sb_printf(sb,
                       "<g class=\"cluster\" data-kernel=\"%d\" data-size=\"%d\"><title>kernel %d: %d "
                       "nodes</title><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" rx=\"8\"/>"
                       "<text x=\"%.1f\" y=\"%.1f\">kernel %d</text></g>\n",
                       kids[c], n, kids[c], n, x0 - 8, y0 - 16, x1 - x0 + 16, y1 - y0 + 24, x0 - 4,
                       y0 - 5, kids[c]);
    }
    free(bb);
    free(cnt);
    /* edges run from the bottom centre of the source to the top centre of
     * the target. An edge crossing layers leaves its value's lane at the
     * last dummy; the lane (source -> deepest dummy) is drawn once per
     * value, so a value feeding every layer costs one long path, not one
     * per use. */
    int *lane_edge = kiln_xmalloc(sizeof(int) * (size_t)(g->n_values + 1));
    for (int v = 0; v < g->n_values; v++)
        lane_edge[v] = -1;
    for (int e = 0; e < L->n_edges; e++) {
        const kiln_viz_edge *ed = &L->edges[e];
        int *le = &lane_edge[ed->value];
        if (ed->n_path && (*le < 0 || ed->n_path > L->edges[*le].n_path))
            *le = e;
    }
    for (int v = 0; v < g->n_values; v++) {
        if (lane_edge[v] < 0)
            continue;
        const kiln_viz_edge *ed = &L->edges[lane_edge[v]];
        const kiln_viz_box *s = &L->boxes[ed->src];
        kiln_sb_printf(sb, "<path class=\"lane\" data-value=\"");
        xml_put(sb, g->values[v].name, 0);
        kiln_sb_printf(sb, "\" data-src=\"");
        box_id(s, sb);
        kiln_sb_printf(sb, "\" d=\"M%.1f %.1f", s->x, kiln_viz_layer_y(s->layer) + h);
        route(sb, L, s->x, kiln_viz_layer_y(s->layer) + h, ed->path, ed->n_path, NULL);
        kiln_sb_printf(sb, "\"/>\n");
    }
    free(lane_edge);
    for (int e = 0; e < L->n_edges; e++) {
        const kiln_viz_edge *ed = &L->edges[e];
        const kiln_viz_box *s = &L->boxes[ed->src], *t = &L->boxes[ed->dst];
        const kiln_viz_box *from = ed->n_path ? &L->boxes[ed->path[ed->n_path - 1]] : s;
        double x = from->x, y = kiln_viz_layer_y(from->layer) + h;
        kiln_sb_printf(sb, "<path class=\"edge\" data-value=\"");
        xml_put(sb, g->values[ed->value].name, 0);
        kiln_sb_printf(sb, "\" data-src=\"");
        box_id(s, sb);
        kiln_sb_printf(sb, "\" data-dst=\"");
        box_id(t, sb);
        kiln_sb_printf(sb, "\"%s d=\"M%.1f %.1f", ed->n_path ? " data-lane=\"1\"" : "", x, y);
        route(sb, L, x, y, NULL, 0, t);
        kiln_sb_printf(sb, "\"><title>%%");
        kiln_sb tt = {0};
        kiln_sb_printf(&tt, "%s ", g->values[ed->value].name);
        kiln_viz_type(g, ed->value, &tt);
        xml_put(sb, tt.s, 0);
        kiln_sb_free(&tt);
        kiln_sb_printf(sb, "</title></path>\n");
    }
    /* one dtype[shape] label per value, under its producer (a value has
     * one producer box, so a flag per value suffices); stacked per box */
    char *labelled = kiln_xcalloc((size_t)g->n_values + 1, 1);
    int *slot = kiln_xcalloc((size_t)L->n_boxes + 1, sizeof(int));
    for (int e = 0; e < L->n_edges; e++) {
        const kiln_viz_edge *ed = &L->edges[e];
        if (labelled[ed->value])
            continue;
        labelled[ed->value] = 1;
        const kiln_viz_box *bx = &L->boxes[ed->src];
        kiln_sb t = {0};
        kiln_viz_type(g, ed->value, &t);
        kiln_sb_printf(sb, "<text class=\"elabel\" x=\"%.1f\" y=\"%.1f\">", bx->x + 5,
                       kiln_viz_layer_y(bx->layer) + h + 12 + 11 * slot[ed->src]++);
        xml_put(sb, t.s, 48);
        kiln_sb_printf(sb, "</text>\n");
        kiln_sb_free(&t);
    }
    free(labelled);
    free(slot);
    /* boxes */
    for (int b = 0; b < L->n_boxes; b++) {
        const kiln_viz_box *bx = &L->boxes[b];
        if (bx->kind == KILN_VIZ_DUMMY)
            continue;
        double x0 = bx->x - bx->w / 2, y0 = kiln_viz_layer_y(bx->layer);
        kiln_sb top = {0}, name = {0}, tip = {0};
        if (bx->kind == KILN_VIZ_OP) {
            const kiln_node *n = &g->nodes[bx->ref];
            kiln_sb_printf(sb, "<g class=\"node %s\" id=\"n%d\" data-node=\"%d\" data-op=\"%s\" "
                               "data-kernel=\"%d\"",
                           op_class(n->op), bx->ref, bx->ref, n->op->name, n->kernel);
            kiln_sb_printf(&top, "%s", n->op->name);
            kiln_viz_node_name(g, n, &name);
            kiln_viz_node_details(g, bx->ref, &tip);
        } else {
            int v = bx->kind == KILN_VIZ_IN ? bx->ref : g->outputs[bx->ref];
            int is_in = bx->kind == KILN_VIZ_IN;
            kiln_sb_printf(sb, "<g class=\"io %s\" id=\"", is_in ? "input" : "output");
            box_id(bx, sb);
            kiln_sb_printf(sb, "\" data-value=\"");
            xml_put(sb, g->values[v].name, 0);
            kiln_sb_printf(sb, "\"");
            kiln_sb_printf(&top, "%s", is_in ? "input" : "output");
            kiln_sb_printf(&name, "%%%s", g->values[v].name);
            kiln_sb_printf(&tip, "%s %%%s ", is_in ? "input" : "output", g->values[v].name);
            kiln_viz_type(g, v, &tip);
        }
        kiln_sb_printf(sb, " transform=\"translate(%.1f %.1f)\"><title>", x0, y0);
        xml_put(sb, tip.s, 0);
        kiln_sb_printf(sb, "</title><rect width=\"%.1f\" height=\"%.1f\" rx=\"%d\"/>"
                           "<text class=\"op\" x=\"%.1f\" y=\"14\">",
                       bx->w, h, bx->kind == KILN_VIZ_OP ? 5 : 16, bx->w / 2);
        xml_put(sb, top.s, 0);
        kiln_sb_printf(sb, "</text><text class=\"nm\" x=\"%.1f\" y=\"28\">", bx->w / 2);
        xml_put(sb, name.s, 30);
        kiln_sb_printf(sb, "</text></g>\n");
        kiln_sb_free(&top);
        kiln_sb_free(&name);
        kiln_sb_free(&tip);
    }
    kiln_sb_printf(sb, "</g>\n");
    free(kids);
}

/* ---- memory timeline ---- */

#define MEM_LEFT 84.0 /* room for byte labels */
#define MEM_TOP 44.0
#define MEM_PLOT_H 320.0
#define MEM_BOTTOM 40.0

/* Appends the timeline (origin at 0,0) and returns its size. x: node order
 * (a buffer spans the columns of its first..last node); y: arena offset,
 * 0 at the bottom. */
static void emit_memory(const kiln_graph *g, const kiln_plan *p, const char *plan_err, kiln_sb *sb,
                        double *w_out, double *h_out)
{
    int nn = g->n_nodes, cols = nn + 1;
    double colw = 900.0 / cols;
    if (colw > 96)
        colw = 96;
    if (colw < 2)
        colw = 2;
    double pw = cols * colw, ph = MEM_PLOT_H;
    *w_out = MEM_LEFT + pw + KILN_VIZ_MARGIN;
    if (!p) {
        kiln_sb_printf(sb, "<g class=\"memory\" data-buffers=\"0\"><text class=\"h\" x=\"%.1f\" "
                           "y=\"20\">memory plan unavailable: ",
                       KILN_VIZ_MARGIN);
        xml_put(sb, plan_err, 0);
        kiln_sb_printf(sb, "</text></g>\n");
        *h_out = 40;
        if (*w_out < 600)
            *w_out = 600;
        return;
    }
    int nbuf = 0, nalias = 0, nfused = 0;
    for (int v = 0; v < p->n_values; v++) {
        nbuf += p->bufs[v].kind == KILN_BUF_ARENA;
        nalias += p->bufs[v].kind == KILN_BUF_ALIAS;
        nfused += p->bufs[v].kind == KILN_BUF_NONE;
    }
    int64_t arena = p->arena_bytes > 0 ? p->arena_bytes : 1;
    kiln_sb_printf(sb,
                   "<g class=\"memory\" data-buffers=\"%d\" data-arena-bytes=\"%lld\" "
                   "data-naive-bytes=\"%lld\" data-lower-bound=\"%lld\" data-nodes=\"%d\">\n",
                   nbuf, (long long)p->arena_bytes, (long long)p->naive_bytes,
                   (long long)p->lower_bound, nn);
    kiln_sb head = {0};
    kiln_sb_printf(&head, "memory plan: arena peak ");
    kiln_viz_bytes(p->arena_bytes, &head);
    kiln_sb_printf(&head, ", naive sum ");
    kiln_viz_bytes(p->naive_bytes, &head);
    kiln_sb_printf(&head, ", lower bound ");
    kiln_viz_bytes(p->lower_bound, &head);
    kiln_sb_printf(&head, "; %d buffers, %d aliased, %d inside fused kernels", nbuf, nalias, nfused);
    if (p->n_syms) {
        kiln_sb_printf(&head, "; bounds");
        for (int i = 0; i < p->n_syms; i++)
            kiln_sb_printf(&head, " %s=%lld", g->syms.syms[p->sym_id[i]].name, (long long)p->sym_max[i]);
    }
    kiln_sb_printf(sb, "<text class=\"h\" x=\"%.1f\" y=\"20\">", KILN_VIZ_MARGIN);
    xml_put(sb, head.s, 0);
    double head_w = 2 * KILN_VIZ_MARGIN + 7.6 * kiln_viz_text_len(head.s); /* bold 13px */
    if (*w_out < head_w)
        *w_out = head_w;
    kiln_sb_printf(sb, "</text>\n");
    kiln_sb_free(&head);
    double x0 = MEM_LEFT, y0 = MEM_TOP, ybase = y0 + ph;
    kiln_sb_printf(sb, "<rect class=\"plot\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>\n",
                   x0, y0, pw, ph);
    /* axes: 4 byte ticks, about 12 node ticks */
    for (int i = 0; i <= 4; i++) {
        int64_t b = p->arena_bytes * i / 4;
        double y = ybase - (double)b / (double)arena * ph;
        kiln_sb_printf(sb, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                           "<text class=\"yt\" x=\"%.1f\" y=\"%.1f\">",
                       x0, y, x0 + pw, y, x0 - 6, y + 4);
        kiln_sb t = {0};
        kiln_viz_bytes(b, &t);
        xml_put(sb, t.s, 0);
        kiln_sb_free(&t);
        kiln_sb_printf(sb, "</text>\n");
    }
    int step = 1;
    while (cols / step > 12)
        step = step < 5 ? step + 1 : step * 2;
    for (int c = 0; c < cols; c += step)
        kiln_sb_printf(sb, "<text class=\"xt\" x=\"%.1f\" y=\"%.1f\">%d</text>\n", x0 + (c + 0.5) * colw,
                       ybase + 14, c);
    kiln_sb_printf(sb, "<text class=\"xl\" x=\"%.1f\" y=\"%.1f\">node (execution order)</text>\n",
                   x0 + pw / 2, ybase + 30);
    /* which values share each buffer (views, in-place results): a list per
     * storage owner, share[owner] -> share_next[...] */
    int *share = kiln_xmalloc(sizeof(int) * (size_t)(p->n_values + 1));
    int *share_next = kiln_xmalloc(sizeof(int) * (size_t)(p->n_values + 1));
    for (int v = 0; v < p->n_values; v++)
        share[v] = share_next[v] = -1;
    for (int v = p->n_values - 1; v >= 0; v--)
        if (p->bufs[v].kind == KILN_BUF_ALIAS) {
            int r = kiln_plan_root(p, v);
            share_next[v] = share[r];
            share[r] = v;
        }
    for (int v = 0; v < p->n_values; v++) {
        const kiln_buf *b = &p->bufs[v];
        if (b->kind != KILN_BUF_ARENA)
            continue;
        int prod = g->values[v].producer;
        double bx = x0 + b->first * colw, bw = (b->last - b->first + 1) * colw;
        double by = ybase - (double)(b->offset + b->bytes) / (double)arena * ph;
        double bh = (double)b->bytes / (double)arena * ph;
        if (bh < 1)
            bh = 1;
        kiln_sb_printf(sb, "<rect class=\"buf\" data-value=\"");
        xml_put(sb, g->values[v].name, 0);
        kiln_sb_printf(sb,
                       "\" data-vid=\"%d\" data-offset=\"%lld\" data-bytes=\"%lld\" data-first=\"%d\" "
                       "data-last=\"%d\" data-node=\"%d\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
                       "height=\"%.2f\" fill=\"hsl(%d,62%%,72%%)\"><title>",
                       v, (long long)b->offset, (long long)b->bytes, b->first, b->last, prod, bx, by, bw,
                       bh, (prod * 47) % 360);
        kiln_sb t = {0};
        kiln_sb_printf(&t, "%%%s ", g->values[v].name);
        kiln_viz_type(g, v, &t);
        kiln_sb_printf(&t, "\n");
        kiln_viz_bytes(b->bytes, &t);
        kiln_sb_printf(&t, " at offset %lld..%lld\nlive from node %d to node %d\nmade by ",
                       (long long)b->offset, (long long)(b->offset + b->bytes), b->first, b->last);
        char label[256];
        kiln_sb_printf(&t, "%s", kiln_node_label(g, &g->nodes[prod], label, sizeof label));
        int shown = 0;
        for (int a = share[v]; a >= 0; a = share_next[a]) {
            if (shown < 8)
                kiln_sb_printf(&t, "%s%%%s", shown ? ", " : "\nshared by ", g->values[a].name);
            shown++;
        }
        if (shown > 8)
            kiln_sb_printf(&t, " and %d more", shown - 8);
        xml_put(sb, t.s, 0);
        kiln_sb_free(&t);
        kiln_sb_printf(sb, "</title></rect>\n");
    }
    free(share);
    free(share_next);
    /* bytes live at each node (unpadded), by a difference array over the
     * lifetimes, and the planner's lower bound */
    int64_t *delta = kiln_xcalloc((size_t)cols + 2, sizeof(int64_t));
    for (int v = 0; v < p->n_values; v++) {
        const kiln_buf *b = &p->bufs[v];
        if (b->kind == KILN_BUF_ARENA && b->first >= 0 && b->first <= b->last && b->last < cols) {
            delta[b->first] += b->bytes;
            delta[b->last + 1] -= b->bytes;
        }
    }
    kiln_sb_printf(sb, "<polyline class=\"live\" points=\"");
    int64_t live = 0;
    for (int c = 0; c < cols; c++) {
        live += delta[c];
        double y = ybase - (double)live / (double)arena * ph;
        kiln_sb_printf(sb, "%.1f,%.1f %.1f,%.1f ", x0 + c * colw, y, x0 + (c + 1) * colw, y);
    }
    free(delta);
    kiln_sb_printf(sb, "\"><title>bytes live at each node</title></polyline>\n");
    double ylb = ybase - (double)p->lower_bound / (double)arena * ph;
    kiln_sb_printf(sb, "<line class=\"lb\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"><title>lower "
                       "bound: most bytes live at one node</title></line>\n",
                   x0, ylb, x0 + pw, ylb);
    kiln_sb_printf(sb, "</g>\n");
    *h_out = MEM_TOP + ph + MEM_BOTTOM;
}

/* ---- documents ---- */

static const char CSS[] =
    "text{font-family:Helvetica,Arial,sans-serif}"
    ".graph .node rect{stroke:#445;stroke-width:1}"
    ".graph .node.hl rect,.graph .io.hl rect{stroke:#d00;stroke-width:2.5}"
    ".graph .c-mm rect{fill:#f9d9a6}.graph .c-attn rect{fill:#f4b6b6}.graph .c-norm rect{fill:#c9e4c5}"
    ".graph .c-shape rect{fill:#e4e4e4}.graph .c-ew rect{fill:#d6e6f7}.graph .c-other rect{fill:#e8daf2}"
    ".graph .io rect{fill:#fff;stroke:#445;stroke-dasharray:4 2}"
    ".graph .op{font-size:12px;font-weight:bold;text-anchor:middle}"
    ".graph .nm{font-size:11px;text-anchor:middle;fill:#333}"
    ".graph .edge{fill:none;stroke:#778;stroke-width:1.2;marker-end:url(#kiln-arrow)}"
    ".graph .edge.hl{stroke:#d00;stroke-width:2.5}"
    ".graph .lane{fill:none;stroke:#778;stroke-width:1.2}.graph .lane.hl{stroke:#d00;stroke-width:2.5}"
    ".graph .elabel{font-size:9px;fill:#336}"
    ".graph .cluster rect{fill:#fff6e0;stroke:#c08a2a;stroke-dasharray:5 3}"
    ".graph .cluster text{font-size:10px;fill:#a06a10}"
    ".memory .h{font-size:13px;font-weight:bold}"
    ".memory .plot{fill:#fafafa;stroke:#999}.memory .grid{stroke:#e2e2e2}"
    ".memory .yt{font-size:10px;text-anchor:end}.memory .xt{font-size:10px;text-anchor:middle}"
    ".memory .xl{font-size:11px;text-anchor:middle}"
    ".memory .buf{stroke:#555;stroke-width:0.4}.memory .buf.hl{stroke:#d00;stroke-width:2}"
    ".memory .live{fill:none;stroke:#1f5fa8;stroke-width:1.2}"
    ".memory .lb{stroke:#d00;stroke-dasharray:6 3}";

static const char ARROW[] =
    "<defs><marker id=\"kiln-arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" "
    "markerHeight=\"7\" orient=\"auto\"><path d=\"M0 0L10 5L0 10z\" fill=\"#778\"/></marker></defs>\n";

static void summary(const kiln_graph *g, const kiln_viz_layout *L, kiln_sb *t)
{
    int nk;
    free(kernel_ids(g, &nk));
    kiln_sb_printf(t, "graph \"%s\": %d nodes, %d inputs, %d outputs, %d edges, %d fused kernels",
                   g->name ? g->name : "", g->n_nodes, g->n_inputs, g->n_outputs, L->n_edges, nk);
}

void kiln_viz_svg(const kiln_graph *g, const kiln_viz_layout *L, const kiln_plan *plan,
                  const char *plan_err, kiln_sb *out)
{
    kiln_sb mem = {0};
    double mw, mh, head = 36, gap = 30;
    emit_memory(g, plan, plan_err, &mem, &mw, &mh);
    kiln_sb t = {0};
    summary(g, L, &t);
    double w = L->width > mw ? L->width : mw, h = head + L->height + gap + mh;
    double tw = 2 * KILN_VIZ_MARGIN + 8.6 * kiln_viz_text_len(t.s); /* bold 15px */
    if (w < tw)
        w = tw;
    kiln_sb_printf(out,
                   "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                   "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                   "viewBox=\"0 0 %.1f %.1f\">\n<style>%s</style>\n%s"
                   "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n<text x=\"%.1f\" y=\"24\" "
                   "font-size=\"15\" font-weight=\"bold\">",
                   w, h, w, h, CSS, ARROW, KILN_VIZ_MARGIN);
    xml_put(out, t.s, 0);
    kiln_sb_free(&t);
    kiln_sb_printf(out, "</text>\n<g transform=\"translate(0 %.1f)\">\n", head);
    emit_graph(g, L, out);
    kiln_sb_printf(out, "</g>\n<g transform=\"translate(0 %.1f)\">\n", head + L->height + gap);
    kiln_sb_put(out, mem.s, mem.len);
    kiln_sb_printf(out, "</g>\n</svg>\n");
    kiln_sb_free(&mem);
}

/* The page's script: records errors (so a headless browser run can see
 * them in the DOM), pan and zoom by viewBox, hover details, search. */
static const char JS_ERRORS[] =
    "window.addEventListener('error',function(e){var r=document.documentElement;"
    "r.setAttribute('data-errors',(r.getAttribute('data-errors')||'')+(e.message||'error')+';');});";

static const char JS_MAIN[] =
    "(function(){\n"
    "var root=document.getElementById('kiln-viz'),det=document.getElementById('details');\n"
    "function panzoom(svg,fit_width){\n"
    " var vb=svg.viewBox.baseVal,drag=null;\n"
    /* a tall graph fitted whole would be unreadably small: start with its
     * width filling the view, top first */
    " if(fit_width&&svg.clientWidth>0){\n"
    "  var h=vb.width*svg.clientHeight/svg.clientWidth;if(h<vb.height)vb.height=h;}\n"
    " var home=[vb.x,vb.y,vb.width,vb.height];\n"
    " function set(r){vb.x=r[0];vb.y=r[1];vb.width=r[2];vb.height=r[3];}\n"
    " function at(ev){var p=svg.createSVGPoint();p.x=ev.clientX;p.y=ev.clientY;\n"
    "  return p.matrixTransform(svg.getScreenCTM().inverse());}\n"
    " svg.addEventListener('wheel',function(ev){ev.preventDefault();\n"
    "  var p=at(ev),k=ev.deltaY<0?1/1.2:1.2;\n"
    "  set([p.x-(p.x-vb.x)*k,p.y-(p.y-vb.y)*k,vb.width*k,vb.height*k]);},{passive:false});\n"
    " svg.addEventListener('mousedown',function(ev){drag=at(ev);svg.classList.add('drag');});\n"
    " window.addEventListener('mousemove',function(ev){if(!drag)return;\n"
    "  var p=at(ev);vb.x-=p.x-drag.x;vb.y-=p.y-drag.y;});\n"
    " window.addEventListener('mouseup',function(){drag=null;svg.classList.remove('drag');});\n"
    " svg.addEventListener('dblclick',function(){set(home);});\n"
    " return set;\n"
    "}\n"
    "var gsvg=document.getElementById('graph-svg'),msvg=document.getElementById('memory-svg');\n"
    "var look=panzoom(gsvg,true);panzoom(msvg,false);\n"
    "function mark(el,on){\n"
    " var id=el.id,list=[el];\n"
    " if(id){var q='[data-src=\"'+id+'\"]';\n"
    "  list=list.concat([].slice.call(gsvg.querySelectorAll(\n"
    "   'path.edge'+q+',path.lane'+q+',path.edge[data-dst=\"'+id+'\"]')));}\n"
    " if(el.classList.contains('buf')){\n"
    "  var n=document.getElementById('n'+el.getAttribute('data-node'));if(n)list.push(n);}\n"
    " list.forEach(function(x){x.classList.toggle('hl',on);});\n"
    "}\n"
    "function show(el){var t=el.querySelector('title');det.textContent=t?t.textContent:'';}\n"
    "[].forEach.call(document.querySelectorAll('g.node,g.io,rect.buf,path.edge,g.cluster'),function(el){\n"
    " el.addEventListener('mouseenter',function(){show(el);mark(el,true);});\n"
    " el.addEventListener('mouseleave',function(){mark(el,false);});\n"
    "});\n"
    /* search: the first node or io box whose details contain the text,
     * centred in an 800x500 window (boxes are placed by translate()) */
    "var found=null;\n"
    "document.getElementById('find').addEventListener('keydown',function(ev){\n"
    " if(ev.key!=='Enter')return;\n"
    " var q=this.value.toLowerCase();if(found){mark(found,false);found=null;}\n"
    " if(!q)return;var all=gsvg.querySelectorAll('g.node,g.io');\n"
    " for(var i=0;i<all.length;i++){var t=all[i].querySelector('title');\n"
    "  if(t&&t.textContent.toLowerCase().indexOf(q)>=0){found=all[i];break;}}\n"
    " if(!found){det.textContent='no node matches '+this.value;return;}\n"
    " var b=found.getBBox(),m=found.transform.baseVal.consolidate().matrix;\n"
    " look([m.e+b.x+b.width/2-400,m.f+b.y+b.height/2-250,800,500]);\n"
    " mark(found,true);show(found);\n"
    "});\n"
    "root.setAttribute('data-rendered-nodes',gsvg.querySelectorAll('g.node').length);\n"
    "root.setAttribute('data-rendered-buffers',msvg.querySelectorAll('rect.buf').length);\n"
    "root.setAttribute('data-status','ok');\n"
    "})();\n";

static const char PAGE_CSS[] =
    "body{margin:0;font-family:Helvetica,Arial,sans-serif;background:#f3f3f1}"
    "header{padding:8px 14px;background:#263238;color:#fff}header h1{font-size:16px;margin:0 0 4px}"
    "header p{margin:0;font-size:12px;opacity:.85}"
    "#bar{padding:6px 14px;font-size:12px}#bar input{width:260px;margin-right:12px}"
    "section{margin:0 14px 10px;background:#fff;border:1px solid #bbb}"
    "section h2{font-size:13px;margin:0;padding:4px 8px;background:#eceff1;border-bottom:1px solid #ccc}"
    "svg{display:block;width:100%;cursor:grab}svg.drag{cursor:grabbing}"
    "#graph-svg{height:68vh}#memory-svg{height:44vh}"
    "#details{position:fixed;right:14px;bottom:14px;max-width:46%;max-height:40vh;overflow:auto;"
    "white-space:pre;font:12px monospace;background:#fffde7;border:1px solid #bba;padding:6px 8px;"
    "margin:0}#details:empty{display:none}";

void kiln_viz_html(const kiln_graph *g, const kiln_viz_layout *L, const kiln_plan *plan,
                   const char *plan_err, kiln_sb *out)
{
    kiln_sb mem = {0}, t = {0};
    double mw, mh;
    emit_memory(g, plan, plan_err, &mem, &mw, &mh);
    int nk, nbuf = 0;
    free(kernel_ids(g, &nk));
    for (int v = 0; plan && v < plan->n_values; v++)
        nbuf += plan->bufs[v].kind == KILN_BUF_ARENA;
    kiln_sb_printf(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                        "<title>kiln viz: ");
    xml_put(out, g->name, 0);
    kiln_sb_printf(out, "</title>\n<script>%s</script>\n<style>%s%s</style>\n</head><body>\n",
                   JS_ERRORS, PAGE_CSS, CSS);
    kiln_sb_printf(out,
                   "<div id=\"kiln-viz\" data-nodes=\"%d\" data-edges=\"%d\" data-kernels=\"%d\" "
                   "data-buffers=\"%d\">\n<header><h1>kiln viz: ",
                   g->n_nodes, L->n_edges, nk, nbuf);
    xml_put(out, g->name, 0);
    kiln_sb_printf(out, "</h1><p>");
    summary(g, L, &t);
    xml_put(out, t.s, 0);
    kiln_sb_free(&t);
    kiln_sb_printf(out, "</p></header>\n<div id=\"bar\"><input id=\"find\" placeholder=\"find a node "
                        "(op, name, value) + Enter\">wheel: zoom, drag: pan, double-click: reset, "
                        "hover: details</div>\n");
    kiln_sb_printf(out, "<section><h2>graph</h2><svg id=\"graph-svg\" "
                        "xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.1f %.1f\" "
                        "preserveAspectRatio=\"xMidYMin meet\">\n%s",
                   L->width, L->height, ARROW);
    emit_graph(g, L, out);
    kiln_sb_printf(out, "</svg></section>\n<section><h2>memory plan</h2><svg id=\"memory-svg\" "
                        "xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.1f %.1f\" "
                        "preserveAspectRatio=\"xMinYMin meet\">\n",
                   mw, mh);
    kiln_sb_put(out, mem.s, mem.len);
    kiln_sb_printf(out, "</svg></section>\n<pre id=\"details\"></pre>\n</div>\n<script>\n%s</script>\n"
                        "</body></html>\n",
                   JS_MAIN);
    kiln_sb_free(&mem);
}
