"""tools/bench_memory.py: per-device bytes of a sharded initialisation, from XLA and by hand."""

import pytest

from tools import bench_memory


def test_fsdp_over_eight_devices_holds_an_eighth_of_the_state():
  sharded = bench_memory.measure('demo', (1, 8, 1), bench_memory.DEMO_VOCAB)
  assert sharded['total'] > 8e6  # 0.8 M float32 parameters and two AdamW moments.
  assert sharded['xla'] == pytest.approx(sharded['by_shardings'], rel=0.01)
  # Dimensions the mesh does not divide (a conv's single input channel) stay whole.
  assert sharded['ideal'] <= sharded['xla'] < 1.1 * sharded['ideal']
  assert '| demo | 0.8 M | 1x8x1 |' in bench_memory.format_row('demo', (1, 8, 1), sharded)


def test_meshes_are_parsed_or_refused():
  assert bench_memory.parse_mesh('2x2x2') == (2, 2, 2)
  with pytest.raises(bench_memory.app.UsageError, match='DATAxFSDPxTENSOR'):
    bench_memory.parse_mesh('2x4')


def test_llm_rows_take_qwen_sizes_and_a_bfloat16_base_on_request():
  plain, bf16 = (bench_memory.get_bench_config(n) for n in ('qwen7b_lora', 'qwen7b_lora_bf16'))
  assert plain.model.llm.hidden_size == bf16.model.llm.hidden_size == 3584
  assert (plain.model.llm.base_dtype, bf16.model.llm.base_dtype) == ('float32', 'bfloat16')
  assert bench_memory.default_vocab('qwen7b_lora_bf16') == 152064
