# bash completion for t2l: generated from the live app by `python -m t2lcli.devtools completions` (make completions); do not edit.
# Install: source this file from ~/.bashrc, or copy it to ~/.local/share/bash-completion/completions/t2l
_t2l() {
    local cur prev cmd i opts
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    case "$cmd:$prev" in
        generate:--output|generate:-o) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        generate:--from-file|generate:-f) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        generate:--embedding-file) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        generate:--checkpoint|generate:-c) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        generate:--base-model|generate:-m) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        generate:--dtype) COMPREPLY=( $(compgen -W "fp32 bf16 fp16 float32 bfloat16 float16" -- "$cur") ); return 0 ;;
        generate:--scale) COMPREPLY=(); return 0 ;;
        generate:--scaling) COMPREPLY=( $(compgen -W "rslora lora folded" -- "$cur") ); return 0 ;;
        generate:--batch-size|generate:-b) COMPREPLY=(); return 0 ;;
        generate:--preview) COMPREPLY=(); return 0 ;;
        generate:--max-new-tokens) COMPREPLY=(); return 0 ;;
        generate:--profile|generate:-p) COMPREPLY=( $(compgen -W "cpu gpu-16gb gpu-24gb gpu-80gb" -- "$cur") ); return 0 ;;
        generate:--set) COMPREPLY=(); return 0 ;;
        inspect:--compat) COMPREPLY=( $(compgen -W "vllm sglang llamacpp ollama peft" -- "$cur") ); return 0 ;;
        inspect:--space) COMPREPLY=( $(compgen -W "delta_w embedding" -- "$cur") ); return 0 ;;
        inspect:--plot) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        inspect:--clusters) COMPREPLY=(); return 0 ;;
        inspect:--set) COMPREPLY=(); return 0 ;;
        eval:--tasks|eval:-t) COMPREPLY=(); return 0 ;;
        eval:--conditions) COMPREPLY=(); return 0 ;;
        eval:--checkpoint|eval:-c) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        eval:--description|eval:-d) COMPREPLY=(); return 0 ;;
        eval:--descriptions-file) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        eval:--sni-prompt) COMPREPLY=(); return 0 ;;
        eval:--max-descriptions) COMPREPLY=(); return 0 ;;
        eval:--adapter|eval:-a) COMPREPLY=(); return 0 ;;
        eval:--lora) COMPREPLY=(); return 0 ;;
        eval:--limit|eval:-n) COMPREPLY=(); return 0 ;;
        eval:--num-fewshot|eval:-k) COMPREPLY=(); return 0 ;;
        eval:--max-new-tokens) COMPREPLY=(); return 0 ;;
        eval:--batch-size|eval:-b) COMPREPLY=(); return 0 ;;
        eval:--gen-batch-size) COMPREPLY=(); return 0 ;;
        eval:--backend) COMPREPLY=(); return 0 ;;
        eval:--base-model|eval:-m) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        eval:--scaling) COMPREPLY=( $(compgen -W "rslora lora folded" -- "$cur") ); return 0 ;;
        eval:--data-dir) COMPREPLY=(); return 0 ;;
        eval:--seed) COMPREPLY=(); return 0 ;;
        eval:--output|eval:-o) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        eval:--profile|eval:-p) COMPREPLY=( $(compgen -W "cpu gpu-16gb gpu-24gb gpu-80gb" -- "$cur") ); return 0 ;;
        eval:--set) COMPREPLY=(); return 0 ;;
        bench:--checkpoint|bench:-c) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        bench:--shapes) COMPREPLY=( $(compgen -W "gemma-2-2b llama-3.1-8b mistral-7b smollm2-135m" -- "$cur") ); return 0 ;;
        bench:--variant) COMPREPLY=( $(compgen -W "L M S" -- "$cur") ); return 0 ;;
        bench:--runs) COMPREPLY=(); return 0 ;;
        bench:--cold-runs) COMPREPLY=(); return 0 ;;
        bench:--batch|bench:--batch-size|bench:-b) COMPREPLY=(); return 0 ;;
        bench:--baseline) COMPREPLY=( $(compgen -W "auto full sampled none" -- "$cur") ); return 0 ;;
        bench:--context) COMPREPLY=(); return 0 ;;
        bench:--profile|bench:-p) COMPREPLY=( $(compgen -W "cpu gpu-16gb gpu-24gb gpu-80gb" -- "$cur") ); return 0 ;;
        bench:--set) COMPREPLY=(); return 0 ;;
        bench:--output|bench:-o) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        merge:--output|merge:-o) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        merge:--export) COMPREPLY=( $(compgen -W "vllm sglang llamacpp ollama" -- "$cur") ); return 0 ;;
        merge:--method) COMPREPLY=( $(compgen -W "linear cat svd ties dare" -- "$cur") ); return 0 ;;
        merge:--weights|merge:-w) COMPREPLY=(); return 0 ;;
        merge:--rank|merge:-r) COMPREPLY=(); return 0 ;;
        merge:--density) COMPREPLY=(); return 0 ;;
        merge:--seed) COMPREPLY=(); return 0 ;;
        merge:--description|merge:-d) COMPREPLY=(); return 0 ;;
        merge:--checkpoint|merge:-c) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        merge:--base-model|merge:-m) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        merge:--dtype) COMPREPLY=( $(compgen -W "fp32 bf16 fp16 float32 bfloat16 float16" -- "$cur") ); return 0 ;;
        merge:--max-shard-size) COMPREPLY=(); return 0 ;;
        merge:--max-lora-rank) COMPREPLY=(); return 0 ;;
        merge:--name) COMPREPLY=(); return 0 ;;
        merge:--runtime-base) COMPREPLY=(); return 0 ;;
        merge:--profile|merge:-p) COMPREPLY=( $(compgen -W "cpu gpu-16gb gpu-24gb gpu-80gb" -- "$cur") ); return 0 ;;
        merge:--set) COMPREPLY=(); return 0 ;;
        convert:--output|convert:-o) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        convert:--dtype) COMPREPLY=( $(compgen -W "fp32 bf16 float32 bfloat16" -- "$cur") ); return 0 ;;
        train:--output|train:-o) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        train:--set) COMPREPLY=(); return 0 ;;
        train:--max-steps) COMPREPLY=(); return 0 ;;
        train:--time-budget) COMPREPLY=(); return 0 ;;
        train:--show-recipe) COMPREPLY=(); return 0 ;;
        train:--profile|train:-p) COMPREPLY=( $(compgen -W "cpu gpu-16gb gpu-24gb gpu-80gb" -- "$cur") ); return 0 ;;
        serve:--checkpoint|serve:-c) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        serve:--base-model|serve:-m) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        serve:--profile|serve:-p) COMPREPLY=( $(compgen -W "cpu gpu-16gb gpu-24gb gpu-80gb" -- "$cur") ); return 0 ;;
        serve:--host) COMPREPLY=(); return 0 ;;
        serve:--port) COMPREPLY=(); return 0 ;;
        serve:--api-key-file) COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;
        serve:--max-adapters) COMPREPLY=(); return 0 ;;
        serve:--max-adapter-mb) COMPREPLY=(); return 0 ;;
        serve:--max-batch) COMPREPLY=(); return 0 ;;
        serve:--max-tokens-cap) COMPREPLY=(); return 0 ;;
        serve:--queue-size) COMPREPLY=(); return 0 ;;
        serve:--set) COMPREPLY=(); return 0 ;;
        serve:--backend) COMPREPLY=(); return 0 ;;
        serve:--max-model-len) COMPREPLY=(); return 0 ;;
        serve:--max-lora-rank) COMPREPLY=(); return 0 ;;
        serve:--gpu-memory-utilization) COMPREPLY=(); return 0 ;;
    esac
    case "$cmd" in
        "") opts="generate inspect eval bench merge convert train serve --version --verbose -v --help -h" ;;
        generate) opts="--output -o --from-file -f --embedding-file --checkpoint -c --base-model -m --dtype --scale --scaling --batch-size -b --skip-bad --preview --preview-all --max-new-tokens --profile -p --set --force --json --trust-remote-code --help -h" ;;
        inspect) opts="--compat --similarity --space --plot --clusters --set --json --trust-remote-code --help -h" ;;
        eval) opts="--tasks -t --conditions --checkpoint -c --description -d --descriptions-file --sni-prompt --max-descriptions --adapter -a --lora --limit -n --num-fewshot -k --max-new-tokens --batch-size -b --gen-batch-size --backend --base-model -m --scaling --no-chat-template --data-dir --allow-code-exec --seed --log-samples --output -o --profile -p --set --force --json --trust-remote-code --help -h" ;;
        bench) opts="--checkpoint -c --shapes --variant --runs --cold-runs --batch --batch-size -b --baseline --plan --measure --context --clean --profile -p --set --json --output -o --help -h" ;;
        merge) opts="--output -o --into-base --export --method --weights -w --rank -r --density --seed --description -d --checkpoint -c --base-model -m --dtype --max-shard-size --max-lora-rank --name --runtime-base --profile -p --set --force --json --trust-remote-code --help -h" ;;
        convert) opts="--output -o --dtype --force --json --help -h" ;;
        train) opts="--output -o --set --resume --force --max-steps --time-budget --list-recipes --show-recipe --profile -p --json --help -h" ;;
        serve) opts="--checkpoint -c --base-model -m --profile -p --host --port --api-key-file --insecure-no-auth --max-adapters --max-adapter-mb --max-batch --max-tokens-cap --queue-size --set --trust-remote-code --backend --max-model-len --max-lora-rank --gpu-memory-utilization --help -h" ;;
        *) opts="" ;;
    esac
    if [[ -z "$cmd" || "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -f -- "$cur") )
    fi
    return 0
}
complete -o filenames -o bashdefault -F _t2l t2l
