"""Base configuration shared by every experiment.

Experiment configs (`configs/synthetic_demo.py`, `configs/clotho.py`, ...)
start from `get_base_config()` and change what they need. Any field can be
overridden on the command line: `--config.optim.lr=3e-4`.
"""

import ml_collections

from aac_jax.models import partitioning


def get_dataset_config() -> ml_collections.ConfigDict:
  """Where the data lives and how examples are cut and batched."""
  c = ml_collections.ConfigDict()
  c.name = 'synthetic_aac'  # TFDS dataset name (registered by aac_jax.data).
  c.builder_config = ''  # TFDS builder config name; '' = the builder default.
  c.data_dir = '~/tensorflow_datasets'  # TFDS data_dir.
  c.build_if_missing = True  # Build the dataset first if it is not there.
  c.train_split = 'train'
  c.validation_split = 'validation'
  c.test_split = 'test'
  c.sample_rate = 16000  # Must equal the builder's sample rate.
  c.max_audio_seconds = 10.0  # Train crops / pads every clip to this length.
  c.max_eval_audio_seconds = -1.0  # Eval crops clips to this (<= 0: same as max_audio_seconds).
  c.max_caption_tokens = 24  # Including EOS; longer captions are truncated.
  # References per training clip and step: 1 = one drawn at random; R > 1 =
  # R of them (without replacement) decoded against one encoding of the clip
  # (Clotho has 5 per clip; AudioCaps train has 1, so keep 1 there).
  c.captions_per_clip = 1
  c.vocab_min_count = 1  # Words seen fewer times in train become <unk>.
  c.num_workers = 0  # Grain worker processes (0 = in the main process).
  c.seed = 0
  # Train from stored tagger frames (tools/extract_embeddings.py) instead of audio:
  # '' = off, 'auto' = <dataset>_<builder config>_<encoder>, or a name. Needs a frozen encoder.
  c.embeddings = ''
  c.embeddings_dir = ''  # Set by the run from `embeddings` (never by hand).
  # Train on several datasets at once: ((dataset, split, weight, task), ...);
  # () = `name`/`train_split` alone. See aac_jax/data/mixture.py.
  c.mixture = ()
  return c


def get_frontend_config() -> ml_collections.ConfigDict:
  """Log-mel front end and SpecAugment (computed on device)."""
  c = ml_collections.ConfigDict()
  c.n_fft = 512
  c.win_length = 400  # 25 ms at 16 kHz.
  c.hop_length = 160  # 10 ms at 16 kHz.
  c.n_mels = 64
  c.fmin = 0.0
  c.fmax = 8000.0
  c.log_floor = 1e-6  # log(max(power_mel, log_floor)).
  # The model sees (log-mel - feature_mean) / feature_std. 'measure': both are
  # measured on feature_stats_clips training clips when a run starts (saved
  # in <workdir>/feature_stats.json, reused on restart and by init_from runs);
  # 'fixed': the two numbers below are used as they are.
  c.feature_stats = 'measure'
  c.feature_stats_clips = 256
  c.feature_mean = 0.0
  c.feature_std = 1.0
  c.spec_augment = True  # Training only.
  c.freq_masks = 2
  c.freq_mask_width = 8  # Maximum width in mel bins.
  c.time_masks = 2
  c.time_mask_ratio = 0.05  # Maximum width as a share of the real frames.
  # 'mel' (the conformer's), 'pann' or 'clap' (both set by the encoder, never by hand).
  c.kind = 'mel'
  c.amin = 1e-10  # Power floor of the 'pann' front end (10 * log10(max(mel, amin))).
  # 'clap' (model.encoder='htsat'; set from the CLAP folder's preprocessor_config.json):
  # each clip repeated whole and zero-padded, or cut at its start, to this length.
  c.clap_max_length_s = 10
  c.clap_htk = False  # HTK mel bank without norm (fused checkpoints), else Slaney.
  return c


def get_htsat_config() -> ml_collections.ConfigDict:
  """`model.htsat`: HTS-AT sizes of `model.encoder='htsat'` (`metrics.clap.htsat.HtsatConfig`).

  Defaults are `laion/clap-htsat-unfused`'s `audio_config` (transformers'
  `ClapAudioConfig` defaults); a run refuses an `encoder_init` folder whose
  `config.json` says otherwise.
  """
  c = ml_collections.ConfigDict()
  c.num_mel_bins = 64
  c.spec_size = 256  # Side of the square image the log-mel is folded into.
  c.patch_size = 4
  c.patch_stride = 4
  c.embed_dim = 96  # `patch_embeds_hidden_size`; the frames are embed_dim * 2**(stages-1) wide.
  c.depths = (2, 2, 6, 2)
  c.num_heads = (4, 8, 16, 32)
  c.window_size = 8
  c.mlp_ratio = 4.0
  c.qkv_bias = True
  c.enable_fusion = False  # Fused checkpoints (laion/clap-htsat-fused, larger_clap_general).
  c.aff_block_r = 4
  c.patch_norm = True
  c.layer_norm_eps = 1e-5
  return c


def get_model_config() -> ml_collections.ConfigDict:
  """Conformer encoder + transformer decoder sizes."""
  c = ml_collections.ConfigDict()
  c.subsampling = 4  # Time reduction of the convolutional front (2 or 4 or 8).
  c.subsampling_channels = 0  # Channels of the subsampling conv2d layers (0 = encoder_dim).
  c.encoder_dim = 256
  c.encoder_layers = 6
  c.encoder_heads = 4
  c.encoder_ff_dim = 1024
  c.conv_kernel_size = 15  # Depthwise kernel of the convolution module.
  c.decoder_dim = 256
  c.decoder_layers = 3
  c.decoder_heads = 4
  c.decoder_ff_dim = 1024
  c.dropout = 0.1
  c.attention_dropout = 0.1
  c.max_decode_len = 32  # Positions of the decoder (>= max_caption_tokens + 1).
  # 'aac_jax' (pre-norm, tied embeddings) or 'conette' (CoNeTTE's post-norm
  # GELU decoder with an untied classifier).
  c.decoder_style = 'aac_jax'
  c.task_token_id = -1  # 'conette': token read at position 0 (e.g. <bos_clotho>); -1 = BOS.
  c.compute_dtype = 'float32'  # 'bfloat16' computes in bf16, parameters stay fp32.
  # Rematerialisation (activation memory for compute): 'none', 'block' (each
  # encoder / decoder block recomputed in the backward pass) or 'full'.
  c.remat = 'none'
  # Auxiliary head predicting the caption's words from the encoder frames
  # (training only; weighted by optim.keyword_loss_weight).
  c.keyword_head = False
  # 'conformer' (from scratch), 'convnext' (AudioSet ConvNeXt-Tiny), 'cnn14'
  # (PANNs) or 'htsat' (CLAP's audio tower); the front end then follows the encoder
  # (32 kHz torchlibrosa log-mel; CLAP's log-mel for htsat, docs/clap.md).
  c.encoder = 'conformer'
  # Folder written by tools/convert_checkpoint.py, a CLAP folder for htsat ('' = random).
  c.encoder_init = ''
  c.encoder_freeze = 'none'  # 'all', 'none', or 'N' = the first N stages.
  c.encoder_projection = False  # Dropout, Dense(encoder_dim) + ReLU, dropout on the tagger frames.
  c.projection_dropout = 0.5  # Dropout of that projection.
  c.convnext_stem = 'audioset'  # 'conette': CoNeTTE's finer ConvNeXt stem (4x more frames).
  c.encoder_drop_path = 0.0  # ConvNeXt stochastic depth (unfrozen, training).
  c.htsat = get_htsat_config()  # encoder='htsat' only.
  c.mixup_alpha = 0.0  # Mixup of encoder frames and decoder inputs (0 = off).
  c.llm = get_llm_config()  # decoder_style='llm' only.
  return c


def get_llm_config() -> ml_collections.ConfigDict:
  """`model.llm`: the language-model decoder of `decoder_style='llm'` (docs/llm_decoder.md).

  The values are SLAM-AAC's (configs/clotho_llm.py names the sources: X-LANCE/
  SLAM-LLM `examples/slam_aac`, FT = `scripts/finetune_clotho.sh`, AC =
  `aac_config.py`, PY = `conf/prompt.yaml`, DS = the dataset's prompt template).
  """
  c = ml_collections.ConfigDict()
  c.init = ''  # Converted folder (tools/convert_checkpoint.py llm); '' = random weights.
  # DS + PY: SLAM-LLM's template around dataset_config.prompt.
  c.prompt = 'USER: Describe the audio you hear.\n ASSISTANT:'
  c.prompt_ids = []  # Resolved from `prompt` with the run's tokenizer when a run starts.
  c.frame_stack = 5  # FT: encoder_projector_ds_rate=5.
  c.projector = 'mlp'  # FT: encoder_projector=linear, which is Linear(k*d, 2048), ReLU, Linear.
  c.projector_dim = 2048  # SLAM-LLM EncoderProjectorConcat's hidden width.
  c.train = 'lora'  # FT: use_peft=true, freeze_llm=false with peft (only adapters train).
  c.lora_rank = 8  # AC PeftConfig.r.
  c.lora_alpha = 32.0  # AC PeftConfig.lora_alpha.
  c.lora_dropout = 0.05  # AC PeftConfig.lora_dropout.
  c.lora_targets = ['q', 'v']  # AC PeftConfig.target_modules = [q_proj, v_proj].
  # Storage of the language model's base weights, 'float32' or 'bfloat16' (train='lora'
  # only: the frozen base at half the memory; adapters and projector stay float32).
  c.base_dtype = 'float32'
  # A random decoder's sizes (ignored with `init`): Qwen2-shaped (q/k/v biases, tied).
  c.hidden_size = 256
  c.num_layers = 4
  c.num_heads = 4
  c.num_kv_heads = 2
  c.head_dim = 64
  c.intermediate_size = 704
  c.rope_theta = 1000000.0  # Qwen2.5's.
  c.attention_bias = True
  c.tie_embeddings = True
  c.initializer_range = 0.02  # Stddev of the random weights (transformers' default).
  return c


def get_optim_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.lr = 5e-4  # Peak learning rate.
  c.warmup_steps = 500
  c.end_lr_ratio = 0.02  # Cosine decay ends at lr * end_lr_ratio.
  c.weight_decay = 0.01
  c.b1 = 0.9
  c.b2 = 0.98
  c.clip_norm = 1.0  # Global gradient norm clip (0 = off).
  c.label_smoothing = 0.1
  c.grad_accum_steps = 1  # Micro-batches per optimizer update.
  # Weight of the keyword head's binary cross-entropy (per caption word),
  # added to the token cross-entropy; needs model.keyword_head.
  c.keyword_loss_weight = 0.0
  return c


def get_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.batch_size = 32  # Global batch (all devices, all processes).
  c.num_steps = 20000
  c.log_every = 50
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3  # Most recent checkpoints kept (plus the best).
  c.best_metric = 'cider_d'  # Validation metric selecting the best checkpoint.
  c.best_mode = 'max'  # 'max' or 'min': which way `best_metric` is better.
  # A mixture run: the evaluated source (its task, else its dataset's name) whose
  # validation scores pick the best checkpoint; '' = dataset.name's (aac_jax/data/mixture.py).
  c.best_source = ''
  c.async_checkpointing = True  # Write checkpoints in a background thread.
  c.stop_at_step = -1  # Save and stop after this step (-1 = num_steps); for time-boxed jobs.
  c.init_from = ''  # Another run's workdir: start from its parameters.
  c.num_sample_captions = 5  # Captions logged as text at each evaluation.
  # JAX's persistent compilation cache: a rerun or a resumed run loads the
  # compiled steps instead of compiling them again ('' = off; a cache JAX
  # already has, e.g. $JAX_COMPILATION_CACHE_DIR, is kept).
  c.compilation_cache_dir = '~/.cache/aac_jax/jax_compilation_cache'
  return c


def get_eval_config() -> ml_collections.ConfigDict:
  """Validation during training and the test pass at the end."""
  c = ml_collections.ConfigDict()
  c.batch_size = 64  # Global eval batch.
  c.max_examples = -1  # Evaluate on at most this many clips (-1 = all).
  c.test_at_end = True  # After the last step, evaluate the best checkpoint on the test split.
  c.meteor = False  # Run METEOR (needs Java and pycocoevalcap's jar).
  c.spice = False  # Run SPICE (needs Java and the CoreNLP 3.6.0 jars).
  # How validation and test captions are decoded (the scores that pick the
  # best checkpoint). Independent of `config.decode`, which is what
  # `aac-caption`, export and SCST sampling use.
  c.decode = get_decode_config()
  c.dcase2024 = get_dcase2024_metrics_config()
  return c


# --- DCASE 2024 metrics (FENSE, SPIDEr-FL, Vocab, confidence intervals) ---
# Read by aac_jax.metrics.eval_config; Vocab is always computed. With fense,
# train.best_metric may be 'fense' (or 'sbert_sim', 'spider_fl' with spice).
def get_dcase2024_metrics_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.fense = False  # SBERT-sim, FER, FENSE (and SPIDEr-FL with eval.spice), models in JAX.
  c.sbert_dir = (
    ''  # paraphrase-TinyBERT-L6-v2 folder ('' = $AAC_FENSE_DIR/paraphrase-TinyBERT-L6-v2).
  )
  c.echecker_dir = ''  # Converted checker ('' = $AAC_FENSE_DIR/echecker_clotho_audiocaps_base).
  c.batch_size = 128  # Sentences per FENSE model forward pass.
  c.precision = 'highest'  # 'highest' (float32 matmuls) or 'default' (TF32/bf16 passes, faster).
  c.bootstrap = 0  # Resamples for 95 % confidence intervals of test scores (0 = none).
  return c


def score_with_decode(config: ml_collections.ConfigDict) -> None:
  """Validation, best-checkpoint choice and test decode as `config.decode` (in place).

  For recipes whose published scores come from one decoding (CoNeTTE, the
  DCASE 2024 baseline: beam search for validation and test alike).
  """
  config.eval.decode = ml_collections.ConfigDict(config.decode.to_dict())


def get_decode_config() -> ml_collections.ConfigDict:
  """Decoding settings (`aac_jax.decoding.DecodeSettings` has the same fields)."""
  c = ml_collections.ConfigDict()
  c.method = 'greedy'  # 'greedy', 'beam', 'sample' or 'conette_beam' (CoNeTTE's search).
  c.max_len = 24  # Maximum tokens including EOS (<= model.max_decode_len).
  c.min_len = 1
  c.beam_size = 3
  c.length_penalty = 0.6  # alpha in ((5 + len) / 6) ** alpha.
  c.no_repeat_ngram_size = 0  # 0 = off.
  c.ban_repeated_content_words = False
  # Tokens that may repeat under that ban ([] = decoding.FUNCTION_WORDS and the
  # special tokens; CoNeTTE runs list its stop words, specials then may not).
  c.repeatable_tokens = []
  c.temperature = 1.0
  c.top_k = 0  # 0 = off.
  c.top_p = 1.0  # 1.0 = off.
  # 'clap': pick among the beam's (or beam_size samples') candidates by decoder
  # score + rerank_weight x CLAP audio-text cosine (docs/clap.md).
  c.rerank = 'none'
  c.rerank_weight = 1.0
  c.rerank_clap_dir = ''  # CLAP folder (tools/convert_checkpoint.py clap).
  return c


def get_scst_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.num_samples = 5  # K sampled captions per clip.
  c.baseline = 'mean_others'  # 'greedy' or 'mean_others'.
  c.normalize_advantage = False
  c.reward = 'cider_d'  # 'cider_d', 'spider' or 'mix'.
  c.reward_weights = ml_collections.ConfigDict({'cider_d': 1.0, 'spice': 0.0, 'clap': 0.0})
  c.clap_dir = ''  # CLAP folder for a 'clap' weight (CLAP cosine of caption and audio).
  c.temperature = 1.0  # Sampling temperature (log p stays the untempered model's).
  c.top_k = 0  # Sample among the k most likely tokens (0 = off).
  c.top_p = 1.0  # Nucleus sampling threshold (1.0 = off).
  c.loss_normalizer = 'samples'  # Divide the summed loss by 'samples' or real 'tokens'.
  c.pipeline = True  # Sample batch t + 1 while the host scores batch t.
  c.eval_initial = True  # Score the init_from parameters on the test split first.
  c.spice_jars = ''  # CoreNLP 3.6.0 folder for a SPICE reward ('' = $AAC_SPICE_CORENLP_DIR).
  # Fluency term: reward x (1 - fluency_penalty x error), error from a FENSE-style
  # error detector: 'hard' P(error) > fluency_threshold (SPIDEr-FL), 'soft' P(error).
  c.fluency = 'off'  # 'off', 'hard' or 'soft'.
  c.fluency_dir = ''  # Detector folder ('' = $AAC_FENSE_DIR/echecker_clotho_audiocaps_base).
  c.fluency_threshold = 0.9  # SPIDEr-FL's.
  c.fluency_penalty = 0.9  # SPIDEr-FL's.
  # Repetition term: reward x (1 - repetition_penalty x the caption's share of
  # repeated 3-grams); 0 = off (docs/evaluation.md#a-fluency-term-in-the-scst-reward).
  c.repetition_penalty = 0.0
  # Cross-entropy anchor: loss + ce_weight x the cross-entropy per token of one
  # reference caption per clip (0 = off); keeps the data's wording and counts.
  c.ce_weight = 0.0
  # KL-shaped reward: reward - kl_weight x (log p(sample) - log p_init(sample)), p_init
  # the init_from (cross-entropy) parameters, frozen; 0 = off ('mean_others' baseline).
  c.kl_weight = 0.0
  return c


# --- Pretrained AudioSet encoders (issue 11) ---------------------------------
# One block so that it merges into the locked schema in one piece: fields of
# `model`, `frontend` and `dataset` used when `model.encoder` is a tagger.
def get_mesh_config() -> ml_collections.ConfigDict:
  """How the devices are arranged and what each parameter is split over.

  `data x fsdp x tensor` must equal the device count (all processes); -1
  takes the devices the others leave. The batch is split over data and
  fsdp; `rules` map each parameter's logical axes (`aac_jax.models.
  partitioning`) to mesh axes: with fsdp > 1 parameters and optimizer state
  are split over it (gathered per layer), with tensor > 1 attention heads,
  feed-forward widths and the vocabulary. docs/parallelism.md: choosing axes.
  """
  c = ml_collections.ConfigDict()
  c.data = -1
  c.fsdp = 1
  c.tensor = 1  # Must divide every split dimension (heads, widths, vocabulary).
  c.rules = partitioning.DEFAULT_RULES  # (logical axis, mesh axis | tuple | None) pairs.
  return c


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the full default configuration."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = get_dataset_config()
  config.frontend = get_frontend_config()
  config.model = get_model_config()
  config.optim = get_optim_config()
  config.train = get_train_config()
  config.eval = get_eval_config()
  config.decode = get_decode_config()
  config.scst = get_scst_config()
  config.mesh = get_mesh_config()
  # The schema is complete: a misspelt field in an experiment config or on
  # the command line is an error, not a silently ignored new field.
  config.lock()
  return config
