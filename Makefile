# Two commands do all set-up on a fresh machine:
#   make demo   - create the environment and run the main job on the bundled example
#   make test   - create the environment (and OpenCL on the CPU, when root) and run the tests
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv opencl clean-venv

venv: $(STAMP)

# The environment takes about 7 GB (PyPI's torch is its CUDA build); say so before pip fails half-way.
NEED_GB := 8

$(STAMP): pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if ! test -x $(VPY) && [ "$$free" -lt $(NEED_GB) ]; then \
		echo "make: the environment needs about $(NEED_GB) GB of disk; $$free GB are free here. Free some space (old clones' .venv folders) and run make again." >&2; \
		exit 1; \
	fi
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# OpenMM's OpenCL platform on the CPU (PoCL), so the GPU code path is tested without a GPU.
opencl:
	@if [ "$$(id -u)" = "0" ] && ! dpkg -s pocl-opencl-icd >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocl-opencl-icd ocl-icd-libopencl1 >/dev/null; \
	fi

demo: venv
	$(VENV)/bin/actionml demo

test: venv opencl
	$(VPY) -m pytest -ra

clean-venv:
	rm -rf $(VENV)
