"""Installs aac_jax. TensorFlow is not a dependency."""

import setuptools

INSTALL_REQUIRES = [
  'jax==0.10.2',
  'jaxlib==0.10.2',
  'flax==0.12.8',
  'optax==0.2.8',
  'orbax-checkpoint==0.12.8',
  'tensorflow-datasets==4.9.10',
  'grain==0.2.18',
  'librosa==0.11.0',
  'ml-collections==1.1.0',
  'soundfile==0.14.0',
  'absl-py==2.5.1',
  'flatbuffers>=24.3.25',
  'tensorboardX>=2.6',
  'tqdm>=4.66',
  # Converted pretrained encoders (tools/convert_checkpoint.py) are read with it.
  'safetensors>=0.4',
  # MACS.yaml (aac_jax/data/macs.py, yaml.safe_load); orbax needs it too.
  'pyyaml>=6',
]

EXTRAS_REQUIRE = {
  # METEOR 1.5 and the PTB tokenizer jars ship inside pycocoevalcap's wheel.
  'eval': ['pycocoevalcap==1.2'],
  # Sweep plots (tools/sweep.py plot).
  'plot': ['matplotlib>=3.8'],
  # FENSE / SBERT-sim / FER / SPIDEr-FL: word pieces and weights, no torch.
  'fense': ['tokenizers>=0.15', 'safetensors>=0.4'],
  # Language-model decoders and CLAP: tokenizer.json and safetensors folders, no torch.
  'llm': ['tokenizers>=0.15', 'safetensors>=0.4'],
  # tools/convert_checkpoint.py: reads the published PyTorch checkpoints, never at run time.
  'convert': ['torch>=2.1', 'safetensors>=0.4'],
  # aac-serve (tools/serve.py): the HTTP server, its metrics, multipart uploads.
  'serve': [
    'fastapi>=0.110',
    'uvicorn>=0.29',
    'prometheus_client>=0.17',
    'python-multipart>=0.0.18',
  ],
  # tools/export.py --format savedmodel (jax2tf; checked with tensorflow 2.21.0 and jax 0.10.2).
  # Not in 'test' (1.9 GB installed); tests/test_export.py's SavedModel test runs where it is.
  'savedmodel': ['tensorflow>=2.21'],
  # aac-build-dataset --beam: builds on Apache Beam (checked with apache-beam 2.78.0, which
  # needs protobuf<7 and pyarrow<26: installing it downgrades them to 6.33.6 and 25.0.1).
  'beam': ['apache-beam>=2.60'],
  # torch (CPU wheel) and torchlibrosa run the upstream reference models of the
  # parity tests; tools/test.sh adds conette and torchoutil with --no-deps.
  'test': [
    'pytest>=8',
    # tools/test.sh runs the suite's files on 2 worker processes (--dist loadfile).
    'pytest-xdist>=3.6',
    'ruff==0.17.6',
    'pycocoevalcap==1.2',
    'matplotlib>=3.8',
    # PyTorch references of the parity tests (encoders, FENSE).
    'torch==2.13.0',
    'torchlibrosa==0.1.0',
    # transformers: the FENSE references, and conette's CoNeTTEConfig (a
    # PretrainedConfig) writes the published config.json in the CoNeTTE tests.
    'transformers>=4.40',
    'sentence-transformers>=3.0',
    'tokenizers>=0.15',
    'safetensors>=0.4',
    # tests/test_serve.py starts the real server.
    'fastapi>=0.110',
    'uvicorn>=0.29',
    'prometheus_client>=0.17',
    'python-multipart>=0.0.18',
    # tests/test_beam_build.py: Beam builds on the DirectRunner.
    'apache-beam>=2.60',
  ],
}

setuptools.setup(
  name='aac_jax',
  version='0.1.0',
  description='Automated audio captioning in JAX/Flax: conformer encoder, '
  'transformer decoder, data-parallel training and SCST.',
  packages=setuptools.find_packages(include=['aac_jax', 'aac_jax.*']),
  python_requires='>=3.10',
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
  entry_points={
    'console_scripts': [
      'aac-train=aac_jax.main:run',
      'aac-caption=aac_jax.caption_cli:run',
      'aac-evaluate=aac_jax.metrics.evaluate_cli:run',
      'aac-build-dataset=aac_jax.data.build_cli:run',
      'aac-export=aac_jax.export:run',
      'aac-serve=aac_jax.serving.server:run',
      'aac-scst=aac_jax.scst.main:run',
      'aac-sweep=aac_jax.sweeps.cli:run',
    ],
  },
)
