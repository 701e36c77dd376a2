// Minimal llama.cpp probe used by tests/test_merge.py::test_llamacpp_runtime_applies_the_gguf_export (slow, optional):
// last-token logits of a token list, without and then with each given LoRA adapter (scale 1.0), as raw float32 files.
// usage: llama_lora_logits BASE.gguf IDS_FILE OUT_PREFIX [adapter.gguf ...]   (IDS_FILE: whitespace-separated ids)
// build against a llama.cpp checkout (e.g. the one vendored in the llama-cpp-python sdist), after building its `llama` target:
//   gcc -O2 -o llama_lora_logits llama_lora_logits.c -I$LLAMA/include -I$LLAMA/ggml/include -L$BUILD/bin \
//       -lllama -lggml -lggml-base -Wl,-rpath,$BUILD/bin
#include "llama_probe.h"

static int eval(struct llama_context *ctx, llama_token *ids, int n, const char *out, int n_vocab) {
    llama_memory_clear(llama_get_memory(ctx), 1);
    if (llama_decode(ctx, llama_batch_get_one(ids, n)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    float *lg = llama_get_logits_ith(ctx, -1);
    FILE *f = fopen(out, "wb"); fwrite(lg, sizeof(float), n_vocab, f); fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    struct llama_model *model;
    struct llama_context *ctx = probe_open(argv[1], 256, &model);
    if (!ctx) return 1;
    llama_token ids[256]; int n = 0;
    FILE *fi = fopen(argv[2], "r"); while (n < 256 && fscanf(fi, "%d", &ids[n]) == 1) n++; fclose(fi);
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    char path[4096];
    snprintf(path, sizeof path, "%s.base.f32", argv[3]);
    if (eval(ctx, ids, n, path, n_vocab)) return 1;
    for (int i = 4; i < argc; i++) {
        struct llama_adapter_lora *ad = llama_adapter_lora_init(model, argv[i]);
        if (!ad) { fprintf(stderr, "ADAPTER REFUSED: %s\n", argv[i]); return 1; }
        float scale = 1.0f;
        llama_set_adapters_lora(ctx, &ad, 1, &scale);
        snprintf(path, sizeof path, "%s.%d.f32", argv[3], i - 3);
        if (eval(ctx, ids, n, path, n_vocab)) return 1;
        llama_set_adapters_lora(ctx, NULL, 0, NULL);
        printf("loaded %s\n", argv[i]);
    }
    printf("n_vocab %d n_tokens %d\n", n_vocab, n);
    return 0;
}
