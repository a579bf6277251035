/* JSON helpers: Python's non-finite literals, strictness, typed getters. */
#include "io/json.h"
#include "test.h"

static void test_nonfinite_literals_become_null(void)
{
    const char *t = "{\"a\": -Infinity, \"b\": NaN, \"c\": Infinity, \"s\": \"NaN -Infinity\", \"d\": 2}";
    cJSON *j;
    CHECK_OK(vf_json_parse(t, strlen(t), "cfg.json", &j));
    if (!j)
        return;
    int bad = 0;
    CHECK(vf_json_num(j, "a", 7.0, &bad) == 7.0 && !bad); /* null: the default */
    CHECK(vf_json_num(j, "b", 8.0, &bad) == 8.0 && !bad);
    CHECK(vf_json_num(j, "c", 9.0, &bad) == 9.0 && !bad);
    CHECK(strcmp(vf_json_str(j, "s", "", &bad), "NaN -Infinity") == 0); /* strings untouched */
    CHECK(vf_json_num(j, "d", 0, &bad) == 2.0);
    cJSON_Delete(j);
}

static void test_strictness(void)
{
    cJSON *j;
    CHECK(vf_json_parse("[1,2]", 5, "x.json", &j) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "x.json") && strstr(vf_last_error(), "not an object"));
    CHECK(vf_json_parse("{\"a\": }", 7, "y.json", &j) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "y.json") != NULL);
    CHECK(vf_json_parse("{\"a\": \"\xff\"}", 10, "z.json", &j) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "UTF-8") != NULL);
    CHECK(vf_json_load("/nonexistent/config.json", &j) == VF_ERR_NOT_FOUND);
    CHECK(strstr(vf_last_error(), "/nonexistent/config.json") != NULL);
}

static void test_typed_getters_report_wrong_types(void)
{
    const char *t = "{\"n\": \"3\", \"b\": 1, \"s\": 4}";
    cJSON *j;
    CHECK_OK(vf_json_parse(t, strlen(t), "t.json", &j));
    if (!j)
        return;
    int bad = 0;
    vf_json_num(j, "n", 0, &bad);
    CHECK(bad == 1);
    bad = 0;
    vf_json_bool(j, "b", 0, &bad);
    CHECK(bad == 1);
    bad = 0;
    vf_json_str(j, "s", NULL, &bad);
    CHECK(bad == 1);
    bad = 0;
    CHECK(vf_json_num(j, "missing", 5, &bad) == 5 && !bad);
    cJSON_Delete(j);
}

static void test_utf8_validation(void)
{
    CHECK(vf_utf8_valid("caf\xc3\xa9", 5));
    CHECK(!vf_utf8_valid("\xc3", 1));                 /* truncated */
    CHECK(!vf_utf8_valid("\xc0\xaf", 2));             /* overlong */
    CHECK(!vf_utf8_valid("\xed\xa0\x80", 3));         /* surrogate */
    CHECK(!vf_utf8_valid("\xf4\x90\x80\x80", 4));     /* > U+10FFFF */
    CHECK(vf_utf8_valid("\xf0\x9f\x90\xb1", 4));      /* emoji */
}

TEST_MAIN(TEST(test_nonfinite_literals_become_null), TEST(test_strictness),
          TEST(test_typed_getters_report_wrong_types), TEST(test_utf8_validation))
