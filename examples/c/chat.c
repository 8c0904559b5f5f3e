/*
 * chat.c: Fado from C. With a prompt, generates one reply and exits; without, a multi-turn
 * chat on standard input (one line per user turn; the conversation is re-sent each turn and
 * the session prefills only what is new).
 *
 *   cargo build --release
 *   cc examples/c/chat.c -Iinclude -Ltarget/release -lfado -o chat
 *   LD_LIBRARY_PATH=target/release ./chat MODEL [-n MAX_TOKENS] [-t TEMPERATURE] [--raw] [PROMPT]
 *
 * --raw sends PROMPT as plain text (as `fado run`); without it, PROMPT is one user message
 * through the model's chat template (as `fado run --chat`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fado.h"

/* The reply so far, grown as pieces arrive, so the next turn can include it. */
typedef struct {
    char *text;
    size_t len;
} reply;

static int32_t on_piece(const char *piece, void *user_data) {
    reply *r = user_data;
    size_t n = strlen(piece);
    char *grown = realloc(r->text, r->len + n + 1);
    if (grown == NULL)
        return 1; /* stop generating */
    memcpy(grown + r->len, piece, n + 1);
    r->text = grown;
    r->len += n;
    fputs(piece, stdout);
    fflush(stdout);
    return 0;
}

/* strdup is POSIX, not C11. */
static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c != NULL)
        memcpy(c, s, n);
    return c;
}

static int fail(const char *what) {
    fprintf(stderr, "chat: %s: %s\n", what, fado_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL;
    bool raw = false;
    fado_sampling sampling = fado_sampling_default();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            sampling.max_tokens = (uint32_t)atoi(argv[++i]);
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            sampling.temperature = (float)atof(argv[++i]);
        else if (strcmp(argv[i], "--raw") == 0)
            raw = true;
        else if (model_path == NULL)
            model_path = argv[i];
        else
            prompt = argv[i];
    }
    if (model_path == NULL) {
        fprintf(stderr, "usage: chat MODEL [-n MAX_TOKENS] [-t TEMPERATURE] [--raw] [PROMPT]\n");
        return 2;
    }

    fado_model *model = fado_model_load(model_path, NULL);
    if (model == NULL)
        return fail("loading the model");
    fprintf(stderr, "%s on %s: context %u, vocabulary %u\n", fado_model_name(model),
            fado_model_adapter(model), fado_model_context_length(model),
            fado_model_vocab_size(model));
    fado_session *session = fado_session_new(model, 0);
    if (session == NULL) {
        fado_model_free(model);
        return fail("creating a session");
    }

    int status = 0;
    if (prompt != NULL) {
        reply r = {NULL, 0};
        if (fado_generate(session, prompt, !raw, &sampling, on_piece, &r) != FADO_OK)
            status = fail("generating");
        printf("\n");
        free(r.text);
    } else {
        /* The conversation: user and assistant turns, strings owned here. */
        fado_message *msgs = NULL;
        size_t n = 0;
        char line[4096];
        while (fprintf(stderr, "> "), fgets(line, sizeof line, stdin) != NULL) {
            line[strcspn(line, "\n")] = '\0';
            if (line[0] == '\0')
                continue;
            fado_message *grown = realloc(msgs, (n + 2) * sizeof *msgs);
            if (grown == NULL)
                break;
            msgs = grown;
            msgs[n++] = (fado_message){"user", copy_string(line)};
            reply r = {NULL, 0};
            if (fado_chat(session, msgs, n, &sampling, on_piece, &r) != FADO_OK) {
                status = fail("generating");
                free(r.text);
                break;
            }
            printf("\n");
            msgs[n++] = (fado_message){"assistant", r.text ? r.text : copy_string("")};
        }
        for (size_t i = 0; i < n; i++)
            free((void *)msgs[i].content);
        free(msgs);
    }
    fado_session_free(session);
    fado_model_free(model);
    return status;
}
