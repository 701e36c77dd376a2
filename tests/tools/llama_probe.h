// Shared by the llama.cpp probes (llama_greedy.c, llama_lora_logits.c): load the base GGUF and make a 2-thread context.
#ifndef T2L_LLAMA_PROBE_H
#define T2L_LLAMA_PROBE_H
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>

/* llama.cpp 11434's AMX weight repacking (the "extra buffer types" on Xeons with AMX) segfaults on this Q4_1 GGUF
   with or without an adapter; T2L_LLAMA_EXTRA_BUFTS=1 turns it back on */
static struct llama_context *probe_open(const char *base, int n_ctx, struct llama_model **model) {
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    const char *eb = getenv("T2L_LLAMA_EXTRA_BUFTS");
    mp.use_extra_bufts = eb && eb[0] == '1';
    *model = llama_model_load_from_file(base, mp);
    if (!*model) { fprintf(stderr, "cannot load base\n"); return NULL; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx; cp.n_batch = n_ctx; cp.n_threads = 2; cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(*model, cp);
    if (!ctx) fprintf(stderr, "cannot make a context\n");
    return ctx;
}
#endif
