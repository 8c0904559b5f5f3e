/*
 * Hostile calls through the C ABI: NULLs, bad UTF-8, bad options, a callback that stops after
 * one piece, a prompt over the context. Each must return an error code (or NULL) with a
 * message, never crash. Run by tests/c_api.rs: hostile MODEL; exits 0 when every check holds.
 */
#include <stdio.h>
#include <string.h>

#include "fado.h"

static int failures = 0;

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "hostile.c:%d: check failed: %s (last error: %s)\n", __LINE__,      \
                    #cond, fado_last_error());                                                   \
            failures++;                                                                          \
        }                                                                                        \
    } while (0)

/* The last error mentions `word`. */
static int says(const char *word) { return strstr(fado_last_error(), word) != NULL; }

static int pieces = 0;
static int32_t stop_after_one(const char *piece, void *user_data) {
    (void)piece;
    (void)user_data;
    pieces++;
    return 1;
}
static int32_t keep_going(const char *piece, void *user_data) {
    (void)piece;
    (void)user_data;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: hostile MODEL\n");
        return 2;
    }
    /* Loading. */
    CHECK(fado_model_load(NULL, NULL) == NULL && says("path is NULL"));
    CHECK(fado_model_load("/no/such/model.gguf", NULL) == NULL && says("/no/such/model.gguf"));
    CHECK(fado_model_load("\xff\xfe", NULL) == NULL && says("UTF-8"));
    fado_model_options bad = fado_model_options_default();
    bad.kv_type = 7;
    CHECK(fado_model_load(argv[1], &bad) == NULL && says("kv_type"));
    bad = fado_model_options_default();
    bad.quant = "q9_9";
    CHECK(fado_model_load(argv[1], &bad) == NULL && says("q9_9"));

    /* NULL objects. */
    CHECK(fado_session_new(NULL, 0) == NULL && says("model is NULL"));
    CHECK(fado_model_name(NULL) == NULL);
    CHECK(fado_model_context_length(NULL) == 0);
    CHECK(fado_generate(NULL, "hi", false, NULL, keep_going, NULL) == FADO_ERR_NULL_ARGUMENT &&
          says("session is NULL"));
    CHECK(fado_session_reset(NULL) == FADO_ERR_NULL_ARGUMENT);
    fado_model_free(NULL);
    fado_session_free(NULL);

    fado_model *model = fado_model_load(argv[1], NULL);
    CHECK(model != NULL && fado_last_error()[0] == '\0');
    if (model == NULL)
        return 1;
    fado_session *session = fado_session_new(model, 64);
    CHECK(session != NULL);
    if (session == NULL)
        return 1;

    /* Generation arguments. */
    CHECK(fado_generate(session, NULL, false, NULL, keep_going, NULL) == FADO_ERR_NULL_ARGUMENT &&
          says("prompt is NULL"));
    CHECK(fado_generate(session, "hi", false, NULL, NULL, NULL) == FADO_ERR_NULL_ARGUMENT &&
          says("callback is NULL"));
    CHECK(fado_generate(session, "caf\xc3", false, NULL, keep_going, NULL) ==
              FADO_ERR_INVALID_ARGUMENT &&
          says("UTF-8"));
    fado_sampling s = fado_sampling_default();
    s.top_p = 0.0f;
    CHECK(fado_generate(session, "hi", false, &s, keep_going, NULL) == FADO_ERR_INVALID_ARGUMENT &&
          says("top_p"));
    s = fado_sampling_default();
    s.top_k = -3;
    CHECK(fado_generate(session, "hi", false, &s, keep_going, NULL) == FADO_ERR_INVALID_ARGUMENT &&
          says("top_k"));

    /* A prompt over the session's 64 tokens. */
    char long_prompt[2048];
    memset(long_prompt, 0, sizeof long_prompt);
    for (int i = 0; i < 150; i++)
        strcat(long_prompt, "ab cd ");
    CHECK(fado_generate(session, long_prompt, false, NULL, keep_going, NULL) ==
              FADO_ERR_INVALID_ARGUMENT &&
          says("context"));

    /* A callback that stops after one piece: success, one call. */
    s = fado_sampling_default();
    s.temperature = 0.0f;
    s.max_tokens = 20;
    pieces = 0;
    CHECK(fado_generate(session, "hello", false, &s, stop_after_one, NULL) == FADO_OK);
    CHECK(pieces == 1);
    CHECK(fado_last_error()[0] == '\0');

    /* Chat arguments. */
    CHECK(fado_chat(session, NULL, 1, &s, keep_going, NULL) == FADO_ERR_NULL_ARGUMENT);
    fado_message m[2] = {{"user", "hi"}, {"wizard", "hi"}};
    CHECK(fado_chat(session, m, 0, &s, keep_going, NULL) == FADO_ERR_INVALID_ARGUMENT);
    CHECK(fado_chat(session, m, 2, &s, keep_going, NULL) == FADO_ERR_INVALID_ARGUMENT &&
          says("wizard"));
    m[1].role = "assistant";
    m[1].content = NULL;
    CHECK(fado_chat(session, m, 2, &s, keep_going, NULL) == FADO_ERR_NULL_ARGUMENT &&
          says("messages[1].content"));

    /* Tokens. */
    uint32_t ids[64];
    int32_t n = fado_tokenize(model, "hello world", false, NULL, 0);
    CHECK(n > 0);
    CHECK(fado_tokenize(model, "hello world", false, ids, 64) == n);
    CHECK(fado_tokenize(model, NULL, false, ids, 64) == FADO_ERR_NULL_ARGUMENT);
    CHECK(fado_tokenize(NULL, "x", false, ids, 64) == FADO_ERR_NULL_ARGUMENT);
    CHECK(fado_tokenize(model, "hello world", false, NULL, 64) == FADO_ERR_NULL_ARGUMENT);
    char text[256];
    int32_t len = fado_detokenize(model, ids, n, text, 1);
    CHECK(len == (int32_t)strlen("hello world"));
    CHECK(fado_detokenize(model, ids, n, text, sizeof text) == len && strcmp(text, "hello world") == 0);
    uint32_t bad_id = 4000000000u;
    CHECK(fado_detokenize(model, &bad_id, 1, text, sizeof text) == FADO_ERR_INVALID_ARGUMENT &&
          says("vocabulary"));
    CHECK(fado_detokenize(model, NULL, 3, text, sizeof text) == FADO_ERR_NULL_ARGUMENT);
    CHECK(fado_detokenize(model, ids, -1, text, sizeof text) == FADO_ERR_INVALID_ARGUMENT);

    fado_session_free(session);
    fado_model_free(model);
    if (failures == 0)
        printf("hostile: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
