// Greedy generation in real llama.cpp, for tests/test_engines.py (make llamacpp builds it against libllama):
// for each prompt (one line of whitespace-separated token ids), N_NEW greedy tokens (argmax of the logits, stopping
// at an end-of-generation token), without an adapter and then with each given LoRA adapter at scale 1.0.
// usage: llama_greedy BASE.gguf PROMPTS_FILE N_NEW [adapter.gguf ...]
// output: one line per (adapter index, prompt index): "A P id id id ..." (A = 0 for the base)
#include "llama_probe.h"
#include <string.h>

static int greedy(struct llama_context *ctx, const struct llama_vocab *vocab, llama_token *ids, int n, int n_new, int n_vocab,
                  int a, int p) {
    llama_memory_clear(llama_get_memory(ctx), 1);
    llama_token tok[4096];
    memcpy(tok, ids, n * sizeof(llama_token));
    if (llama_decode(ctx, llama_batch_get_one(tok, n)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    printf("%d %d", a, p);
    for (int k = 0; k < n_new; k++) {
        const float *lg = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (int v = 1; v < n_vocab; v++) if (lg[v] > lg[best]) best = v;
        printf(" %d", best);
        if (llama_vocab_is_eog(vocab, best)) break;
        tok[n + k] = best;
        if (llama_decode(ctx, llama_batch_get_one(&tok[n + k], 1)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    }
    printf("\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: llama_greedy BASE.gguf PROMPTS_FILE N_NEW [adapter.gguf ...]\n"); return 2; }
    struct llama_model *model;
    struct llama_context *ctx = probe_open(argv[1], 2048, &model);
    if (!ctx) return 1;
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab), n_new = atoi(argv[3]);
    if (n_new < 1 || n_new > 1024) return 2;
    static llama_token prompts[64][1024];
    int lens[64], np = 0;
    FILE *fi = fopen(argv[2], "r");
    if (!fi) return 1;
    char line[65536];
    while (np < 64 && fgets(line, sizeof line, fi)) {
        int n = 0; char *s = line, *end;
        for (long v = strtol(s, &end, 10); end != s && n < 1024; v = strtol(s, &end, 10)) { prompts[np][n++] = (llama_token)v; s = end; }
        if (n) lens[np++] = n;
    }
    fclose(fi);
    for (int p = 0; p < np; p++) if (greedy(ctx, vocab, prompts[p], lens[p], n_new, n_vocab, 0, p)) return 1;
    for (int i = 4; i < argc; i++) {
        struct llama_adapter_lora *ad = llama_adapter_lora_init(model, argv[i]);
        if (!ad) { fprintf(stderr, "ADAPTER REFUSED: %s\n", argv[i]); return 1; }
        float scale = 1.0f;
        llama_set_adapters_lora(ctx, &ad, 1, &scale);
        for (int p = 0; p < np; p++) if (greedy(ctx, vocab, prompts[p], lens[p], n_new, n_vocab, i - 3, p)) return 1;
        llama_set_adapters_lora(ctx, NULL, 0, NULL);
    }
    return 0;
}
