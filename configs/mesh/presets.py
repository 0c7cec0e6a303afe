"""Named mesh shapes. A preset sets `mesh.data`, `mesh.fsdp`, `mesh.tensor` (and `mesh.dcn_data`).

-1 fills an axis with the devices left over, so one preset serves several slice sizes.
`dcn_data` > 1 splits the data axis over TPU slices (multislice) or hosts: a hybrid mesh whose
other axes stay on ICI / NVLink. TPU presets are named after the accelerator type they fit, as
Cloud TPU names it: a v5p type counts TensorCores (two per chip, and jax sees one device per
chip: v5p-128 is 64 devices), a v5e or v6e type counts chips.
"""

PRESETS = {
    # CPU: tests and laptops.
    "cpu_1": dict(data=1, fsdp=1, tensor=1),
    "cpu_8": dict(data=2, fsdp=2, tensor=2),  # with --xla_force_host_platform_device_count=8
    # TPU pod slices: FSDP over the whole slice (ICI is fast enough for all-gathers).
    "tpu_v5p_128": dict(data=1, fsdp=64, tensor=1),  # 64 chips
    "tpu_v5p_256": dict(data=1, fsdp=128, tensor=1),  # 128 chips
    "tpu_v5e_256": dict(data=1, fsdp=256, tensor=1),
    "tpu_v6e_256": dict(data=1, fsdp=256, tensor=1),
    "tpu_fsdp": dict(data=1, fsdp=-1, tensor=1),  # any slice size
    # Multislice: data parallel over DCN between slices, FSDP inside each slice.
    "tpu_v5p_2x256": dict(data=2, fsdp=128, tensor=1, dcn_data=2),
    "tpu_v5e_4x256": dict(data=4, fsdp=256, tensor=1, dcn_data=4),
    "tpu_v6e_2x256": dict(data=2, fsdp=256, tensor=1, dcn_data=2),
    # One GPU (its memory as the device reports it), then hosts of 8 devices: FSDP inside the
    # host, data parallel across hosts.
    "gpu_1": dict(data=1, fsdp=1, tensor=1),
    "gpu_8": dict(data=1, fsdp=8, tensor=1),
    "gpu_8x8": dict(data=8, fsdp=8, tensor=1, dcn_data=8),  # 8 hosts x 8 GPUs
    # Any number of 8-GPU hosts: devices are ordered by process, so data spans the hosts.
    "gpu_hosts": dict(data=-1, fsdp=8, tensor=1),
}

# Memory per device (GiB) of the accelerator a preset names: what grad_accum_steps=auto and
# remat_policy=auto fit into where the devices report no limit (--mode=compile on fake CPU
# devices); on the real devices the smaller of this and their reported limit counts.
MEMORY_GIB = {
    "tpu_v5p_128": 95.0,
    "tpu_v5p_256": 95.0,
    "tpu_v5e_256": 16.0,
    "tpu_v6e_256": 32.0,
    "tpu_v5p_2x256": 95.0,
    "tpu_v5e_4x256": 16.0,
    "tpu_v6e_2x256": 32.0,
    "gpu_8": 80.0,
    "gpu_8x8": 80.0,
    "gpu_hosts": 80.0,
}


def apply(config, name):
  """Sets `config.mesh` (and the device memory, where the preset names an accelerator) from
  the preset `name`; raises ValueError naming the known presets."""
  if name not in PRESETS:
    raise ValueError(f"unknown mesh preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  for axis, size in PRESETS[name].items():
    setattr(config.mesh, axis, size)
  config.train.memory_limit_gib = MEMORY_GIB.get(name, 0.0)
  return config
