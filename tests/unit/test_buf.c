/* Unit tests of core/buf.c: the bounded growable buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"

static void test_empty(void **state)
{
    (void)state;
    chat_buf b;
    chat_buf_init(&b, 16);
    assert_null(b.data);
    assert_string_equal(chat_buf_str(&b), "");
    char *s = chat_buf_steal(&b);
    assert_string_equal(s, "");
    free(s);
    chat_buf_free(&b);
    chat_buf_free(NULL);
}

static void test_append_to_max(void **state)
{
    (void)state;
    chat_buf b;
    chat_buf_init(&b, 10);
    assert_int_equal(chat_buf_appends(&b, "hello"), CHAT_OK);
    assert_int_equal(chat_buf_append(&b, "world", 5), CHAT_OK);
    assert_string_equal(chat_buf_str(&b), "helloworld");
    assert_true(b.cap <= 11);
    /* One byte past the maximum fails and changes nothing. */
    assert_int_equal(chat_buf_append(&b, "!", 1), CHAT_ETOOBIG);
    assert_int_equal(b.len, 10);
    assert_string_equal(chat_buf_str(&b), "helloworld");
    assert_int_equal(chat_buf_printf(&b, "%d", 1), CHAT_ETOOBIG);
    assert_int_equal(chat_buf_reserve(&b, SIZE_MAX), CHAT_ETOOBIG);
    chat_buf_clear(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(chat_buf_str(&b), "");
    assert_int_equal(chat_buf_printf(&b, "%s-%03d", "ab", 7), CHAT_OK);
    assert_string_equal(chat_buf_str(&b), "ab-007");
    assert_int_equal(chat_buf_set(&b, "xyz", 3), CHAT_OK);
    assert_string_equal(chat_buf_str(&b), "xyz");
    assert_int_equal(chat_buf_set(&b, "0123456789A", 11), CHAT_ETOOBIG);
    assert_string_equal(chat_buf_str(&b), "xyz");
    chat_buf_free(&b);
}

static void test_binary_and_steal(void **state)
{
    (void)state;
    chat_buf b;
    chat_buf_init(&b, 1 << 20);
    assert_int_equal(chat_buf_append(&b, "a\0b", 3), CHAT_OK);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "a\0b", 4);
    char *s = chat_buf_steal(&b);
    assert_memory_equal(s, "a\0b", 4);
    free(s);
    assert_null(b.data);
    assert_int_equal(b.max, 1 << 20);
    chat_buf_free(&b);
}

/* Many small appends grow geometrically: few reallocations, linear work. */
static void test_many_appends(void **state)
{
    (void)state;
    chat_buf b;
    chat_buf_init(&b, 1 << 24);
    size_t grows = 0, cap = 0;
    for (int i = 0; i < 1000000; i++) {
        assert_int_equal(chat_buf_append(&b, "xy", 2), CHAT_OK);
        if (b.cap != cap) {
            grows++;
            cap = b.cap;
        }
    }
    assert_int_equal(b.len, 2000000);
    assert_true(grows < 40);
    chat_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_append_to_max),
        cmocka_unit_test(test_binary_and_steal),
        cmocka_unit_test(test_many_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
