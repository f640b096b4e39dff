"""The ``sumrl rl`` config (kept free of torch imports so that ``sumrl --help`` stays fast).

Every option is documented here (help text) and in docs/rl.md. Recipes under ``recipes/rl_*.yaml``
set these same keys; unknown keys are an error.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from sumrl.config import BF16_HELP, AutoBool, opt
from sumrl.data.options import DataOptions
from sumrl.errors import ConfigError
from sumrl.training.checkpoint import RUN_OPTIONS_RESUME_MUTABLE, RunOptions

ALGOS = ["ppo", "grpo", "rloo", "ppo++", "aggrevated", "d2lols"]
CRITIC_ALGOS = ("ppo", "ppo++", "aggrevated", "d2lols")  # learn a value function, GAE advantages
GROUP_ALGOS = ("grpo", "rloo")  # group-relative baselines, no critic
GUIDED_ALGOS = ("ppo++", "aggrevated", "d2lols")

# Options that may change between an interrupted run and its --resume without changing what the
# steps already run would have computed. ``steps`` may change (to extend a run) only with a constant
# learning rate (min_lr_ratio 1): a decaying schedule depends on the run length.
RESUME_MUTABLE = RUN_OPTIONS_RESUME_MUTABLE | {
    "out", "sample_every", "n_samples", "steps", "max_kl", "eval_every", "val_split", "val_examples", "val_batch_size",
}

# Positions per pass under gradient above which activations are recomputed (--checkpoint-tokens): LoRA fp32
# activations grow ~2.3 GB per 1k positions (docs/benchmarks.md), so a pass below it stays under ~5 GB.
CHECKPOINT_TOKENS = 2048


@dataclass
class RLConfig(RunOptions, DataOptions):
    # DataOptions.split defaults to "test" (evaluation); RL trains on the train split.
    split: str = opt("train", "split whose documents are the RL prompts")
    algo: str = opt("ppo", "algorithm: ppo (critic, per-token rewards, GAE), grpo / rloo (group baselines, no "
                           "critic), ppo++ / aggrevated / d2lols (guided by --guide, Chang et al. 2023)",
                    choices=ALGOS)
    policy: str = opt("default", "model to fine-tune ('default', a packaged name, a model or SFT adapter folder, "
                                 ".gguf, hub id); an SFT adapter is merged into the weights first so that the "
                                 "reference policy is the SFT model (the RL adapter is then saved stacked on it)")
    # Structured recipes give a list of {name, weight, ...} mappings; the flag takes a spec string.
    reward: typing.Any = opt("rouge,length", "rewards: comma-separated name[:weight] (e.g. rouge,length:0.5,"
                                             "rm:DIR) or, in a recipe, a list of {name, weight, options...}",
                             cli=False)
    out: str = opt("runs/rl", "output folder: the trained adapter/model (loadable with --model OUT), rl_config.json, "
                              "metrics.jsonl/csv, samples.jsonl, tensorboard/, checkpoints/")
    steps: int = opt(20, "outer steps (rollout + update) to run")
    guide: typing.Optional[str] = opt(None, "guide model for ppo++ / aggrevated / d2lols: any model sumrl can load "
                                            "(e.g. an SFT folder or 'guide' = Qwen2.5-0.5B); text is exchanged, so "
                                            "its tokenizer may differ from the policy's")
    # --- model
    lora: bool = opt(True, "train a LoRA adapter (reference = adapters off, no model copy); --no-lora trains all "
                           "weights and keeps a frozen copy as the reference")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (scale = alpha / r)")
    lora_target_modules: list[str] = opt(default_factory=list, help="module names LoRA is applied to "
                                         "(default: all attention and MLP projections)")
    value_model: str = opt("head", "critic: head = a linear value head on the policy's final hidden states (shared "
                                   "trunk, one forward pass; a memory choice, N+ uses a separate network); adapter = "
                                   "its own LoRA adapter on the same base plus a head (a second trunk pass)",
                           choices=["head", "adapter"])
    value_init_from_rm: bool = opt(True, "initialise the value head from the reward model's score head when an rm "
                                         "reward is used and the hidden sizes match (N+ detail)")
    dropout_off: bool = opt(True, "turn dropout off in the policy (N+ detail: otherwise log-probs of identical weights "
                                  "differ between rollout and update)")
    # --- rollout
    max_prompt_tokens: int = opt(512, "prompt budget in policy tokens; longer documents are truncated exactly like "
                                      "`sumrl eval --strategy truncate --max-input-tokens N`")
    max_new_tokens: int = opt(64, "summary tokens generated at most, counting the end token")
    summary_cap_quantile: typing.Optional[float] = opt(None, "derive --max-new-tokens from the data: this quantile "
                                                             "of the training references' lengths in policy tokens, "
                                                             "plus the end token (the last-mile recipe: 0.95, so that "
                                                             "reference trajectories are whole and the length penalty "
                                                             "beyond the reference can fire); reported at start")
    temperature: float = opt(0.7, "sampling temperature for rollouts")
    top_p: float = opt(1.0, "nucleus sampling for rollouts (keep 1.0: log-probs are of the full distribution)")
    logprob_temperature: bool = opt(True, "divide logits by the sampling temperature when computing log-probs, so "
                                          "they are log-probs of the distribution that was sampled (N+ detail)")
    instruction: typing.Optional[str] = opt(None, "instruction placed before the document (must match eval)")
    batch_size: int = opt(4, "prompts (documents) per outer step")
    samples_per_prompt: typing.Optional[int] = opt(None, "completions sampled per prompt (default: 4 for grpo/rloo, "
                                                         "1 otherwise); grpo/rloo need at least 2")
    reference_trajectory_ratio: float = opt(0.0, "fraction of outer batches whose trajectories are the reference "
                                                 "summaries instead of samples (last-mile recipe: 0.5); for grpo/rloo "
                                                 "the reference replaces one sample per group")
    no_eos_penalty: float = opt(-1.0, "added to the score of a response cut at --max-new-tokens without an end token "
                                      "(N+ detail; 0 = off; the last-mile recipe has none)")
    no_eos_mode: str = opt("add", "how --no-eos-penalty applies: add = added to the summary's reward (sumrl's default "
                                  "with metric rewards); replace = the summary's whole reward becomes the penalty "
                                  "(N+: score := -1)", choices=["add", "replace"])
    # --- rewards and advantages
    kl_coef: float = opt(0.05, "KL coefficient beta (0 = no KL term: LoRA as the implicit prior)")
    kl_estimator: str = opt("k1", "per-token KL estimator (Schulman 2020): k1 = log-ratio, k2, k3",
                            choices=["k1", "k2", "k3"])
    kl_placement: str = opt("auto", "where the KL term goes: reward = per-token penalty in the reward (PPO, RLOO), "
                                    "loss = a k3 term in the loss (GRPO); auto = loss for grpo, reward otherwise",
                            choices=["auto", "reward", "loss"])
    max_kl: float = opt(100.0, "stop with an error when objective/kl (nats per sequence) exceeds this (0 = never)")
    gamma: float = opt(1.0, "discount factor")
    lam: float = opt(0.95, "GAE lambda")
    value_target: str = opt("gae", "critic target: gae = GAE returns (A + V); mc = discounted reward-to-go "
                                   "(last-mile recipe)", choices=["gae", "mc"])
    whiten_rewards: bool = opt(True, "critic algorithms: rescale per-token rewards to unit variance over the batch, "
                                     "keeping their mean (N+ masked_whiten(shift_mean=False)), so that raw returns in "
                                     "the hundreds cannot swamp the policy update through the shared trunk")
    whiten_advantages: bool = opt(True, "normalise advantages to zero mean and unit variance over the batch (N+ detail)")
    scale_by_std: bool = opt(True, "grpo: divide group-relative advantages by the group's std (Dr. GRPO: "
                                   "--no-scale-by-std with --loss-agg constant)")
    group_credit: str = opt("position", "grpo/rloo with per-token rewards: position = sumrl's per-token variant (each "
                                        "position compared with its group at the same position); sequence = the "
                                        "published form (all rewards folded into one number per completion)",
                            choices=["position", "sequence"])
    # --- update
    ppo_epochs: int = opt(1, "passes over each rollout batch (N+ uses 4; the last-mile recipe 1)")
    mini_batch_size: typing.Optional[int] = opt(None, "sequences per optimizer step within an epoch (default: the "
                                                      "whole rollout batch = one update per epoch)")
    micro_batch_size: int = opt(4, "sequences per forward/backward pass; gradients are accumulated with the exact "
                                   "token-mean normaliser of the mini-batch")
    micro_batch_tokens: typing.Optional[int] = opt(8192, "at most this many positions per forward/backward pass (a "
                                                         "shared prompt counted once per group, padding included); "
                                                         "a group of samples is never split for it, so a group "
                                                         "larger than the budget runs alone (None = rows only)")
    clip_eps: float = opt(0.2, "PPO ratio clip range")
    value_clip: float = opt(0.2, "value clipping range around the rollout values (N+ detail; 0 = off)")
    vf_coef: float = opt(0.1, "value-loss coefficient (matters with the shared trunk)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient (0 = off; >0 computes response logits in full)")
    loss_agg: str = opt("token_mean", "loss aggregation: token_mean, seq_mean_token_sum, seq_mean_token_mean, "
                                      "constant (sum over tokens / (sequences x --loss-norm-constant): Dr. GRPO)",
                        choices=["token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "constant"])
    loss_norm_constant: typing.Optional[int] = opt(None, "--loss-agg constant: tokens per sequence in the constant "
                                                         "normaliser (default: --max-new-tokens, as in Dr. GRPO)")
    lr: float = opt(5e-5, "learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_eps: float = opt(1e-5, "AdamW epsilon (N+ detail: 1e-5)")
    warmup_steps: int = opt(0, "linear warm-up in optimizer steps")
    min_lr_ratio: float = opt(1.0, "cosine decay to this fraction of --lr over the run (1.0 = constant)")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm (0 = off)")
    # --- guided RL (Chang et al. 2023)
    guide_rollin_prob: typing.Optional[float] = opt(None, "ppo++ / d2lols: beta, the probability that an episode "
                                                          "starts from a prefix of the guide's own sample (default "
                                                          "0.8, TRIL's TL;DR setting)")
    guide_rollout_prob: typing.Optional[float] = opt(None, "aggrevated / d2lols: beta, the probability that the guide "
                                                           "completes the policy's sample from a uniform step; other "
                                                           "episodes are written by the guide alone and train the "
                                                           "critic only, as in TRIL (default: 1.0 for aggrevated, "
                                                           "0.8 for d2lols, TRIL's TL;DR settings)")
    d2lols_tau: typing.Optional[int] = opt(None, "d2lols: outer steps of AggreVaTeD (with a separate guide critic) "
                                                 "before switching the whole batch to PPO++ (TRIL: tau; default: "
                                                 "a fifth of --steps, TRIL's TL;DR ratio of 200 of 1000 iterations)")
    target_coef: float = opt(0.0, "TRIL's target regularisation: add target_coef x the negative log-likelihood of the "
                                  "batch's reference summaries to the loss (TRIL: 0.1; 0 = off)")
    guide_temperature: float = opt(0.7, "guide sampling temperature (0 = greedy)")
    # --- speed / memory
    bf16: AutoBool = opt("auto", BF16_HELP)
    share_prompt: bool = opt(True, "compute each prompt once per group of samples in generation and in every "
                                   "forward pass (its keys/values shared by the group's completions, with "
                                   "gradient in training); exact, tested equal to --no-share-prompt")
    merge_lora_for_generation: bool = opt(True, "sample with the LoRA weights merged into the base (restored "
                                                "exactly afterwards); only with --value-model head")
    gradient_checkpointing: AutoBool = opt("auto", "recompute activations in backward (less memory, slower); auto = "
                                                   "per forward pass, on when it runs more than "
                                                   "--checkpoint-tokens positions under gradient")
    checkpoint_tokens: int = opt(CHECKPOINT_TOKENS, "--gradient-checkpointing auto: the positions per pass above "
                                                    "which activations are recomputed (docs/benchmarks.md: memory "
                                                    "and time per 1k tokens with and without)")
    prefill_chunk: int = opt(1024, "no-grad passes and generation run long prompts this many tokens at a time "
                                   "(bounded activations; exact)")
    load_in_4bit: bool = opt(False, "QLoRA: load the policy's base frozen in 4-bit NF4 (bitsandbytes; pip install "
                                    "'sumrl[quant]'), LoRA adapters and value heads in full precision; the reference "
                                    "is the adapters-off 4-bit base; needs --lora")
    logprob_chunk_size: int = opt(512, "positions per chunk of the log-prob computation (never full-vocabulary "
                                       "logits of the prompt)")
    reference_kl: bool = opt(True, "compute reference log-probs every step, for objective/kl, even when no KL term "
                                   "uses them (--no-reference-kl saves one forward pass when kl_coef is 0)")
    # --- held-out evaluation during training
    eval_every: int = opt(10, "every N steps (and before the first and after the last step) summarise --val-examples "
                              "fixed held-out documents greedily and log their reward as eval/reward, "
                              "eval/rewards/<name>, eval/mean_length, eval/no_eos_rate (0 = never): the training "
                              "reward of a step mostly reflects which prompts it drew, these prompts never change")
    val_split: str = opt("val", "split whose documents are the held-out evaluation prompts")
    val_examples: int = opt(8, "held-out documents summarised at each evaluation")
    val_batch_size: int = opt(8, "generation batch size of the held-out evaluation")
    # --- logging, checkpoints
    sample_every: int = opt(10, "log a sample table (document excerpt, summary, reward components) every N steps")
    n_samples: int = opt(2, "rows per sample table")
    save_every: int = opt(10, "write a checkpoint every N steps (and at the end)")  # RunOptions' field, RL's default

    # ------------------------------------------------------------------ derived settings
    @property
    def group_size(self) -> int:
        if self.samples_per_prompt is not None:
            return self.samples_per_prompt
        return 4 if self.algo in GROUP_ALGOS else 1

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_placement == "loss" or (self.kl_placement == "auto" and self.algo == "grpo")

    @property
    def rollin_prob(self) -> float:
        if self.algo not in ("ppo++", "d2lols"):
            return 0.0
        return 0.8 if self.guide_rollin_prob is None else self.guide_rollin_prob

    @property
    def rollout_prob(self) -> float:
        if self.algo not in ("aggrevated", "d2lols"):
            return 0.0
        if self.guide_rollout_prob is None:
            return 1.0 if self.algo == "aggrevated" else 0.8
        return self.guide_rollout_prob

    @property
    def tau(self) -> int:
        return self.steps // 5 if self.d2lols_tau is None else self.d2lols_tau

    @property
    def uses_critic(self) -> bool:
        return self.algo in CRITIC_ALGOS

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(not self.load_in_4bit or self.lora, "--load-in-4bit needs --lora (a 4-bit base is frozen)")
        need(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(self.micro_batch_size >= 1, f"--micro-batch-size must be at least 1, got {self.micro_batch_size}")
        need(self.micro_batch_tokens is None or self.micro_batch_tokens >= 1,
             f"--micro-batch-tokens must be at least 1, got {self.micro_batch_tokens}")
        need(self.checkpoint_tokens >= 1, f"--checkpoint-tokens must be at least 1, got {self.checkpoint_tokens}")
        need(self.prefill_chunk >= 16, f"--prefill-chunk must be at least 16, got {self.prefill_chunk}")
        need(self.mini_batch_size is None or self.mini_batch_size >= 1, "--mini-batch-size must be at least 1")
        need(self.ppo_epochs >= 1, f"--ppo-epochs must be at least 1, got {self.ppo_epochs}")
        need(self.max_new_tokens >= 2, f"--max-new-tokens must be at least 2, got {self.max_new_tokens}")
        need(self.max_prompt_tokens >= 16, f"--max-prompt-tokens must be at least 16, got {self.max_prompt_tokens}")
        need(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        need(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        need(self.guide_temperature >= 0, "--guide-temperature must be >= 0")
        need(0.0 <= self.reference_trajectory_ratio <= 1.0,
             f"--reference-trajectory-ratio must be in [0, 1], got {self.reference_trajectory_ratio}")
        for name in ("guide_rollin_prob", "guide_rollout_prob"):
            v = getattr(self, name)
            need(v is None or 0.0 <= v <= 1.0, f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
        need(self.kl_coef >= 0, f"--kl-coef must be >= 0, got {self.kl_coef}")
        # k2 / k3 as a per-token *reward* are not the reverse KL's gradient (Schulman 2020; Tang & Munos 2025):
        # only k1 in the reward gives the KL-regularised objective's policy gradient.
        need(not (self.kl_coef > 0 and not self.kl_in_loss and self.kl_estimator != "k1"),
             f"--kl-estimator {self.kl_estimator} in the reward is not a KL penalty (its gradient is not the reverse "
             f"KL's); use k1 in the reward, or --kl-placement loss")
        need(self.summary_cap_quantile is None or 0.5 <= self.summary_cap_quantile <= 1.0,
             f"--summary-cap-quantile must be in [0.5, 1], got {self.summary_cap_quantile}")
        need(self.target_coef >= 0, f"--target-coef must be >= 0, got {self.target_coef}")
        need(self.d2lols_tau is None or self.d2lols_tau >= 0, "--d2lols-tau must be >= 0")
        need(self.loss_norm_constant is None or self.loss_norm_constant >= 1, "--loss-norm-constant must be >= 1")
        need(self.max_kl >= 0, f"--max-kl must be >= 0 (0 = never stop), got {self.max_kl}")
        need(0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0, "--gamma and --lam must be in [0, 1]")
        need(self.clip_eps > 0 and self.value_clip >= 0, "--clip-eps must be > 0 and --value-clip >= 0")
        need(self.lr > 0, f"--lr must be positive, got {self.lr}")
        self.check_run_options()
        need(self.sample_every >= 0, f"--sample-every must be at least 0, got {self.sample_every}")
        need(self.eval_every >= 0 and self.val_examples >= 1 and self.val_batch_size >= 1,
             "--eval-every must be >= 0, --val-examples and --val-batch-size at least 1")
        need(self.group_size >= 1, f"--samples-per-prompt must be at least 1, got {self.samples_per_prompt}")
        if self.algo in GROUP_ALGOS:
            need(self.group_size >= 2, f"{self.algo} compares completions of the same prompt: "
                                       f"--samples-per-prompt must be at least 2, got {self.group_size}")
        if self.algo in GUIDED_ALGOS:
            need(bool(self.guide), f"--algo {self.algo} needs --guide MODEL (the guide LLM)")
        elif self.guide:
            raise ConfigError(f"--guide is only used by {', '.join(GUIDED_ALGOS)}, not by --algo {self.algo}")
        if isinstance(self.reward, str):
            need(bool(self.reward.strip()), "--reward must name at least one reward")
        elif isinstance(self.reward, list):
            need(bool(self.reward), "the reward list is empty")
            for e in self.reward:
                need(isinstance(e, (str, dict)), f"reward entry {e!r}: must be a name or a mapping with 'name'")
        else:
            raise ConfigError(f"option 'reward' must be a spec string or a list of mappings, got {self.reward!r}")
        # nested reward options are checked now, not when training starts (nothing is loaded here)
        from sumrl.rewards.registry import validate_reward_spec

        try:
            validate_reward_spec(self.reward)
        except ConfigError as e:
            raise ConfigError(f"option 'reward': {e}") from None
