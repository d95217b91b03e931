/*
 * test_auth.c: unit tests for the caller's identity (src/guard/auth.h): a key
 * found by its hash becomes an identity that holds its whole id, up to the
 * store's STORE_ID_MAX bytes, and an id chatd cannot hold is refused, never cut.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "guard/auth.h"

static store_key key_with_id(size_t len, char last)
{
    store_key k = { 0 };
    k.id = chat_xmalloc(len + 1);
    memset(k.id, 'k', len);
    if (len)
        k.id[len - 1] = last;
    k.id[len] = '\0';
    k.role = chat_xstrdup("user");
    k.rate_limit = chat_xstrdup("5/minute");
    return k;
}

static void test_longest_ids_are_kept_whole(void **state)
{
    (void)state;
    store_key a = key_with_id(STORE_ID_MAX, 'a'), b = key_with_id(STORE_ID_MAX, 'b');
    auth_identity ia, ib;
    assert_int_equal(auth_key_found(CHAT_OK, &a, &ia), AUTH_OK);
    assert_int_equal(auth_key_found(CHAT_OK, &b, &ib), AUTH_OK);
    assert_int_equal(strlen(ia.key_id), STORE_ID_MAX);
    assert_string_equal(ia.key_id, a.id);
    assert_string_equal(ib.key_id, b.id);
    assert_string_not_equal(ia.key_id, ib.key_id); /* they differ in their last byte only */
    assert_true(ia.authenticated && !ia.admin);
    assert_string_equal(ia.rate_limit, "5/minute"); /* taken from the key */
    assert_null(a.rate_limit);
    auth_identity_clear(&ia);
    auth_identity_clear(&ib);
    store_key_clear(&a);
    store_key_clear(&b);
}

static void test_an_id_chatd_cannot_hold_is_refused(void **state)
{
    (void)state;
    store_key k = key_with_id(STORE_ID_MAX + 1, 'z');
    auth_identity id;
    assert_int_equal(auth_key_found(CHAT_OK, &k, &id), AUTH_INVALID);
    assert_false(id.authenticated);
    assert_string_equal(id.key_id, "");
    auth_identity_clear(&id);
    store_key_clear(&k);
    assert_int_equal(auth_key_found(CHAT_ENOTFOUND, NULL, &id), AUTH_INVALID);
    assert_int_equal(auth_key_found(CHAT_EIO, NULL, &id), AUTH_UNAVAILABLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_longest_ids_are_kept_whole),
        cmocka_unit_test(test_an_id_chatd_cannot_hold_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
