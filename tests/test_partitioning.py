"""Logical axes of every parameter and the shardings the rules give on a 3-axis mesh."""

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from aac_jax import config_validation, models
from aac_jax.models import partitioning
from aac_jax.train import parallel
from configs import base, clotho_htsat

VOCAB = 24  # Divisible by the tensor axis (2).


def _model(encoder='conformer', decoder_style='aac_jax', keyword_head=False, vocab=VOCAB):
  cfg = base.get_model_config()
  cfg.update(
    encoder=encoder,
    decoder_style=decoder_style,
    keyword_head=keyword_head,
    encoder_dim=16,
    encoder_layers=1,
    encoder_heads=2,
    encoder_ff_dim=32,
    conv_channels=4,
    decoder_dim=16,
    decoder_layers=1,
    decoder_heads=2,
    decoder_ff_dim=32,
    max_decode_len=8,
  )
  if encoder != 'conformer':
    cfg.encoder_projection = True
  if encoder == 'htsat':
    cfg.htsat.update(clotho_htsat.TINY_HTSAT)
  return models.Captioner(models.make_captioner_config(cfg, vocab))


@pytest.mark.parametrize(
  'encoder,decoder_style,keyword_head',
  [
    ('conformer', 'aac_jax', True),
    ('conformer', 'conette', False),
    ('convnext', 'aac_jax', False),
    ('cnn14', 'conette', False),
    ('htsat', 'aac_jax', False),
  ],
)
def test_every_parameter_names_its_axes(encoder, decoder_style, keyword_head):
  model = _model(encoder, decoder_style, keyword_head)
  num_mels = {'convnext': 224, 'htsat': 16}.get(encoder, 64)
  logical, shapes = models.param_axes(model, num_mels=num_mels)
  specs = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
  assert len(specs) == len(jax.tree.leaves(shapes))
  for spec, shape in zip(specs, jax.tree.leaves(shapes), strict=True):
    assert len(spec) == shape.ndim and set(spec) <= set(partitioning.LOGICAL_AXES)


def test_missing_axes_are_reported():
  class Unnamed(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(x)

  boxed = jax.eval_shape(Unnamed().init, jax.random.key(0), np.zeros((1, 2), np.float32))
  assert partitioning.missing_axes(boxed['params']) == [
    "['Dense_0']['bias']",
    "['Dense_0']['kernel']",
  ]


@functools.lru_cache(maxsize=1)
def _mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ('data', 'fsdp', 'tensor'))


def _specs(model):
  logical, shapes = models.param_axes(model, num_mels=16)
  shardings = partitioning.mesh_shardings(logical, shapes, _mesh())
  return shapes, shardings


def test_rules_give_each_parameter_its_mesh_axes():
  _, shardings = _specs(_model())
  spec = {k: s.spec for k, s in _flat(shardings).items()}
  assert spec['decoder/embed/embedding'] == P('tensor', 'fsdp')  # [vocab, embed]
  assert spec['decoder/layer0/ff/wi/kernel'] == P('fsdp', 'tensor')  # [embed, mlp]
  assert spec['decoder/layer0/ff/wo/kernel'] == P('tensor', 'fsdp')  # [mlp, embed]
  query = 'encoder/block0/attention/query/kernel'
  assert spec[query] == P('fsdp', 'tensor', None)  # [embed, heads, kv]
  assert spec['encoder/block0/attention/out/kernel'] == P('tensor', None, 'fsdp')
  assert spec['encoder/block0/norm/scale'] == P('fsdp')
  # One input channel does not split over fsdp: that dimension stays whole.
  assert spec['encoder/subsampling/conv0/kernel'] == P(None, None, None, 'tensor')


def test_a_dimension_the_mesh_does_not_divide_stays_whole():
  _, shardings = _specs(_model(vocab=VOCAB + 1))
  assert _flat(shardings)['decoder/embed/embedding'].spec == P(None, 'fsdp')


def test_parameters_and_adamw_moments_are_created_sharded():
  model = _model()
  shapes, shardings = _specs(model)
  init = functools.partial(models.init_params, model, num_mels=16)
  sharded = jax.jit(init, out_shardings=shardings)(jax.random.key(3))
  plain = init(jax.random.key(3))
  for (key, array), expected in zip(_flat(sharded).items(), _flat(shardings).values(), strict=True):
    assert array.sharding == expected, key
    np.testing.assert_array_equal(np.asarray(array), np.asarray(_flat(plain)[key]))
  tx = optax.adamw(1e-3)
  opt_sharding = partitioning.mirrored_shardings(
    jax.eval_shape(tx.init, shapes), shapes, shardings, _mesh()
  )
  opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(sharded)
  mu = opt_state[0].mu
  for key, expected in _flat(shardings).items():
    assert _flat(mu)[key].sharding == expected, key
  assert opt_state[0].count.sharding.is_fully_replicated


def _flat(tree) -> dict:
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _mesh_problems(**changes):
  config = base.get_base_config()
  for field, value in changes.items():
    section, name = field.split('__')
    config[section][name] = value
  return config_validation.problems(config, 'train', 8, local_devices=4)


def test_mesh_sizes_and_rules_are_checked_one_line_each():
  assert _mesh_problems(mesh__data=2, mesh__fsdp=4) == []
  assert _mesh_problems(mesh__data=-1, mesh__fsdp=2, mesh__tensor=2) == []
  (line,) = _mesh_problems(mesh__data=-1, mesh__fsdp=-1)
  assert line.startswith('mesh=') and 'at most one axis may be -1' in line
  (line,) = _mesh_problems(mesh__data=2, mesh__fsdp=2)
  assert line.startswith('mesh.data, mesh.fsdp=[2, 2]: data x fsdp x tensor = 2 x 2 x 1 cannot')
  (line,) = _mesh_problems(mesh__fsdp=0)
  assert line.startswith('mesh.fsdp=0: must be a size >= 1, or -1')
  # Tensor parallelism stays within a process (4 devices here), and splits heads.
  lines = _mesh_problems(mesh__data=1, mesh__tensor=8)
  assert any(x.startswith('mesh.tensor=8: must divide the 4 devices of one process') for x in lines)
  lines = _mesh_problems(mesh__data=2, mesh__tensor=4, model__decoder_heads=2)
  assert lines == ['model.decoder_heads=2: must be divisible by mesh.tensor=4; change one of them']
  (line,) = _mesh_problems(mesh__rules=(('embedd', 'fsdp'),))
  assert line.startswith("mesh.rules='embedd': unknown logical axis")
  (line,) = _mesh_problems(mesh__rules=(('embed', 'fsdpp'),))
  assert line.startswith("mesh.rules['embed']='fsdpp': must name mesh axes")
  # Batches split over data x fsdp only: 2 x 1 x 4 takes a batch of 6.
  assert _mesh_problems(mesh__data=2, mesh__tensor=4, train__batch_size=6) == []
  assert _mesh_problems(mesh__data=2, mesh__tensor=4, train__batch_size=7) == [
    'train.batch_size=7: must be divisible by the 2 batch shards (mesh data x fsdp); '
    'use a multiple of 2'
  ]


def test_a_vocabulary_the_tensor_axis_does_not_divide_is_refused():
  config = base.get_base_config()
  config.frontend.n_mels = 16
  model = models.Captioner(models.make_captioner_config(config.model, 23))
  logical, shapes = models.param_axes(model, num_mels=16)
  mesh = parallel.create_mesh(ml_collections.ConfigDict({'data': 2, 'fsdp': 2, 'tensor': 2}))
  lines = parallel.tensor_split_problems(logical, shapes, mesh, parallel.mesh_rules(None))
  assert lines == [
    "mesh.tensor=2: does not divide the 'vocab' dimension (23) of the model; use a tensor "
    "size dividing 23, or map 'vocab' to None in mesh.rules"
  ]
  model = models.Captioner(models.make_captioner_config(config.model, 24))
  logical, shapes = models.param_axes(model, num_mels=16)
  assert parallel.tensor_split_problems(logical, shapes, mesh, parallel.mesh_rules(None)) == []
