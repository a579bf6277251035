/* A minimal test harness: CHECK records a failure with file:line and goes on;
 * CHECK_CLOSE compares float arrays and prints max abs and relative error;
 * TEST_MAIN runs the listed functions and prints "N passed, N failed".
 * A test that needs ../shared calls vf_test_shared() and is skipped (77) without it.
 */
#ifndef VF_TEST_H
#define VF_TEST_H

#include "vramfit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int vf_test_checks;
static int vf_test_case_failed;

#define CHECK(cond)                                                              \
    do {                                                                         \
        vf_test_checks++;                                                        \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            vf_test_case_failed = 1;                                             \
        }                                                                        \
    } while (0)

#define CHECK_MSG(cond, ...)                                                     \
    do {                                                                         \
        vf_test_checks++;                                                        \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
            vf_test_case_failed = 1;                                             \
        }                                                                        \
    } while (0)

/* Status check that prints vf_last_error() on failure. */
#define CHECK_OK(expr)                                                           \
    do {                                                                         \
        vf_status st_ = (expr);                                                  \
        vf_test_checks++;                                                        \
        if (st_ != VF_OK) {                                                      \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #expr, \
                    vf_status_str(st_), vf_last_error());                        \
            vf_test_case_failed = 1;                                             \
        }                                                                        \
    } while (0)

/* Max relative error as max|a-b| / max|b| (the reference's scale), the measure
 * the parity tolerances are stated in. Prints both errors when over tol. */
static inline int vf_test_close(const char *what, const float *got, const float *want, size_t n,
                                double tol, const char *file, int line)
{
    double max_abs = 0, max_ref = 0;
    size_t worst = 0;
    int bad_value = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(got[i]) || isnan(d))
            bad_value = 1;
        if (d > max_abs) {
            max_abs = d;
            worst = i;
        }
        if (fabs(want[i]) > max_ref)
            max_ref = fabs(want[i]);
    }
    double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    vf_test_checks++;
    if (bad_value || rel > tol) {
        fprintf(stderr,
                "%s:%d: %s: max abs err %.3g, max rel err %.3g (tol %.1g) at %zu: got %.8g want %.8g%s\n",
                file, line, what, max_abs, rel, tol, worst, n ? got[worst] : 0.0,
                n ? want[worst] : 0.0, bad_value ? " (NaN)" : "");
        vf_test_case_failed = 1;
        return 0;
    }
    return 1;
}
#define CHECK_CLOSE(what, got, want, n, tol) vf_test_close(what, got, want, n, tol, __FILE__, __LINE__)

/* The shared reference tree, or NULL (the caller then skips). */
static inline const char *vf_test_shared(void)
{
    const char *s = getenv("VF_SHARED");
    static char probe[4096];
    if (!s)
        return NULL;
    snprintf(probe, sizeof probe, "%s/reference/README.md", s);
    FILE *f = fopen(probe, "r");
    if (!f)
        return NULL;
    fclose(f);
    return s;
}

static inline const char *vf_test_data(void)
{
    const char *s = getenv("VF_TESTDATA");
    return s ? s : "tests/data";
}

typedef struct {
    const char *name;
    void (*fn)(void);
} vf_test_case;

/* Return from a test case, skipping the whole file when no shared tree exists. */
#define SKIP_WITHOUT_SHARED(var)                                               \
    const char *var = vf_test_shared();                                        \
    if (!var) {                                                                \
        printf("SKIP: ../shared/reference not found (set VF_SHARED)\n");     \
        exit(77);                                                              \
    }

static inline int vf_test_run(const vf_test_case *cases, int n)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        vf_test_case_failed = 0;
        cases[i].fn();
        if (vf_test_case_failed) {
            failed++;
            fprintf(stderr, "FAIL %s\n", cases[i].name);
        } else {
            passed++;
            printf("ok   %s\n", cases[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#define TEST(fn) {#fn, fn}
#define TEST_MAIN(...)                                                           \
    int main(void)                                                               \
    {                                                                            \
        static const vf_test_case cases_[] = {__VA_ARGS__};                      \
        return vf_test_run(cases_, (int)(sizeof cases_ / sizeof cases_[0]));     \
    }

#endif
