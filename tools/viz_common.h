/* viz_common.h - `kiln viz` internals shared by cmd_viz.c and viz_*.c:
 * the layered graph layout and the DOT / SVG / HTML writers. */
#ifndef KILN_VIZ_COMMON_H
#define KILN_VIZ_COMMON_H

#include "kiln_passes.h"

/* A box of the layered drawing. Graph inputs and outputs get boxes of their
 * own; weights and consts do not (a big model has hundreds; they are listed
 * in the consuming node's details instead). Edges spanning several layers
 * pass through dummy boxes, one per layer crossed, so they route around
 * nodes instead of through them. */
typedef enum kiln_viz_box_kind {
    KILN_VIZ_OP,    /* ref: node index */
    KILN_VIZ_IN,    /* ref: value id of a graph input */
    KILN_VIZ_OUT,   /* ref: index into g->outputs */
    KILN_VIZ_DUMMY, /* ref: value id whose edges pass through */
} kiln_viz_box_kind;

typedef struct kiln_viz_box {
    kiln_viz_box_kind kind;
    int ref;
    int layer;
    int order;   /* position within the layer, left to right */
    double x, w; /* centre and width, in SVG user units */
} kiln_viz_box;

/* One drawn edge: value `value` flowing from box src to box dst through
 * path[0..n_path) dummy boxes (top to bottom). */
typedef struct kiln_viz_edge {
    int src, dst;
    int value;
    int *path;
    int n_path;
} kiln_viz_edge;

typedef struct kiln_viz_layout {
    kiln_viz_box *boxes;
    int n_boxes;
    kiln_viz_edge *edges;
    int n_edges;
    int n_layers;
    int *node_box;   /* IR node index -> box index */
    double width, height;
} kiln_viz_layout;

#define KILN_VIZ_NODE_H 34.0
#define KILN_VIZ_LAYER_H 86.0 /* node height plus room for edge labels */
#define KILN_VIZ_MARGIN 24.0

/* Lays out g (layering, ordering, coordinates). The layout owns its arrays;
 * free with kiln_viz_layout_free. */
void kiln_viz_layout_build(const kiln_graph *g, kiln_viz_layout *L);
void kiln_viz_layout_free(kiln_viz_layout *L);
/* Top y of layer l. */
double kiln_viz_layer_y(int layer);

/* Appends the second line of a node's box: its name (the importer's node
 * name), else "%" and its first output's name. */
void kiln_viz_node_name(const kiln_graph *g, const kiln_node *n, kiln_sb *sb);
/* Length of the valid UTF-8 sequence at p that XML 1.0 allows, else 0
 * (names come from model files, so they may hold any bytes). */
int kiln_viz_utf8_len(const unsigned char *p);
/* Characters (not bytes) of UTF-8 text, for width estimates. */
int kiln_viz_text_len(const char *s);
/* Appends "dtype[d0, d1]" of value vid. */
void kiln_viz_type(const kiln_graph *g, int vid, kiln_sb *sb);
/* Appends a human byte count ("1.5 MiB"). */
void kiln_viz_bytes(int64_t b, kiln_sb *sb);
/* Appends a multi-line description of node ni (op, name, kernel, inputs
 * and outputs with types and kinds, attributes) for tooltips. */
void kiln_viz_node_details(const kiln_graph *g, int ni, kiln_sb *sb);

/* Writers. plan may be NULL when planning failed; plan_err then says why
 * (shown in place of the timeline). */
void kiln_viz_dot(const kiln_graph *g, kiln_sb *out);
void kiln_viz_svg(const kiln_graph *g, const kiln_viz_layout *L, const kiln_plan *plan,
                  const char *plan_err, kiln_sb *out);
void kiln_viz_html(const kiln_graph *g, const kiln_viz_layout *L, const kiln_plan *plan,
                   const char *plan_err, kiln_sb *out);

#endif
