/* The demo model draws what its prompt says (issue 7), measured on the pixels.
 *
 * models/demo (tools/demo/train.py) is asked for eight pictures with fixed
 * seeds and the library's defaults (what `vramfit generate --prompt ...` does);
 * each PNG, as written and read back, is measured and must match its caption:
 *   - background: the most common palette colour of the border pixels (each
 *     pixel taken to its nearest palette colour) is the named one;
 *   - shape colour: the most common nearest palette colour of the other pixels;
 *   - shapes: 4-connected components of the foreground (pixels nearer to the
 *     mean shape colour than to the mean border colour), specks under 12 px
 *     ignored; their number is the caption's count ("a" 1, "two" 2) and each
 *     one's class comes from the fill ratio of its bounding box: square 1.0,
 *     circle pi/4 = 0.785, triangle 0.5, cut at the midpoints 0.89 and 0.64.
 * The same rules are tools/demo/data.py's describe(), which reports that the
 * training data itself passes them (data.py --check) and train.py's final check.
 *
 * The model is small and trained for six minutes: its own final check drew
 * 58 of 72 captions right (81%, tools/demo/README.md), its typical miss a
 * square with pinched sides measured as a circle. So the test asks what that
 * rate supports, at least MIN_MATCH of the eight fixed pictures (an untrained
 * model draws none), and prints every miss; it is not a per-picture promise.
 *
 * So that the test cannot pass vacuously, every picture must also FAIL the
 * other seven captions (their colour, shape or count always differ), and the
 * measuring code is first checked on shapes drawn here with the training
 * data's geometry: every drawn scene is recognised, and changing any one
 * attribute of its caption is rejected. That part runs everywhere; the model
 * part skips (77) when models/demo is absent ($VF_DEMO_MODEL overrides where).
 * The pictures are kept in $VF_BUILD/demo_model/ for a look.
 */
#include "test.h"

#include "io/png.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define NCOLOURS 6
#define MAX_SHAPES 16
#define MIN_AREA 12            /* px at 64x64; smaller components are specks */
#define SQUARE_FILL 0.89
#define TRIANGLE_FILL 0.64

enum { CIRCLE, SQUARE, TRIANGLE };

static const char *const g_colour[NCOLOURS] = {"red", "green", "blue", "yellow", "white", "black"};
static const int g_rgb[NCOLOURS][3] = {
    {220, 30, 30}, {30, 170, 50}, {30, 60, 220}, {240, 220, 30}, {245, 245, 245}, {15, 15, 15},
};
static const char *const g_shape[3] = {"circle", "square", "triangle"};

/* What a caption says; bg -1 when it names no background. */
typedef struct caption {
    int count, colour, shape, bg;
} caption;

/* What a picture shows. */
typedef struct measured {
    int bg, fg;                   /* palette indices; fg -1 when nothing but background */
    int n;                        /* shapes found                                       */
    int cls[MAX_SHAPES];
    double fill[MAX_SHAPES];
} measured;

static void caption_text(const caption *c, char *buf, size_t cap)
{
    int two = c->count == 2;
    int n = snprintf(buf, cap, "%s %s %s%s", two ? "two" : "a", g_colour[c->colour], g_shape[c->shape],
                     two ? "s" : "");
    if (c->bg >= 0 && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, " on a %s background", g_colour[c->bg]);
}

static int nearest_colour(const uint8_t *p)
{
    int best = 0, bd = INT32_MAX;
    for (int i = 0; i < NCOLOURS; i++) {
        int d = 0;
        for (int j = 0; j < 3; j++)
            d += (p[j] - g_rgb[i][j]) * (p[j] - g_rgb[i][j]);
        if (d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

static int argmax(const int *v, int n)
{
    int k = 0;
    for (int i = 1; i < n; i++)
        k = v[i] > v[k] ? i : k;
    return k;
}

static double dist2(const uint8_t *p, const double *m)
{
    double d = 0;
    for (int j = 0; j < 3; j++)
        d += (p[j] - m[j]) * (p[j] - m[j]);
    return d;
}

/* Labels the components of mask (h*w) and records each large one in out.
 * stack and seen have room for h*w entries. */
static void components(const uint8_t *mask, int w, int h, int *stack, uint8_t *seen, measured *out)
{
    double min_area = MIN_AREA * (double)w * h / 4096.0;
    for (int start = 0; start < w * h; start++) {
        if (!mask[start] || seen[start])
            continue;
        int top = 0, area = 0, x0 = w, x1 = -1, y0 = h, y1 = -1;
        stack[top++] = start;
        seen[start] = 1;
        while (top > 0) {
            int i = stack[--top], x = i % w, y = i / w;
            area++;
            x0 = x < x0 ? x : x0;
            x1 = x > x1 ? x : x1;
            y0 = y < y0 ? y : y0;
            y1 = y > y1 ? y : y1;
            const int nb[4] = {y > 0 ? i - w : -1, y < h - 1 ? i + w : -1, x > 0 ? i - 1 : -1,
                               x < w - 1 ? i + 1 : -1};
            for (int k = 0; k < 4; k++) {
                if (nb[k] >= 0 && mask[nb[k]] && !seen[nb[k]]) {
                    seen[nb[k]] = 1;
                    stack[top++] = nb[k];
                }
            }
        }
        if (area < min_area || out->n == MAX_SHAPES)
            continue;
        double fill = area / ((double)(x1 - x0 + 1) * (y1 - y0 + 1));
        out->fill[out->n] = fill;
        out->cls[out->n++] = fill >= SQUARE_FILL ? SQUARE : fill >= TRIANGLE_FILL ? CIRCLE : TRIANGLE;
    }
}

/* rgb is (h,w,3). Returns 0 on success, -1 when out of memory. */
static int measure(const uint8_t *rgb, int w, int h, measured *out)
{
    size_t n = (size_t)w * h;
    uint8_t *lab = malloc(n), *mask = calloc(n, 1), *seen = calloc(n, 1);
    int *stack = malloc(n * sizeof *stack);
    int rc = lab && mask && seen && stack ? 0 : -1;
    memset(out, 0, sizeof *out);
    out->fg = -1;
    int count[NCOLOURS] = {0};
    double bgm[3] = {0}, fgm[3] = {0};
    int nb = 0, nf = 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        lab[i] = (uint8_t)nearest_colour(rgb + 3 * i);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int x = (int)(i % (size_t)w), y = (int)(i / (size_t)w);
        if (x == 0 || y == 0 || x == w - 1 || y == h - 1)
            count[lab[i]]++;
    }
    if (rc != 0)
        goto done;
    out->bg = argmax(count, NCOLOURS);
    memset(count, 0, sizeof count);
    for (size_t i = 0; i < n; i++)
        count[lab[i]] += lab[i] != out->bg;
    if (count[argmax(count, NCOLOURS)] == 0)
        goto done;
    out->fg = argmax(count, NCOLOURS);
    for (size_t i = 0; i < n; i++) {
        int x = (int)(i % (size_t)w), y = (int)(i / (size_t)w);
        int border = x == 0 || y == 0 || x == w - 1 || y == h - 1;
        for (int j = 0; j < 3; j++) {
            bgm[j] += border && lab[i] == out->bg ? rgb[3 * i + j] : 0;
            fgm[j] += lab[i] == out->fg ? rgb[3 * i + j] : 0;
        }
        nb += border && lab[i] == out->bg;
        nf += lab[i] == out->fg;
    }
    for (int j = 0; j < 3; j++) {
        bgm[j] /= nb;
        fgm[j] /= nf;
    }
    for (size_t i = 0; i < n; i++)
        mask[i] = dist2(rgb + 3 * i, fgm) < dist2(rgb + 3 * i, bgm);
    components(mask, w, h, stack, seen, out);
done:
    free(lab);
    free(mask);
    free(seen);
    free(stack);
    return rc;
}

static int matches(const measured *m, const caption *c)
{
    if (c->bg >= 0 && m->bg != c->bg)
        return 0;
    if (m->fg != c->colour || m->n != c->count)
        return 0;
    for (int i = 0; i < m->n; i++)
        if (m->cls[i] != c->shape)
            return 0;
    return 1;
}

static void print_measured(const char *what, const measured *m)
{
    printf("  %s: background %s, shape colour %s, %d shape(s):", what, g_colour[m->bg],
           m->fg >= 0 ? g_colour[m->fg] : "-", m->n);
    for (int i = 0; i < m->n; i++)
        printf(" %s (fill %.3f)", g_shape[m->cls[i]], m->fill[i]);
    printf("\n");
}

/* Every caption that differs from c in one measurable attribute must be
 * rejected by a picture that matches c. */
static void check_one_change_rejected(const measured *m, const caption *c)
{
    caption v = *c;
    v.colour = (c->colour + 1) % NCOLOURS;
    v.colour = v.colour == c->bg ? (v.colour + 1) % NCOLOURS : v.colour;
    CHECK(!matches(m, &v));
    v = *c;
    v.shape = (c->shape + 1) % 3;
    CHECK(!matches(m, &v));
    v.shape = (c->shape + 2) % 3;
    CHECK(!matches(m, &v));
    v = *c;
    v.count = 3 - c->count;
    CHECK(!matches(m, &v));
    if (c->bg >= 0) {
        v = *c;
        v.bg = (c->bg + 1) % NCOLOURS;
        v.bg = v.bg == c->colour ? (v.bg + 1) % NCOLOURS : v.bg;
        CHECK(!matches(m, &v));
    }
}

/* ---- shapes drawn as tools/demo/data.py draws them ------------------------------ */

/* Anti-aliased coverage in [0,1] of shape s (half side r, centre cx,cy) at
 * pixel centre (px,py): 0.5 minus the signed distance to the outline. */
static double coverage(int s, double cx, double cy, double r, double px, double py)
{
    double dx = px - cx, dy = py - cy, sd;
    if (s == CIRCLE)
        sd = sqrt(dx * dx + dy * dy) - r;
    else if (s == SQUARE)
        sd = fmax(fabs(dx), fabs(dy)) - r;
    else
        sd = fmax((2 * fabs(dx) - (dy + r)) / sqrt(5.0), dy - r);
    double a = 0.5 - sd;
    return a < 0 ? 0 : a > 1 ? 1 : a;
}

/* rgb (64,64,3): background bg, then each shape (cx,cy,r) in colour fg. */
static void draw(uint8_t *rgb, int bg, int fg, int shape, int nshapes, const double (*g)[3])
{
    for (int y = 0; y < 64; y++) {
        for (int x = 0; x < 64; x++) {
            double p[3];
            for (int j = 0; j < 3; j++)
                p[j] = g_rgb[bg][j];
            for (int k = 0; k < nshapes; k++) {
                double a = coverage(shape, g[k][0], g[k][1], g[k][2], x + 0.5, y + 0.5);
                for (int j = 0; j < 3; j++)
                    p[j] = p[j] * (1 - a) + g_rgb[fg][j] * a;
            }
            for (int j = 0; j < 3; j++)
                rgb[(y * 64 + x) * 3 + j] = (uint8_t)lround(p[j]);
        }
    }
}

static double uniform(uint64_t *s, double lo, double hi)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

/* Scenes with the training data's geometry (data.py sample_specs): one shape
 * of half side 11..21 anywhere 3 px from the border, or two of 8..13, one in
 * each half. Every one is recognised, and every one-attribute change of its
 * caption is rejected. */
static void test_measure_drawn_shapes(void)
{
    uint64_t seed = 42;
    uint8_t rgb[64 * 64 * 3];
    int ok = 0, total = 0;
    for (int t = 0; t < 240; t++) {
        caption c = {1 + t % 2, (t / 2) % NCOLOURS, (t / 12) % 3, 0};
        c.bg = (c.colour + 1 + (int)uniform(&seed, 0, NCOLOURS - 1)) % NCOLOURS;
        double g[2][3];
        if (c.count == 1) {
            double r = uniform(&seed, 11, 21);
            g[0][0] = uniform(&seed, r + 3, 64 - r - 3);
            g[0][1] = uniform(&seed, r + 3, 64 - r - 3);
            g[0][2] = r;
        } else {
            int vertical = uniform(&seed, 0, 1) < 0.5;
            for (int k = 0; k < 2; k++) {
                double r = uniform(&seed, 8, 13);
                double along = k == 0 ? uniform(&seed, r + 3, 32 - r - 1) : uniform(&seed, 32 + r + 1, 64 - r - 3);
                double across = uniform(&seed, r + 3, 64 - r - 3);
                g[k][0] = vertical ? across : along;
                g[k][1] = vertical ? along : across;
                g[k][2] = r;
            }
        }
        draw(rgb, c.bg, c.colour, c.shape, c.count, (const double(*)[3])g);
        measured m;
        CHECK(measure(rgb, 64, 64, &m) == 0);
        total++;
        if (matches(&m, &c)) {
            ok++;
        } else {
            char text[128];
            caption_text(&c, text, sizeof text);
            printf("drawn scene %d '%s' not recognised\n", t, text);
            print_measured("measured", &m);
        }
        check_one_change_rejected(&m, &c);
    }
    printf("drawn scenes recognised: %d of %d\n", ok, total);
    CHECK(ok == total);
    /* A plain picture has no shape and matches no caption. */
    draw(rgb, 2, 0, CIRCLE, 0, NULL);
    measured m;
    CHECK(measure(rgb, 64, 64, &m) == 0);
    caption c = {1, 0, CIRCLE, 2};
    CHECK(m.bg == 2 && m.fg == -1 && m.n == 0 && !matches(&m, &c));
}

/* ---- the trained model ---------------------------------------------------------- */

/* Colour, shape and count differ between any two of these, so each picture
 * must fail every other caption. The first is the README's command. */
static const caption g_prompts[] = {
    {1, 0, CIRCLE, 2},   /* a red circle on a blue background        */
    {1, 3, SQUARE, 5},   /* a yellow square on a black background    */
    {1, 4, TRIANGLE, 1}, /* a white triangle on a green background   */
    {2, 3, SQUARE, -1},  /* two yellow squares                       */
    {2, 2, CIRCLE, 4},   /* two blue circles on a white background   */
    {1, 1, TRIANGLE, -1},/* a green triangle                         */
    {1, 5, CIRCLE, 3},   /* a black circle on a yellow background    */
    {2, 0, TRIANGLE, 1}, /* two red triangles on a green background  */
};
#define NPROMPTS ((int)(sizeof g_prompts / sizeof g_prompts[0]))
#define MIN_MATCH 6   /* of NPROMPTS: see the top of the file */

static char g_model[4096];
static measured g_seen[NPROMPTS];
static int g_have[NPROMPTS];

static int find_model(void)
{
    const char *env = getenv("VF_DEMO_MODEL");
    if (env && env[0])
        snprintf(g_model, sizeof g_model, "%s", env);
    else
        snprintf(g_model, sizeof g_model, "%s/../../models/demo", vf_test_data());
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model_index.json", g_model);
    return access(probe, R_OK) == 0;
}

/* Where the pictures go: $VF_BUILD/demo_model/, else a temporary name. */
static void png_path(int i, char *buf, size_t cap)
{
    const char *b = getenv("VF_BUILD");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/demo_model", b ? b : "/tmp");
    mkdir(dir, 0777);
    snprintf(buf, cap, "%s/%d.png", dir, i + 1);
}

static void test_demo_prompts(void)
{
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(g_model, NULL, &m));
    if (!m)
        return;
    int ok = 0;
    for (int i = 0; i < NPROMPTS; i++) {
        char text[128], path[4200];
        caption_text(&g_prompts[i], text, sizeof text);
        vf_generate_params p;
        vf_generate_params_init(&p);
        p.prompt = text;
        p.seed = (uint64_t)i + 1;
        vf_image *img = NULL;
        vf_png_image png = {0};
        png_path(i, path, sizeof path);
        CHECK_OK(vf_generate(m, &p, &img));
        if (img)
            CHECK_OK(vf_image_save_png(img, path, text));
        vf_image_free(img);
        if (!img || vf_png_read(path, &png) != VF_OK)
            continue;
        CHECK(measure(png.rgb, png.w, png.h, &g_seen[i]) == 0);
        vf_png_image_free(&png);
        g_have[i] = 1;
        int good = matches(&g_seen[i], &g_prompts[i]);
        printf("%s '%s' (seed %d) -> %s\n", good ? "ok  " : "MISS", text, i + 1, path);
        print_measured("measured", &g_seen[i]);
        ok += good;
    }
    printf("%d of %d pictures match their captions\n", ok, NPROMPTS);
    CHECK_MSG(ok >= MIN_MATCH, "only %d of %d pictures match their captions (at least %d required)", ok, NPROMPTS,
              MIN_MATCH);
    vf_model_close(m);
}

/* Each picture against the other captions (and one-attribute changes of its own). */
static void test_demo_captions_swapped(void)
{
    int rejected = 0, pairs = 0;
    for (int i = 0; i < NPROMPTS; i++) {
        if (!g_have[i])
            continue;
        for (int j = 0; j < NPROMPTS; j++) {
            if (j == i)
                continue;
            pairs++;
            rejected += !matches(&g_seen[i], &g_prompts[j]);
            CHECK_MSG(!matches(&g_seen[i], &g_prompts[j]), "picture %d matches caption %d", i + 1, j + 1);
        }
        if (matches(&g_seen[i], &g_prompts[i]))
            check_one_change_rejected(&g_seen[i], &g_prompts[i]);
    }
    printf("swapped captions rejected: %d of %d\n", rejected, pairs);
    CHECK(pairs == NPROMPTS * (NPROMPTS - 1));
}

int main(void)
{
    static const vf_test_case always[] = {TEST(test_measure_drawn_shapes)};
    int rc = vf_test_run(always, 1);
    if (rc)
        return rc;
    if (!find_model()) {
        printf("SKIP: no demo model at %s (train one: tools/demo/README.md; or set VF_DEMO_MODEL)\n", g_model);
        return 77;
    }
    static const vf_test_case model[] = {TEST(test_demo_prompts), TEST(test_demo_captions_swapped)};
    return vf_test_run(model, 2);
}
